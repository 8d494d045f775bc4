"""Saving and loading adapters (trained prompt, MLP and head) and resumable training state.

An adapter folder holds `adapter.safetensors` (every trainable tensor, the MLP encoder
included, plus `static_prompt`: the exported [N, d] prompt for inference) and
`adapter_config.json` (method, sizes, backbone, labels). Writes are atomic: each file is
written beside its target and renamed over it.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from . import __version__
from .model import PromptedEncoderForSequenceClassification

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter.safetensors"
FORMAT = "xpe_fast.adapter/1"


class AdapterMismatchError(ValueError):
    """An adapter saved for another backbone, hidden size or prompt shape."""


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())  # mkstemp creates 0600 files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, ensure_ascii=False, sort_keys=True) + "\n")


def atomic_save_tensors(path, tensors: dict[str, torch.Tensor], metadata=None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp,
                  metadata=metadata)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def backbone_fingerprint(model: PromptedEncoderForSequenceClassification) -> dict:
    cfg = model.backbone.config
    return {"model_type": getattr(cfg, "model_type", None),
            "hidden_size": int(model.parts.word.embedding_dim),
            "vocab_size": int(model.parts.word.num_embeddings),
            "num_hidden_layers": getattr(cfg, "num_hidden_layers", None),
            "max_position_embeddings": int(model.parts.position.num_embeddings)}


def adapter_config(model: PromptedEncoderForSequenceClassification, backbone_name: str,
                   labels: list[str]) -> dict:
    p = model.prompt
    return {"format": FORMAT, "xpe_fast_version": __version__, "method": p.method,
            "encoder_ratio": p.encoder_ratio, "num_virtual_tokens": p.num_virtual_tokens,
            "num_spt_tokens": p.num_spt, "num_xpe_tokens": p.num_xpe,
            "encoder_hidden_size": p.encoder_hidden_size,
            "encoder_input_size": p.encoder_input_size, "hidden_size": p.hidden_size,
            "num_labels": model.num_labels, "labels": list(labels),
            "head_style": model.head.style, "backbone": backbone_name,
            "backbone_fingerprint": backbone_fingerprint(model)}


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def save_adapter(model: PromptedEncoderForSequenceClassification, folder, backbone_name: str,
                 labels: list[str], extra: dict | None = None) -> None:
    folder = Path(folder)
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
    atomic_save_tensors(folder / WEIGHTS_NAME, tensors, metadata={"format": FORMAT})
    atomic_write_json(folder / CONFIG_NAME, cfg)


def read_adapter_config(folder) -> dict:
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise AdapterMismatchError(f"{folder} is not an xpe_fast adapter (no {CONFIG_NAME})")
    cfg = json.loads(path.read_text())
    if cfg.get("format") != FORMAT:
        raise AdapterMismatchError(f"{path}: unknown adapter format {cfg.get('format')!r}")
    return cfg


def build_model_for_adapter(backbone: torch.nn.Module, cfg: dict, backend=None):
    return PromptedEncoderForSequenceClassification(
        backbone, cfg["num_labels"], num_virtual_tokens=cfg["num_virtual_tokens"],
        encoder_ratio=cfg["encoder_ratio"], encoder_hidden_size=cfg["encoder_hidden_size"],
        prompt_dropout=0.0, backend=backend, head_style=cfg["head_style"])


def check_compatible(model: PromptedEncoderForSequenceClassification, cfg: dict,
                     backbone_name: str) -> None:
    fp = backbone_fingerprint(model)
    saved = cfg.get("backbone_fingerprint", {})
    if cfg.get("backbone") != backbone_name or saved != fp:
        diffs = {k: (saved.get(k), v) for k, v in fp.items() if saved.get(k) != v}
        raise AdapterMismatchError(
            f"the adapter was saved for backbone {cfg.get('backbone')!r}, not "
            f"{backbone_name!r}" + (f" (saved vs this backbone: {diffs})" if diffs else ""))


def load_adapter(folder, model: PromptedEncoderForSequenceClassification,
                 backbone_name: str) -> dict:
    """Loads the adapter's tensors into `model` (strictly: every trainable tensor, exact
    shapes); returns its config."""
    cfg = read_adapter_config(folder)
    check_compatible(model, cfg, backbone_name)
    tensors = load_file(str(Path(folder) / WEIGHTS_NAME))
    tensors.pop("static_prompt", None)
    own = dict(model.named_parameters())
    want = {n for n, p in own.items() if p.requires_grad}
    missing, unexpected = want - set(tensors), set(tensors) - want
    if missing or unexpected:
        raise AdapterMismatchError(f"adapter tensors do not match the model: missing "
                                   f"{sorted(missing)}, unexpected {sorted(unexpected)}")
    with torch.no_grad():
        for n, t in tensors.items():
            if own[n].shape != t.shape:
                raise AdapterMismatchError(f"{n}: saved shape {tuple(t.shape)}, model "
                                           f"{tuple(own[n].shape)}")
            own[n].copy_(t)
    return cfg
