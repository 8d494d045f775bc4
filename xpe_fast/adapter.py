"""Saving and loading adapters: the trained prompt, MLP and head of one run.

An adapter folder holds `adapter.safetensors` (every trainable tensor, the MLP encoder
included, plus `static_prompt`: the exported [N, d] prompt for inference) and
`adapter_config.json` (method, sizes, backbone, labels). The folder is written atomically
(atomic.atomic_folder); reading checks everything before any tensor is used.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ._version import __version__
from .atomic import atomic_folder, save_tensors
from .errors import AdapterMismatchError
from .model import PromptedEncoderForSequenceClassification

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter.safetensors"
FORMAT = "xpe_fast.adapter/1"


def backbone_fingerprint(model: PromptedEncoderForSequenceClassification) -> dict:
    cfg = model.backbone.config
    return {
        "model_type": getattr(cfg, "model_type", None),
        "hidden_size": int(model.parts.word.embedding_dim),
        "vocab_size": int(model.parts.word.num_embeddings),
        "num_hidden_layers": getattr(cfg, "num_hidden_layers", None),
        "max_position_embeddings": int(model.parts.position.num_embeddings),
    }


def adapter_config(
    model: PromptedEncoderForSequenceClassification, backbone_name: str, labels: list[str]
) -> dict:
    p = model.prompt
    return {
        "format": FORMAT,
        "xpe_fast_version": __version__,
        "method": p.method,
        "encoder_ratio": p.encoder_ratio,
        "num_virtual_tokens": p.num_virtual_tokens,
        "num_spt_tokens": p.num_spt,
        "num_xpe_tokens": p.num_xpe,
        "encoder_hidden_size": p.encoder_hidden_size,
        "encoder_input_size": p.encoder_input_size,
        "hidden_size": p.hidden_size,
        "num_labels": model.num_labels,
        "labels": list(labels),
        "head_style": model.head.style,
        "backbone": backbone_name,
        "backbone_fingerprint": backbone_fingerprint(model),
    }


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def save_adapter(
    model: PromptedEncoderForSequenceClassification,
    folder,
    backbone_name: str,
    labels: list[str],
    extra: dict | None = None,
) -> None:
    """Writes the adapter folder atomically (both files appear together or not at all)."""
    tensors = dict(trainable_state(model))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        # A copy: with one prompt part (SPT) the prompt is the Parameter itself, and
        # safetensors refuses two names for one storage.
        tensors["static_prompt"] = model.prompt().detach().float().clone()
    model.train(was_training)
    cfg = adapter_config(model, backbone_name, labels)
    if extra:
        cfg.update(extra)
    with atomic_folder(folder) as tmp:
        save_tensors(tmp / WEIGHTS_NAME, tensors, metadata={"format": FORMAT})
        (tmp / CONFIG_NAME).write_text(
            json.dumps(cfg, indent=1, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8"
        )


_CONFIG_TYPES = {
    "num_virtual_tokens": int,
    "encoder_ratio": (int, float),
    "encoder_hidden_size": int,
    "encoder_input_size": int,
    "hidden_size": int,
    "num_labels": int,
    "head_style": str,
    "backbone": str,
}


def read_json_config(folder) -> dict:
    """`folder`/adapter_config.json as a dict, whatever the layout: one-line errors for a
    missing folder or file, bad JSON, or not an object."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AdapterMismatchError(f"adapter folder {folder} does not exist")
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise AdapterMismatchError(f"{folder} holds no {CONFIG_NAME}: not an adapter")
    from .textfile import read_text

    text = read_text(path, AdapterMismatchError)
    try:
        cfg = json.loads(text)
    except ValueError as e:
        raise AdapterMismatchError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise AdapterMismatchError(f"{path} must hold a JSON object")
    return cfg


def load_safetensors(path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a truncated or corrupt file is a one-line error."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterMismatchError(
            f"{path} is not a readable safetensors file (truncated or "
            f"corrupt?): {str(e).splitlines()[0][:200]}"
        ) from None


