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
import re
from pathlib import Path

import torch

from .adapter import (
    CONFIG_NAME,
    FORMAT,
    WEIGHTS_NAME,
    AdapterMismatchError,
    expected_shapes,
    load_safetensors,
    read_adapter,
    read_json_config,
)

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


def read_paper_adapter(folder: Path, cfg: dict, path: Path) -> tuple[dict, dict]:
    """The reference code's layout (XPE, SPT and DUAL runs of bmikaberidze/XPE)."""
    t = {_normalize(k): v for k, v in load_safetensors(path).items()}
    t = {re.sub(r"^base_model\.prompt_encoder\.", "prompt_encoder.", k): v for k, v in t.items()}
    spt = t.get("prompt_encoder.embedding.weight")
    xpe = t.get("prompt_encoder.xpe_embedding.weight")
    has_mlp = "prompt_encoder.xpe_head.0.weight" in t
    ratio = cfg.get("encoder_ratio")
    if ratio is None:
        if not has_mlp:
            ratio = 0
        elif xpe is None or spt is None:
            ratio = 1  # one table and the MLP: XPE (under the new key or the old one)
        else:
            raise AdapterMismatchError(
                f"{folder}/{CONFIG_NAME}: encoder_ratio is needed for "
                "a DUAL adapter in the paper's layout"
            )
    ratio = float(ratio)
    if ratio > 1:
        ratio /= 100  # DUAL-30 written as 30
    if ratio == 1.0 and xpe is None and spt is not None:
        xpe, spt = spt, None  # the old key: the XPE input table, not random inputs
    if ratio > 0 and not has_mlp:
        raise AdapterMismatchError(
            f"{path}: encoder_ratio {ratio} needs the MLP prompt_encoder.xpe_head.{{0,3,6}}"
        )
    if ratio < 1 and spt is None:
        raise AdapterMismatchError(
            f"{path}: encoder_ratio {ratio} needs the SPT table prompt_encoder.embedding.weight"
        )
    style, head = _head(t, path)
    d = int(head["head.out_proj.weight"].shape[1])
    n = sum(int(x.shape[0]) for x in (spt, xpe) if x is not None)
    tensors = dict(head)
    if spt is not None:
        tensors["prompt.spt_embedding"] = spt
    if xpe is not None:
        tensors["prompt.xpe_embedding"] = xpe
        for ours, i in (("fc1", 0), ("fc2", 3), ("fc3", 6)):
            for w in ("weight", "bias"):
                v = t.get(f"prompt_encoder.xpe_head.{i}.{w}")
                if v is not None:  # a missing one is named by _check_imported
                    tensors[f"prompt.encoder.{ours}.{w}"] = v
    fc1 = tensors.get("prompt.encoder.fc1.weight")
    h = int(fc1.shape[0]) if fc1 is not None else 256
    d_in = int(xpe.shape[1]) if xpe is not None else d
    method = "spt" if ratio == 0 else "xpe" if ratio == 1 else "dual"
    conf = _base_config(
        cfg,
        method=method,
        encoder_ratio=ratio,
        num_virtual_tokens=n,
        hidden_size=d,
        encoder_hidden_size=h,
        encoder_input_size=d_in,
        num_labels=int(head["head.out_proj.weight"].shape[0]),
        head_style=style,
        source_format="bmikaberidze/XPE",
    )
    return conf, tensors


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
        if any("xpe_head" in n or "xpe_embedding" in n for n in names):
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


# ---- export ------------------------------------------------------------------------------


def export_peft(adapter_dir, out_dir, base_model: str | None = None) -> Path:
    """Writes the xpe_fast adapter in `adapter_dir` as a PEFT prompt-tuning adapter (SEQ_CLS):
    `prompt_embeddings` = the static prompt (every method is a static prompt at inference)
    and the head under PEFT's names. PEFT's PeftModel.from_pretrained then gives the same
    logits. Atomic: the folder appears whole or not at all."""
    from .atomic import atomic_folder, save_tensors

    cfg, t = read_adapter(adapter_dir)
    model_type = (cfg.get("backbone_fingerprint") or {}).get("model_type") or "bert"
    tensors = {"prompt_embeddings": t["static_prompt"]}
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
