"""One writer per run folder: an OS file lock (flock) on `<folder>/.lock`, held by the training
command (rank 0 under torchrun) for the whole run. The OS drops it when the process ends,
however it ends, so a killed run never leaves a stale lock; the file only names the last
holder (pid and host) for the message a second command prints. On a shared file system the
lock is as good as the OS makes flock there (NFS: a POSIX lock through the lock manager)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from pathlib import Path

from .errors import FolderInUseError

LOCK_NAME = ".lock"


def _in_use(folder: Path, fd: int) -> FolderInUseError:
    try:
        holder = os.pread(fd, 256, 0).decode("utf-8", "replace").strip() or "a process"
    except OSError:
        holder = "a process"
    return FolderInUseError(
        f"--output-dir: {folder} is in use by another run ({holder}); wait for it to "
        "end, or choose another --output-dir"
    )


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


def check_free(folder) -> None:
    """Raises FolderInUseError if a live process holds `folder`; writes nothing."""
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # no lock file (or unreadable: the real attempt in hold() decides)
    try:
        if not _try_lock(fd):
            raise _in_use(Path(folder), fd)
    finally:
        os.close(fd)  # closing drops the probe's own lock


@contextlib.contextmanager
def hold(folder):
    """Creates `folder` if needed and holds its lock until the block ends."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd):
            raise _in_use(folder, fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
