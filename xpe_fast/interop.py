"""Adapters in other formats: export to Hugging Face PEFT's prompt tuning, and import of PEFT
prompt-tuning / P-tuning adapters and of the paper's own layout (bmikaberidze/XPE).

The layout is detected from the tensors' names and shapes and the config beside them; the
result is always this package's (config, tensors) pair (adapter.read_adapter's form), checked
completely before anything is loaded. What each layout carries:
- xpe_fast: every trained tensor (prompt tables, MLP, head) and the static prompt;
- PEFT (PROMPT_TUNING, P_TUNING): the static prompt `prompt_embeddings` [N, d] and the head
  (P-tuning's MLP is never saved by PEFT), so it loads as an SPT prompt: evaluate it, or
  continue training it as SPT;
- the paper's layout: the SPT table (`prompt_encoder.embedding`), the XPE input table
  (`prompt_encoder.xpe_embedding`) and MLP (`prompt_encoder.xpe_head.{0,3,6}`) and the head,
  so XPE and DUAL runs can be continued. An XPE adapter with its input table under the old
  key `prompt_encoder.embedding` (which the paper's README warns about) loads that table as
  the XPE input table, never as random inputs.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from .adapter import (
    FORMAT,
    WEIGHTS_NAME,
    AdapterMismatchError,
    expected_shapes,
    load_safetensors,
    read_adapter,
    read_json_config,
)
from .prompt import method_name

PEFT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
PEFT_TYPES = ("PROMPT_TUNING", "P_TUNING")
# Hugging Face's attribute of the bare encoder inside *ForSequenceClassification
BASE_PREFIX = {
    "bert": "bert",
    "roberta": "roberta",
    "xlm-roberta": "roberta",
    "camembert": "roberta",
}


def _normalize(name: str) -> str:
    """A tensor name without PEFT's wrappers: `base_model.model.` prefixes, `.default` and
    `modules_to_save.default` infixes."""
    name = re.sub(r"^(base_model\.model\.)+", "base_model.", name)
    name = name.replace(".modules_to_save.default.", ".").replace(".original_module.", ".")
    name = re.sub(r"\.default(?=\.|$)", "", name)
    return name


def _head(t: dict, path: Path) -> tuple[str, dict]:
    """(head style, our head tensors) from the normalized tensors of a PEFT-style file."""
    out = {}
    if "base_model.classifier.dense.weight" in t:  # RoBERTa / XLM-R head
        for ours, theirs in (("dense", "classifier.dense"), ("out_proj", "classifier.out_proj")):
            for w in ("weight", "bias"):
                out[f"head.{ours}.{w}"] = t[f"base_model.{theirs}.{w}"]
        return "roberta", out
    if "base_model.classifier.weight" in t:  # BERT: pooler (if saved) + classifier
        out["head.out_proj.weight"] = t["base_model.classifier.weight"]
        out["head.out_proj.bias"] = t["base_model.classifier.bias"]
        pooler = [k for k in t if k.endswith("pooler.dense.weight")]
        if pooler:
            p = pooler[0][: -len(".weight")]
            out["head.dense.weight"], out["head.dense.bias"] = t[p + ".weight"], t[p + ".bias"]
        return "bert", out
    raise AdapterMismatchError(
        f"{path}: no classification head (expected "
        "base_model.classifier.dense/out_proj or base_model.classifier)"
    )


def _base_config(cfg: dict, **kw) -> dict:
    out = {
        "format": FORMAT,
        "imported": True,
        "encoder_hidden_size": 256,
        "backbone": cfg.get("base_model_name_or_path") or "",
        "labels": None,
    }
    out.update(kw)
    out["encoder_input_size"] = out.get("encoder_input_size") or out["hidden_size"]
    return out


def read_peft_adapter(folder: Path, cfg: dict) -> tuple[dict, dict]:
    """A PEFT prompt-tuning or P-tuning adapter as an SPT adapter (its static prompt)."""
    path = next((folder / n for n in PEFT_WEIGHTS if (folder / n).is_file()), None)
    if path is None or path.suffix != ".safetensors":
        raise AdapterMismatchError(
            f"{folder}: PEFT adapter without adapter_model.safetensors "
            "(pickled .bin files are not loaded: they can run code)"
        )
    t = {_normalize(k): v for k, v in load_safetensors(path).items()}
    prompt = t.get("prompt_embeddings")
    if prompt is None or prompt.dim() != 2:
        raise AdapterMismatchError(f"{path}: no [N, d] tensor prompt_embeddings")
    style, head = _head(t, path)
    n, d = prompt.shape
    tensors = {"prompt.spt_embedding": prompt, "static_prompt": prompt.float(), **head}
    conf = _base_config(
        cfg,
        method="spt",
        encoder_ratio=0.0,
        num_virtual_tokens=n,
        hidden_size=d,
        num_labels=int(head["head.out_proj.weight"].shape[0]),
        head_style=style,
        source_format=f"peft/{cfg.get('peft_type')}",
    )
    return conf, tensors


# gen_mlp_head of the paper's code with encoder_num_layers = 2 (PEFT's default): Linear,
# ReLU, Dropout, Linear, ReLU, Dropout, Linear, so its Linear layers sit at 0, 3 and 6.
PAPER_MLP_LINEARS = {0: "fc1", 3: "fc2", 6: "fc3"}
PAPER_TABLES = ("prompt_encoder.embedding.weight", "prompt_encoder.xpe_embedding.weight")


def _paper_tensors(path: Path) -> dict:
    """The file's tensors under the paper's unwrapped names (`prompt_encoder.*`,
    `base_model.classifier.*`). Where PEFT saved both copies of a wrapped module, the trained
    one (modules_to_save) wins over the initial one (original_module)."""
    t, initial = {}, {}
    for k, v in load_safetensors(path).items():
        name = _normalize(k)
        name = re.sub(r"^base_model\.prompt_encoder\.", "prompt_encoder.", name)
        (initial if ".original_module." in k else t)[name] = v
    return {**initial, **t}


def _paper_mlp(t: dict, path: Path) -> dict:
    """Our MLP tensors from `prompt_encoder.xpe_head.*`; an MLP of another depth or another
    kind of head is refused, naming the first tensor that does not fit (never loaded
    partly)."""
    head = {k: v for k, v in t.items() if k.startswith("prompt_encoder.xpe_head.")}
    linear = re.compile(r"prompt_encoder\.xpe_head\.(\d+)\.(weight|bias)")
    for key in sorted(head):
        if linear.fullmatch(key) is None:
            raise AdapterMismatchError(
                f"{path}: {key} does not fit xpe_fast's prompt MLP (Linear layers at "
                "xpe_head.0, .3 and .6; this is another kind of head)"
            )
    layers = sorted({int(linear.fullmatch(k).group(1)) for k in head})
    if layers and layers != sorted(PAPER_MLP_LINEARS):
        extra = [i for i in layers if i not in PAPER_MLP_LINEARS]
        bad = layers[3] if len(layers) > 3 else layers[-1] if len(layers) < 3 else extra[0]
        raise AdapterMismatchError(
            f"{path}: prompt_encoder.xpe_head.{bad}.weight does not fit: this MLP has "
            f"{len(layers)} Linear layers (at xpe_head.{', .'.join(map(str, layers))}), "
            "xpe_fast's fused MLP 3 (at .0, .3, .6: the paper's encoder_num_layers 2)"
        )
    out = {}
    for key, v in head.items():
        m = linear.fullmatch(key)
        out[f"prompt.encoder.{PAPER_MLP_LINEARS[int(m.group(1))]}.{m.group(2)}"] = v
    return out


def _paper_tables(t: dict, cfg: dict, path: Path, has_mlp: bool):
    """(SPT table or None, XPE table or None). `prompt_encoder.embedding` is the SPT table,
    except in the old layout of XPE-only adapters (an MLP and no xpe_embedding), where it is
    the XPE input table (never random inputs)."""
    spt = t.get("prompt_encoder.embedding.weight")
    xpe = t.get("prompt_encoder.xpe_embedding.weight")
    for key in (k for k in t if k.startswith("prompt_encoder.")):
        if key not in PAPER_TABLES and not key.startswith("prompt_encoder.xpe_head."):
            raise AdapterMismatchError(f"{path}: {key} does not map to xpe_fast's prompt")
    if xpe is None and spt is not None and has_mlp:
        ratio = _paper_ratio(cfg)
        if ratio is not None and ratio < 1:
            raise AdapterMismatchError(
                f"{path}: an MLP with one table, prompt_encoder.embedding, is an XPE adapter "
                f"of the old layout, but adapter_config.json says encoder_ratio {ratio:g}; "
                "a DUAL adapter holds prompt_encoder.xpe_embedding too"
            )
        return None, spt
    if xpe is not None and not has_mlp:
        raise AdapterMismatchError(
            f"{path}: prompt_encoder.xpe_embedding needs the MLP prompt_encoder.xpe_head.{{0,3,6}}"
        )
    if has_mlp and xpe is None:
        raise AdapterMismatchError(f"{path}: the MLP prompt_encoder.xpe_head has no XPE table")
    if spt is None and xpe is None:
        raise AdapterMismatchError(f"{path}: no prompt table (prompt_encoder.embedding.weight)")
    return spt, xpe


def _paper_ratio(cfg: dict) -> float | None:
    r = cfg.get("encoder_ratio")
    if r is None:
        return None
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r):
        raise AdapterMismatchError(f"adapter_config.json: encoder_ratio {r!r} is not a number")
    return r / 100 if r > 1 else float(r)  # DUAL-30 written as 30


def _paper_split(cfg: dict, spt, xpe, path: Path) -> tuple[float, int, int]:
    """(encoder ratio, N, XPE rows), the split read from the tables' shapes. The config's
    ratio is kept where it names the same method (the paper's int(N * r) split, which
    can differ from xpe_fast's rounding, is what the tensors hold)."""
    for name, table in (("embedding", spt), ("xpe_embedding", xpe)):
        if table is not None and (table.dim() != 2 or table.shape[0] < 1):
            raise AdapterMismatchError(
                f"{path}: prompt_encoder.{name}.weight has shape {tuple(table.shape)}, "
                "expected [rows, width]"
            )
    n_spt = int(spt.shape[0]) if spt is not None else 0
    n_xpe = int(xpe.shape[0]) if xpe is not None else 0
    n = n_spt + n_xpe
    method = "spt" if not n_xpe else "xpe" if not n_spt else "dual"
    ratio = _paper_ratio(cfg)
    if ratio is not None and not 0 <= ratio <= 1:
        raise AdapterMismatchError(f"{path}: encoder_ratio {ratio:g} is outside [0, 1]")
    if ratio is not None and method_name(ratio) != method:
        raise AdapterMismatchError(
            f"{path}: adapter_config.json says encoder_ratio {ratio:g} "
            f"({method_name(ratio)}), but the tensors hold {n_spt} SPT and {n_xpe} XPE rows"
        )
    if ratio is None:
        ratio = {"spt": 0.0, "xpe": 1.0}.get(method, n_xpe / n)
    given = cfg.get("num_virtual_tokens")
    if isinstance(given, int) and not isinstance(given, bool) and given != n:
        raise AdapterMismatchError(
            f"{path}: adapter_config.json says num_virtual_tokens {given}, but the prompt "
            f"tables hold {n} rows ({n_spt} SPT + {n_xpe} XPE)"
        )
    return ratio, n, n_xpe


def read_paper_adapter(folder: Path, cfg: dict, path: Path) -> tuple[dict, dict]:
    """The reference code's layout (SPT, XPE and DUAL runs of bmikaberidze/XPE), with the
    split taken from the tables' shapes."""
    t = _paper_tensors(path)
    mlp = _paper_mlp(t, path)
    spt, xpe = _paper_tables(t, cfg, path, bool(mlp))
    ratio, n, n_xpe = _paper_split(cfg, spt, xpe, path)
    style, head = _head(t, path)
    d = int(head["head.out_proj.weight"].shape[1])
    tensors = dict(head)
    if spt is not None:
        tensors["prompt.spt_embedding"] = spt
    if xpe is not None:
        tensors["prompt.xpe_embedding"] = xpe
        tensors.update(mlp)
    fc1 = tensors.get("prompt.encoder.fc1.weight")
    conf = _base_config(
        cfg,
        method=method_name(ratio),
        encoder_ratio=ratio,
        num_virtual_tokens=n,
        num_spt_tokens=n - n_xpe,
        num_xpe_tokens=n_xpe,
        hidden_size=d,
        encoder_hidden_size=int(fc1.shape[0]) if fc1 is not None else 256,
        encoder_input_size=int(xpe.shape[1]) if xpe is not None else d,
        num_labels=int(head["head.out_proj.weight"].shape[0]),
        head_style=style,
        source_format="bmikaberidze/XPE",
    )
    return conf, tensors


def _is_paper_layout(cfg: dict, names: set[str]) -> bool:
    """The paper's code saves its prompt under `prompt_encoder.*` (PEFT's own P-tuning saves
    only `prompt_embeddings`) and writes encoder_ratio into its config."""
    ours = any(re.sub(r"^base_model\.", "", n).startswith("prompt_encoder.") for n in names)
    return ours or ("encoder_ratio" in cfg and "prompt_embeddings" not in names)


def read_any_adapter(folder) -> tuple[dict, dict]:
    """(config, tensors) of an adapter in any known layout, fully checked; the static prompt
    is filled in at load time where the layout has none."""
    folder = Path(folder)
    cfg = read_json_config(folder)
    if cfg.get("format") == FORMAT:
        return read_adapter(folder)
    peft_type = str(cfg.get("peft_type") or "").upper()
    paper_file = next(
        (folder / n for n in ("adapter_model.safetensors", WEIGHTS_NAME) if (folder / n).is_file()),
        None,
    )
    if paper_file is not None:
        names = {_normalize(k) for k in _safetensors_names(paper_file)}
        if _is_paper_layout(cfg, names):
            conf, tensors = read_paper_adapter(folder, cfg, paper_file)
            return conf, _check_imported(conf, tensors, paper_file)
    if peft_type in PEFT_TYPES:
        conf, tensors = read_peft_adapter(folder, cfg)
        return conf, _check_imported(conf, tensors, folder)
    raise AdapterMismatchError(
        f"{folder}: unknown adapter layout (config format "
        f"{cfg.get('format')!r}, peft_type {cfg.get('peft_type')!r}); "
        "known: xpe_fast, PEFT PROMPT_TUNING / P_TUNING, bmikaberidze/XPE"
    )


def _safetensors_names(path: Path) -> list[str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return list(f.keys())
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterMismatchError(
            f"{path} is not a readable safetensors file (truncated or "
            f"corrupt?): {str(e).splitlines()[0][:200]}"
        ) from None


def _check_imported(conf: dict, tensors: dict, where) -> dict:
    """Every tensor the imported config implies, with its shape (the head's dense may be
    absent for a BERT head: the backbone's own pooler then stays)."""
    want = expected_shapes({**conf, "num_labels": conf["num_labels"]})
    want.pop("static_prompt")
    optional = {"head.dense.weight", "head.dense.bias"} if conf["head_style"] == "bert" else set()
    missing = sorted(set(want) - set(tensors) - optional)
    if missing:
        raise AdapterMismatchError(f"{where}: missing tensors {missing}")
    for name, t in tensors.items():
        if name in want and tuple(t.shape) != want[name]:
            raise AdapterMismatchError(
                f"{where}: {name} has shape {tuple(t.shape)}, expected {want[name]}"
            )
        if not t.is_floating_point() or not torch.isfinite(t).all():
            raise AdapterMismatchError(f"{where}: {name} is not a finite float tensor")
    return {k: v.float() for k, v in tensors.items()}


def fetch_adapter(spec: str, flag: str = "--adapter", revision: str | None = None) -> str:
    """A local adapter folder as is; a hub id (owner/name, optionally @revision) downloaded
    through huggingface_hub. Offline, one line saying what to download and where to put it."""
    from pathlib import Path

    from .errors import UserError

    if "@" in spec and revision is None and not Path(spec).exists():
        spec, revision = spec.rsplit("@", 1)
    if Path(spec).expanduser().exists() or spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        return spec
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(spec, revision=revision)
    except Exception as e:
        rev = f" --revision {revision}" if revision else ""
        raise UserError(
            f"{flag}: {spec}{'@' + revision if revision else ''} is no local folder "
            f"and could not be downloaded ({e.__class__.__name__}); where a network "
            f"exists run `huggingface-cli download {spec}{rev} --local-dir DIR` and "
            f"pass {flag} DIR"
        ) from None


# ---- export ------------------------------------------------------------------------------


def static_prompt(tensors: dict) -> torch.Tensor:
    """The [N, d] prompt at inference: saved by xpe_fast, else computed from the tables and
    the MLP (no dropout) as the model does, SPT rows first."""
    if "static_prompt" in tensors:
        return tensors["static_prompt"]
    from .reference import prompt_encoder_mlp_reference

    parts = []
    if "prompt.spt_embedding" in tensors:
        parts.append(tensors["prompt.spt_embedding"].float())
    if "prompt.xpe_embedding" in tensors:
        w = [
            tensors[f"prompt.encoder.fc{i}.{k}"].float()
            for i in (1, 2, 3)
            for k in ("weight", "bias")
        ]
        with torch.no_grad():
            parts.append(prompt_encoder_mlp_reference(tensors["prompt.xpe_embedding"].float(), *w))
    return torch.cat(parts, dim=0).contiguous()


def export_peft(adapter_dir, out_dir, base_model: str | None = None) -> Path:
    """Writes the xpe_fast adapter in `adapter_dir` as a PEFT prompt-tuning adapter (SEQ_CLS):
    `prompt_embeddings` = the static prompt (every method is a static prompt at inference)
    and the head under PEFT's names. PEFT's PeftModel.from_pretrained then gives the same
    logits. Atomic: the folder appears whole or not at all."""
    from .atomic import atomic_folder, save_tensors

    cfg, t = read_any_adapter(adapter_dir)
    model_type = (cfg.get("backbone_fingerprint") or {}).get("model_type") or "bert"
    tensors = {"prompt_embeddings": static_prompt(t)}
    if cfg["head_style"] == "roberta":
        for ours, theirs in (("dense", "classifier.dense"), ("out_proj", "classifier.out_proj")):
            for w in ("weight", "bias"):
                tensors[f"base_model.{theirs}.{w}"] = t[f"head.{ours}.{w}"]
        modules = ["classifier", "score"]
    else:
        prefix = BASE_PREFIX.get(model_type, model_type)
        for w in ("weight", "bias"):
            tensors[f"base_model.{prefix}.pooler.dense.{w}"] = t[f"head.dense.{w}"]
            tensors[f"base_model.classifier.{w}"] = t[f"head.out_proj.{w}"]
        modules = ["pooler", "classifier", "score"]
    peft_cfg = {
        "peft_type": "PROMPT_TUNING",
        "task_type": "SEQ_CLS",
        "num_virtual_tokens": cfg["num_virtual_tokens"],
        "token_dim": cfg["hidden_size"],
        "num_transformer_submodules": 1,
        "num_attention_heads": None,
        "num_layers": (cfg.get("backbone_fingerprint") or {}).get("num_hidden_layers"),
        "prompt_tuning_init": "RANDOM",
        "prompt_tuning_init_text": None,
        "tokenizer_name_or_path": None,
        "tokenizer_kwargs": None,
        "base_model_name_or_path": base_model or cfg.get("backbone"),
        "revision": None,
        "inference_mode": True,
        "modules_to_save": modules,
        "auto_mapping": None,
    }
    source = {
        "exported_from": str(adapter_dir),
        "method": cfg["method"],
        "encoder_ratio": cfg["encoder_ratio"],
        "labels": cfg.get("labels"),
        "note": "the static prompt and head only; continue training from the xpe_fast "
        "adapter, which holds the MLP",
    }
    out = Path(out_dir)
    with atomic_folder(out) as tmp:
        save_tensors(tmp / "adapter_model.safetensors", tensors, metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(peft_cfg, indent=1) + "\n")
        (tmp / "xpe_fast_export.json").write_text(json.dumps(source, indent=1) + "\n")
    return out
