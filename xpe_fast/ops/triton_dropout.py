"""Triton kernel of dropout (the GPU path; runs on the CPU under TRITON_INTERPRET=1).

The same counter-based hash as the C++ kernel (csrc/include/xpe_fast/kernel_math.h,
dropout_bits): element i of the tensor, numbered from `offset`, is kept when 24 bits of
mix32(mix32(lo(i) ^ lo(seed)) + hi(i) * 0x9e3779b9 + hi(seed)) are at or above the
threshold p * 2^24, and scaled by 1 / (1 - p) in fp32. So a GPU run draws the masks a CPU run
draws, numbered by global sample index whatever the number of processes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_rounding import to_output

BLOCK = 1024


@triton.jit
def _mix32(x):
    """lowbias32 on uint32 lanes (every product cast back to 32 bits: it wraps as in C++)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D).to(tl.uint32)
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B).to(tl.uint32)
    x = x ^ (x >> 16)
    return x


@triton.jit
def _dropout_kernel(
    x_ptr, y_ptr, n, offset, seed_lo, seed_hi, threshold, scale, BLOCK: tl.constexpr
):
    start = tl.program_id(0).to(tl.int64) * BLOCK
    idx = start + tl.arange(0, BLOCK).to(tl.int64)
    mask = idx < n
    i = idx + offset
    lo = (i & 0xFFFFFFFF).to(tl.uint32)
    hi = (i >> 32).to(tl.uint32)
    a = _mix32(lo ^ seed_lo.to(tl.uint32))
    b = (a + (hi * 0x9E3779B9).to(tl.uint32)).to(tl.uint32)
    bits = _mix32((b + seed_hi.to(tl.uint32)).to(tl.uint32)) >> 8
    keep = bits >= threshold.to(tl.uint32)
    x = tl.load(x_ptr + idx, mask=mask, other=0.0)
    if x.dtype == tl.float64:
        y = tl.where(keep, x * scale, 0.0)  # the fp32 scale, widened exactly
        tl.store(y_ptr + idx, y, mask=mask)
    else:
        y = tl.where(keep, x.to(tl.float32) * scale, 0.0)
        tl.store(y_ptr + idx, to_output(y, y_ptr.dtype.element_ty), mask=mask)


def dropout_constants(p: float) -> tuple[int, float]:
    """(threshold, scale) exactly as the C++ kernel computes them."""
    threshold = int(p * 16777216.0 + 0.5)
    scale = float(torch.tensor(1.0 / (1.0 - p), dtype=torch.float32))
    return threshold, scale


def dropout(x: torch.Tensor, p: float, seed: int, offset: int = 0) -> torch.Tensor:
    """The kernel of `torch.ops.xpe_fast.dropout` for Triton's device (checks as the C++
    kernel's)."""
    if x.dtype not in (torch.float32, torch.float64, torch.bfloat16):
        raise TypeError(f"dropout: x must be float32, float64 or bfloat16, got {x.dtype}")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    if offset < 0:
        raise ValueError(f"dropout: offset must be >= 0, got {offset}")
    x = x.contiguous()
    y = torch.empty_like(x)
    n = x.numel()
    if n == 0:
        return y
    threshold, scale = dropout_constants(p)
    s = int(seed) & 0xFFFFFFFFFFFFFFFF
    grid = (triton.cdiv(n, BLOCK),)
    _dropout_kernel[grid](
        x, y, n, int(offset), s & 0xFFFFFFFF, s >> 32, threshold, scale, BLOCK=BLOCK
    )
    return y
