"""Choice of the backend that runs a fused op: "reference", "cpu", "triton" or "cuda".

None picks the best available for the tensors' device; the environment variable
XPE_FAST_BACKEND overrides that default (an explicit `backend=` argument still wins).
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
        if triton_available() and triton_runs_on_cpu():
            out.append("triton")
    elif device.type == "cuda":
        if triton_available():
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
                else ("triton" if triton_available() else "reference")
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
        if device.type == "cpu" and not triton_runs_on_cpu():
            raise ValueError(
                "backend 'triton' runs CPU tensors only under TRITON_INTERPRET=1 "
                "(set before xpe_fast is imported)"
            )
    return backend


def profiled(name: str, fn, *args):
    """fn(*args), recorded as `name` while torch.profiler runs: calls into the pybind11
    extension are not dispatcher ops, so the profiler would not see their time otherwise."""
    if torch._C._autograd._profiler_enabled():
        with torch.autograd.profiler.record_function(name):
            return fn(*args)
    return fn(*args)
