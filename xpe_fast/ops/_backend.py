"""Choice of the backend that runs a fused op: "reference", "cpu", "triton" or "cuda".

None picks the best available for the tensors' device; the environment variable
XPE_FAST_BACKEND overrides that default (an explicit `backend=` argument still wins).

"reference" is eager PyTorch. The others are kernels of the same dispatcher ops
(torch.ops.xpe_fast.*, declared in csrc/schema.cpp): "cpu" and "cuda" are the C++ kernels of
the CPU and CUDA dispatch keys, and "triton" is registered from Python for the device's key.
A dispatch key holds one kernel at a time, so choosing "triton" where a native kernel exists
(CUDA with xpe_fast._cuda built, or the CPU under TRITON_INTERPRET=1) makes Triton that
device's kernel for the whole process until a native backend is chosen again
(`select_kernels`); on a GPU without xpe_fast._cuda, Triton is the CUDA kernel.
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


# Where the Triton kernels are: op name -> (module in xpe_fast.ops, function).
_TRITON_KERNELS = {
    "prompt_encoder_mlp": ("triton_prompt_encoder_mlp", "prompt_encoder_mlp_forward"),
    "prompt_encoder_mlp_backward": ("triton_prompt_encoder_mlp", "prompt_encoder_mlp_backward"),
    "assemble_embeddings": ("triton_assemble_embeddings", "assemble_embeddings_forward"),
    "assemble_embeddings_backward": ("triton_assemble_embeddings", "assemble_embeddings_backward"),
    "dropout": ("triton_dropout", "dropout"),
}
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}
_triton_libraries: dict[str, torch.library.Library] = {}  # dispatch key -> registration


def select_kernels(backend: str, device: torch.device) -> None:
    """Makes `backend` ("cpu", "cuda" or "triton", already resolved) the kernel the ops run on
    `device`'s dispatch key: registers the Triton kernels there, or removes them so the C++
    kernel (registered when the extension was loaded) runs again."""
    key = _DISPATCH_KEYS.get(device.type)
    if key is None or backend == "reference":
        return
    lib = _triton_libraries.get(key)
    if backend == "triton" and lib is None:
        import importlib
        import warnings

        lib = torch.library.Library("xpe_fast", "IMPL")
        with warnings.catch_warnings():  # "Overriding a previously registered kernel"
            warnings.simplefilter("ignore", UserWarning)
            for op, (module, fn) in _TRITON_KERNELS.items():
                kernel = getattr(importlib.import_module(f"{__package__}.{module}"), fn)
                lib.impl(op, kernel, key)
        _triton_libraries[key] = lib
    elif backend != "triton" and lib is not None:
        lib._destroy()  # the C++ kernel of this key is the one dispatched again
        del _triton_libraries[key]


_cuda_dropout: list[torch.library.Library] = []  # the one permanent registration


def cuda_dropout_available() -> bool:
    """Whether `torch.ops.xpe_fast.dropout` runs on CUDA tensors: its CUDA kernel is the
    Triton one (there is no C++ CUDA kernel of it), registered here once, for good."""
    if _cuda_dropout:
        return True
    if not (triton_available() and _extension.has_cpu_kernels() and torch.cuda.is_available()):
        return False
    from .triton_dropout import dropout

    lib = torch.library.Library("xpe_fast", "IMPL")
    lib.impl("dropout", dropout, "CUDA")
    _cuda_dropout.append(lib)
    return True
