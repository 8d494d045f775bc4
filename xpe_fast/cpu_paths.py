"""Which CPU fast paths run on this machine, in one place.

Each fast path replaces a plain PyTorch path; it runs only at the ISA levels where
`benchmarks/isa_paths.py` measured it at least as fast as the plain one (BENCHMARKS.md, one
table per level). The level is the C++ kernels' (csrc/cpu/clones.h: 3 AVX-512 + AVX512-BF16,
2 AVX-512, 1 AVX2, 0 baseline; XPE_FAST_CPU_ISA lowers it), read once per process.
"""

from __future__ import annotations

import functools

from . import _extension


@functools.cache
def isa_level() -> int:
    """The C++ kernels' ISA level, or -1 without the extension."""
    return int(_extension._C.cpu_isa_level()) if _extension._C is not None else -1


def use_packed_attention() -> bool:
    # Each variant runs vectors of its register width (16 floats with AVX-512, 8 with AVX2,
    # 4 with SSE), faster than matmul + softmax at every level.
    return isa_level() >= 0


def use_residual_layer_norm() -> bool:
    # Faster than eager's add + LayerNorm (+ cast) at every level (row statistics in the
    # register width of each).
    return isa_level() >= 0


def use_onednn_linear() -> bool:
    # oneDNN's AVX-512 and AVX2 GEMMs beat torch's (MKL's AVX2 code on AMD); below AVX2
    # MKL's SSE code is the faster.
    return isa_level() >= 1


def use_dropout_kernel() -> bool:
    return isa_level() >= 0
