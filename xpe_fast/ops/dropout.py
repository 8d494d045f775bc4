"""dropout: y = x * keep(seed, offset + i) / (1 - p), with the counter-based hash of
csrc/include/xpe_fast/kernel_math.h, so that a mask depends only on (seed, element index)
and never on a generator's state, the device or how a batch was split over processes.

The dispatcher op `torch.ops.xpe_fast.dropout` (schema in csrc/schema.cpp; autograd in C++:
the backward is the same op on the gradient with the same seed) has a C++ kernel for the CPU
(csrc/cpu/dropout.cpp) and a Triton kernel (triton_dropout.py) for CUDA, registered as the
op's CUDA kernel the first time it is needed (the backbone's dropouts call the op), and the
op of its own `torch.ops.xpe_fast_triton.dropout` (triton_ops.py, backend="triton"); the
reference (reference.dropout_reference) is the same hash in plain tensor arithmetic. Here:
the public function.
"""

from __future__ import annotations

import torch

from ..reference import dropout_reference
from ._backend import resolve_backend


def dropout(
    x: torch.Tensor, p: float, seed: int, offset: int = 0, backend: str | None = None
) -> torch.Tensor:
    """x with element i (numbered from `offset`: x is the tail of a larger tensor, e.g. a
    rank's share of a global batch) kept with probability 1 - p and scaled by 1 / (1 - p).

    Args:
        x: float32, float64 or bfloat16, any shape (read as contiguous).
        p: drop probability in [0, 1).
        seed: any int64; the same (seed, offset) gives the same mask on every backend.
        backend: "reference", "cpu", "triton" (CUDA, or the CPU under TRITON_INTERPRET=1)
            or None (the device's kernel).
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    if offset < 0:
        raise ValueError(f"dropout: offset must be >= 0, got {offset}")
    if backend is None and x.device.type == "cuda":
        backend = "triton"  # the op's only CUDA kernel
    backend = resolve_backend(backend, x.device)
    if backend == "reference":
        return dropout_reference(x, p, seed, offset)
    if backend == "cuda":
        raise ValueError("dropout has no C++ CUDA kernel; its CUDA kernel is Triton's")
    if backend == "triton":
        from . import triton_ops

        return triton_ops.dropout(x, p, int(seed), int(offset))
    return torch.ops.xpe_fast.dropout.default(x, p, int(seed), int(offset))