def read_adapter_config(folder) -> dict:
    """The adapter's config, checked: a one-line AdapterMismatchError for anything amiss."""
    cfg = read_json_config(folder)
    path = Path(folder) / CONFIG_NAME
    if cfg.get("format") != FORMAT:
        raise AdapterMismatchError(
            f"{path}: unknown adapter format {cfg.get('format')!r} (expected {FORMAT!r})"
        )
    for key, typ in _CONFIG_TYPES.items():
        v = cfg.get(key)
        if not isinstance(v, typ) or isinstance(v, bool):
            raise AdapterMismatchError(
                f"{path}: {key!r} is missing or not a {getattr(typ, '__name__', 'number')}"
            )
    r = float(cfg["encoder_ratio"])
    if not (math.isfinite(r) and 0.0 <= r <= 1.0):
        raise AdapterMismatchError(f"{path}: encoder_ratio {r} is outside [0, 1]")
    for key in (
        "num_virtual_tokens",
        "encoder_hidden_size",
        "encoder_input_size",
        "hidden_size",
        "num_labels",
    ):
        if cfg[key] < 1:
            raise AdapterMismatchError(f"{path}: {key} must be >= 1, got {cfg[key]}")
    if cfg["head_style"] not in ("roberta", "bert"):
        raise AdapterMismatchError(f"{path}: unknown head_style {cfg['head_style']!r}")
    labels = cfg.get("labels")
    if labels is not None and (not isinstance(labels, list) or len(labels) != cfg["num_labels"]):
        raise AdapterMismatchError(f"{path}: labels must be a list of num_labels names")
    return cfg


def expected_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor an adapter of this config holds, with its shape."""
    from .prompt import split_virtual_tokens

    try:
        n_spt, n_xpe = split_virtual_tokens(
            cfg["num_virtual_tokens"], cfg["encoder_ratio"], cfg.get("num_xpe_tokens")
        )
    except (TypeError, ValueError) as e:
        raise AdapterMismatchError(f"adapter config: {e}") from None
    d, h, d_in, c = (
        cfg["hidden_size"],
        cfg["encoder_hidden_size"],
        cfg["encoder_input_size"],
        cfg["num_labels"],
    )
    shapes = {"static_prompt": (n_spt + n_xpe, d)}
    if n_spt:
        shapes["prompt.spt_embedding"] = (n_spt, d)
    if n_xpe:
        shapes.update(
            {
                "prompt.xpe_embedding": (n_xpe, d_in),
                "prompt.encoder.fc1.weight": (h, d_in),
                "prompt.encoder.fc1.bias": (h,),
                "prompt.encoder.fc2.weight": (h, h),
                "prompt.encoder.fc2.bias": (h,),
                "prompt.encoder.fc3.weight": (d, h),
                "prompt.encoder.fc3.bias": (d,),
            }
        )
    shapes.update(
        {
            "head.dense.weight": (d, d),
            "head.dense.bias": (d,),
            "head.out_proj.weight": (c, d),
            "head.out_proj.bias": (c,),
        }
    )
    return shapes


def read_adapter_tensors(folder, cfg: dict) -> dict[str, torch.Tensor]:
    """The adapter's tensors, all of them present with the shapes `cfg` implies, finite."""
    path = Path(folder) / WEIGHTS_NAME
    if not path.is_file():
        raise AdapterMismatchError(f"{path} is missing")
    tensors = load_safetensors(path)
    want = expected_shapes(cfg)
    missing = sorted(set(want) - set(tensors))
    unexpected = sorted(set(tensors) - set(want))
    if missing or unexpected:
        raise AdapterMismatchError(
            f"{path}: tensors do not match its config ({cfg.get('method')}"
            f"): missing {missing}, unexpected {unexpected}"
        )
    for name, shape in want.items():
        t = tensors[name]
        if tuple(t.shape) != shape:
            raise AdapterMismatchError(
                f"{path}: {name} has shape {tuple(t.shape)}, its config implies {shape}"
            )
        if not t.is_floating_point() or not torch.isfinite(t).all():
            raise AdapterMismatchError(f"{path}: {name} is not a finite float tensor")
    return tensors


