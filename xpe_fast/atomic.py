"""Atomic writes: a file or a whole folder is written beside its target and renamed over it,
so a reader (or a run resumed after a kill) sees the previous version or the next, never a
mix or a torn file."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _umask_mode() -> int:
    return 0o666 & ~_umask()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _named(e: BaseException, tmp, path) -> BaseException:
    """An OSError about the temporary file beside `path` as one about `path` itself (the
    file the user knows); anything else unchanged."""
    if not isinstance(e, OSError) or not e.filename:
        return e
    name = str(e.filename).replace(str(tmp), str(path))
    return OSError(e.errno, e.strerror, name)


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
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise _named(e, tmp, path) from None


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, ensure_ascii=False, sort_keys=True) + "\n")


def save_tensors(path, tensors: dict[str, torch.Tensor], metadata=None) -> None:
    """safetensors file of CPU copies (a non-atomic write: use inside atomic_folder or via
    atomic_save_tensors)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
            str(path),
            metadata=metadata,
        )
    except SafetensorError as e:  # an I/O failure inside the Rust writer: as an OSError
        raise _as_os_error(e, path) from None


def _as_os_error(e: Exception, path) -> OSError:
    """safetensors reports the OS error inside its message (`os error 28`, `code: 28`)."""
    import errno
    import re

    m = re.search(r"(?:code: |os error )(\d+)", str(e))
    code = int(m.group(1)) if m else errno.EIO
    return OSError(code, os.strerror(code), str(path))


def atomic_save_tensors(path, tensors: dict[str, torch.Tensor], metadata=None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_tensors(tmp, tensors, metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise _named(e, tmp, path) from None


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike):
    """Yields a fresh folder beside `path`; when the block ends without an error, that folder
    replaces `path` (the old one, if any, is renamed aside first and removed after). A kill
    at any moment leaves the old folder or the new one at `path`, or, between the two
    renames, the old one under a `.old` name, which `recover_folder` puts back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.new.", dir=path.parent))
    try:
        yield tmp
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700 folders
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _named(e, tmp, path) from None


def recover_folder(path: str | os.PathLike) -> None:
    """Undoes what a kill between atomic_folder's two renames left: the old folder aside and
    none at `path`. Half-written new folders are removed."""
    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    if old.exists():
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, path)
    if path.parent.is_dir():
        for stale in path.parent.glob(f".{path.name}.new.*"):
            shutil.rmtree(stale, ignore_errors=True)
