"""fp32 -> output dtype for the Triton kernels, rounding to nearest even as torch does.

A plain `.to(tl.bfloat16)` rounds to nearest on GPUs but truncates under TRITON_INTERPRET=1
(the interpreter ignores `fp_downcast_rounding`), which biases sums of many rounded values.
Rounding the fp32 bits first makes the cast exact on both.
"""

import triton
import triton.language as tl


@triton.jit
def to_output(x, out_ty: tl.constexpr):
    """fp32 `x` as `out_ty`, rounded to nearest even (NaN and inf kept)."""
    if out_ty == tl.bfloat16:
        u = x.to(tl.uint32, bitcast=True)
        u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
        r = u.to(tl.float32, bitcast=True)
        x = tl.where(x != x, x, r)
    return x.to(out_ty)
