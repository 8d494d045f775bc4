"""The training checkpoint: everything needed to continue a run exactly (trainable tensors,
optimizer state, schedule, step, RNG states, the best weights so far) in one safetensors file,
its non-tensor state as JSON in the file's metadata. One file, renamed into place: a kill at
any moment leaves the previous checkpoint or the next one."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from .adapter import trainable_state
from .atomic import atomic_save_tensors
from .errors import UserError

NAME = "checkpoint.safetensors"
FORMAT = "xpe_fast.checkpoint/2"


def save_checkpoint(folder: Path, model, opt, sched, state: dict) -> None:
    tensors = {f"model.{k}": v for k, v in trainable_state(model).items()}
    osd = opt.state_dict()
    opt_meta = {"param_groups": osd["param_groups"], "state": {}}
    for pid, st in osd["state"].items():
        opt_meta["state"][str(pid)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{pid}.{k}"] = v
                opt_meta["state"][str(pid)][k] = "__tensor__"
            else:
                opt_meta["state"][str(pid)][k] = v
    tensors["rng.torch"] = torch.get_rng_state()
    for k, v in (state.get("best_tensors") or {}).items():
        tensors[f"best.{k}"] = v
    meta = {k: v for k, v in state.items() if k != "best_tensors"}
    meta["optimizer"] = opt_meta
    meta["scheduler"] = sched.state_dict()
    meta["rng_python"] = random.getstate()
    atomic_save_tensors(
        Path(folder) / NAME, tensors, metadata={"format": FORMAT, "state": json.dumps(meta)}
    )


def load_checkpoint(folder: Path, model, opt, sched) -> dict | None:
    """Restores model, optimizer, schedule and RNGs from `folder`'s checkpoint; returns its
    state (None if there is none). A damaged file is a UserError naming it."""
    from safetensors import SafetensorError, safe_open

    path = Path(folder) / NAME
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if header.get("format") != FORMAT:
            raise ValueError(f"unknown format {header.get('format')!r}")
        meta = json.loads(header["state"])
        own = dict(model.named_parameters())
        restore = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        want = {n for n, p in own.items() if p.requires_grad}
        if set(restore) != want or any(own[k].shape != v.shape for k, v in restore.items()):
            raise ValueError("its tensors do not match this model")
        opt_state = {}
        for pid, st in meta["optimizer"]["state"].items():
            opt_state[int(pid)] = {
                k: (tensors[f"opt.{pid}.{k}"] if v == "__tensor__" else v) for k, v in st.items()
            }
        rng = tensors["rng.torch"]
        rs = meta["rng_python"]
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(
            f"checkpoint {path} cannot be read ({str(e).splitlines()[0][:200]}); "
            "delete it to restart that run from its beginning"
        ) from None
    with torch.no_grad():
        for k, v in restore.items():
            own[k].copy_(v)
    opt.load_state_dict({"state": opt_state, "param_groups": meta["optimizer"]["param_groups"]})
    sched.load_state_dict(meta["scheduler"])
    torch.set_rng_state(rng)
    random.setstate((rs[0], tuple(rs[1]), rs[2]))
    meta["best_tensors"] = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
    return meta
