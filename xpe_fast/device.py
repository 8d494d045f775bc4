"""Where a run computes: the device, the precision that is fast there, and the fused ops'
backend that runs there. Each choice fails as a `UserError` naming the flag."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from .errors import UserError


def resolve_device(spec: str | None) -> torch.device:
    """'auto' (CUDA where available, else the CPU), 'cpu', 'cuda' or 'cuda:N'."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return (
            torch.device("cuda", torch.cuda.current_device())
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N, got {spec!r}") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise UserError(f"--device {spec}: only cpu and cuda are supported")
    if not torch.cuda.is_available():
        why = (
            "this torch is a CPU build"
            if torch.version.cuda is None
            else "no CUDA device is visible"
        )
        raise UserError(f"--device {spec}: CUDA is not available ({why})")
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise UserError(f"--device {spec}: there are {torch.cuda.device_count()} CUDA devices")
    return torch.device("cuda", index)


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """AMX or AVX-512 bf16, with oneDNN able to use them: without, bf16 matmuls on the CPU
    are emulated and slower than fp32."""
    from .frozen_linear import onednn_bf16_available

    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return ("amx_bf16" in flags or "avx512_bf16" in flags) and onednn_bf16_available()


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """'auto' -> 'bf16' where bf16 is fast on `device`, else 'fp32'."""
    device = torch.device(device)
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    if precision not in ("fp32", "bf16"):
        raise UserError(f"--precision must be auto, fp32 or bf16, got {precision!r}")
    return precision


def autocast(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def check_backend(backend: str | None, device: torch.device) -> None:
    """A backend the fused ops can run on `device` (None: the device's best)."""
    if backend is None:
        return
    from .ops._backend import BACKENDS, resolve_backend

    if backend not in BACKENDS:
        raise UserError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    try:
        resolve_backend(backend, device)
    except (ValueError, RuntimeError) as e:
        raise UserError(f"--backend {backend} on {device}: {e}") from None
