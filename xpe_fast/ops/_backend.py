"""Choice of the backend that runs a fused op: "reference", "cpu", "triton" or "cuda".

None picks the best available for the tensors' device; the environment variable
XPE_FAST_BACKEND overrides that default (an explicit `backend=` argument still wins).

"reference" is eager PyTorch. "cpu" and "cuda" are the C++ kernels of the dispatcher ops
torch.ops.xpe_fast.* (declared in csrc/schema.cpp) for the CPU and CUDA dispatch keys;
"triton" calls the ops of its own, torch.ops.xpe_fast_triton.* (triton_ops.py), on a GPU or
on the CPU under TRITON_INTERPRET=1. No kernel is ever swapped, so the choice is per call and
models with different backends can run interleaved in one process. On a GPU without
xpe_fast._cuda the default is "triton".
"""

from __future__ import annotations

import functools
import os

import torch

from .. import _extension

BACKENDS = ("reference", "cpu", "triton", "cuda")
ENV_VAR = "XPE_FAST_BACKEND"


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def triton_runs_on_cpu() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    device = torch.device(device)
    out = ["reference"]
    if device.type == "cpu":
        if _extension.has_cpu_kernels():
            out.append("cpu")
        if triton_available() and triton_runs_on_cpu() and _extension.has_cpu_kernels():
            out.append("triton")
    elif device.type == "cuda":
        if triton_available() and _extension.has_cpu_kernels():
            out.append("triton")
        if _extension.has_cuda_kernels():
            out.append("cuda")
    return out


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """The backend to run on `device`, or a clear error if the requested one cannot."""
    if backend is None:
        backend = os.environ.get(ENV_VAR) or None
    if backend is None:
        if device.type == "cuda":
            return (
                "cuda"
                if _extension.has_cuda_kernels()
                else ("triton" if "triton" in available_backends(device) else "reference")
            )
        return "cpu" if _extension.has_cpu_kernels() else "reference"
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "cpu":
        if device.type != "cpu":
            raise ValueError(f"backend 'cpu' needs CPU tensors, got tensors on {device}")
        if not _extension.has_cpu_kernels():
            raise RuntimeError(
                "backend 'cpu' needs the compiled extension xpe_fast._C, which "
                f"failed to import: {_extension.C_IMPORT_ERROR}"
            )
    elif backend == "cuda":
        if device.type != "cuda":
            raise ValueError(f"backend 'cuda' needs CUDA tensors, got tensors on {device}")
        if not _extension.has_cuda_kernels():
            raise RuntimeError(
                "backend 'cuda' needs xpe_fast._cuda, which is built only with "
                "a CUDA build of torch and a CUDA toolkit"
            )
    elif backend == "triton":
        if not triton_available():
            raise RuntimeError("backend 'triton' needs the triton package")
        if not _extension.has_cpu_kernels():
            raise RuntimeError(
                "backend 'triton' needs the compiled extension xpe_fast._C, which declares "
                f"the ops, and it failed to import: {_extension.C_IMPORT_ERROR}"
            )
        if device.type == "cpu" and not triton_runs_on_cpu():
            raise ValueError(
                "backend 'triton' runs CPU tensors only under TRITON_INTERPRET=1 "
                "(set before xpe_fast is imported)"
            )
    return backend


def cuda_dropout_available() -> bool:
    """Whether the counter-based dropout runs on CUDA tensors: its CUDA kernel is Triton's
    (torch.ops.xpe_fast_triton.dropout; there is no C++ CUDA kernel of it)."""
    return triton_available() and _extension.has_cpu_kernels() and torch.cuda.is_available()