def read_adapter(folder) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, tensors) of an adapter folder, fully checked before anything uses them."""
    cfg = read_adapter_config(folder)
    return cfg, read_adapter_tensors(folder, cfg)


def prompt_shape_kwargs(cfg: dict) -> dict:
    """The prompt's sizes as an adapter's config records them (its split included, read
    from its tensors when imported), as keyword arguments of the model."""
    return {
        "num_virtual_tokens": cfg["num_virtual_tokens"],
        "encoder_ratio": cfg["encoder_ratio"],
        "encoder_hidden_size": cfg["encoder_hidden_size"],
        "encoder_input_size": cfg.get("encoder_input_size"),
        "num_xpe_tokens": cfg.get("num_xpe_tokens"),
    }


def build_model_for_adapter(
    backbone: torch.nn.Module, cfg: dict, backend=None, accelerate: bool = False
):
    """The model an adapter's config describes (its sizes and split), on `backbone`."""
    return PromptedEncoderForSequenceClassification(
        backbone,
        cfg["num_labels"],
        prompt_dropout=0.0,
        backend=backend,
        accelerate=accelerate,
        head_style=cfg["head_style"],
        **prompt_shape_kwargs(cfg),
    )


def same_backbone(a: str | None, b: str | None) -> bool:
    """Whether two backbone names denote the same model: equal names, or local paths that
    resolve to the same folder (a trailing slash, ./, a symlink)."""
    if a is None or b is None:
        return a == b
    if a == b or a.rstrip("/") == b.rstrip("/"):
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return False


def check_compatible(
    model: PromptedEncoderForSequenceClassification, cfg: dict, backbone_name: str
) -> None:
    fp = backbone_fingerprint(model)
    saved = cfg.get("backbone_fingerprint", {})
    same_name = same_backbone(cfg.get("backbone"), backbone_name)
    if same_name and saved == fp:
        return
    diffs = "; ".join(
        f"{k} {saved.get(k)} in the adapter, {v} here" for k, v in fp.items() if saved.get(k) != v
    )
    where = (
        f"backbone {cfg.get('backbone')!r}, and the one of that name here differs"
        if same_name
        else f"backbone {cfg.get('backbone')!r}, not {backbone_name!r}"
    )
    raise AdapterMismatchError(
        f"the adapter was saved for {where}" + (f": {diffs}" if diffs else "")
    )


def load_adapter(
    folder,
    model: PromptedEncoderForSequenceClassification,
    backbone_name: str,
    adapter: tuple[dict, dict] | None = None,
) -> dict:
    """Loads the adapter's tensors into `model` (every trainable tensor, exact shapes; nothing
    is changed if any check fails); returns its config. `adapter`: what read_adapter (or
    interop.read_any_adapter) returned, if it was read already. An imported adapter (another
    layout) is checked against the model's hidden size instead of a backbone fingerprint,
    and a BERT head without its pooler keeps the backbone's pooler."""
    cfg, tensors = adapter if adapter is not None else read_adapter(folder)
    if cfg.get("imported"):
        d = model.parts.word.embedding_dim
        if cfg["hidden_size"] != d:
            name = next(
                k
                for k in (
                    "prompt.spt_embedding",
                    "prompt.encoder.fc3.weight",
                    "head.out_proj.weight",
                )
                if k in tensors
            )
            raise AdapterMismatchError(
                f"{folder}: {name} has width {cfg['hidden_size']} but the backbone's hidden "
                f"size is {d} (the adapter was saved for another backbone)"
            )
    else:
        check_compatible(model, cfg, backbone_name)
    tensors = {k: v for k, v in tensors.items() if k != "static_prompt"}
    own = dict(model.named_parameters())
    want = {n for n, p in own.items() if p.requires_grad}
    optional = {"head.dense.weight", "head.dense.bias"} if cfg.get("imported") else set()
    missing, unexpected = want - set(tensors) - optional, set(tensors) - want
    if missing or unexpected:
        raise AdapterMismatchError(
            f"adapter tensors do not match the model: missing "
            f"{sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    for n, t in tensors.items():
        if own[n].shape != t.shape:
            raise AdapterMismatchError(
                f"{n}: saved shape {tuple(t.shape)}, model {tuple(own[n].shape)}"
            )
    with torch.no_grad():
        for n, t in tensors.items():
            own[n].copy_(t)
    return cfg
