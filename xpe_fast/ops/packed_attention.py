"""packed_attention: encoder self-attention for inference, read straight from the packed
query/key/value projection [B, S, 3 * H * hd] and written as [B, S, H * hd], the layout of
the output projection (no transposes). An additive key mask [B, S] (0 attend, -inf masked)
is the encoder's key-padding mask. Scores, softmax and the sum of values accumulate in fp32.

Inference only (no autograd): the op `torch.ops.xpe_fast.packed_attention`, whose C++ kernel
(csrc/cpu/packed_attention.cpp) runs for CPU
float32/bfloat16 tensors and head sizes 16, 32, 64, 128 outside gradient mode; anything else
runs the eager reference.
"""

from __future__ import annotations

import torch

from .. import _extension, cpu_paths
from ..reference import packed_attention_reference

if _extension.has_cpu_kernels():

    @torch.library.register_fake("xpe_fast::packed_attention")
    def _(qkv, key_mask, num_heads, scale):
        torch._check(
            qkv.dim() == 3, lambda: f"packed_attention: qkv must be [B, S, 3d], got {qkv.shape}"
        )
        B, S, three_d = qkv.shape
        torch._check(
            num_heads > 0 and three_d % (3 * num_heads) == 0,
            lambda: f"packed_attention: 3d={three_d} is not 3 * heads * head size",
        )
        torch._check(
            key_mask is None or tuple(key_mask.shape) == (B, S),
            lambda: f"packed_attention: key_mask must be [{B}, {S}], got {key_mask.shape}",
        )
        return qkv.new_empty((B, S, three_d // 3))


def kernel_applies(qkv: torch.Tensor, num_heads: int) -> bool:
    """Whether the C++ kernel can serve these inputs (backend="cpu")."""
    if (
        _extension._C is None
        or qkv.device.type != "cpu"
        or qkv.dim() != 3
        or qkv.dtype not in (torch.float32, torch.bfloat16)
        or num_heads <= 0
        or qkv.shape[-1] % (3 * num_heads)
    ):
        return False
    if torch.is_grad_enabled() and qkv.requires_grad:
        return False
    return bool(_extension._C.packed_attention_supports_head_size(qkv.shape[-1] // (3 * num_heads)))


def kernel_preferred(qkv: torch.Tensor, num_heads: int) -> bool:
    """Whether backend=None runs the kernel: it can, and it is the faster path at this CPU's
    ISA level (cpu_paths.py); else callers take their plain attention."""
    return cpu_paths.use_packed_attention() and kernel_applies(qkv, num_heads)


def packed_attention(
    qkv: torch.Tensor,
    key_mask: torch.Tensor | None,
    num_heads: int,
    scale: float,
    backend: str | None = None,
) -> torch.Tensor:
    """Context [B, S, H * hd] of softmax(q k^T * scale + key_mask) v; see the module doc.
    backend: None (the kernel where it is preferred), "cpu" (the kernel) or "reference"."""
    if qkv.dim() != 3 or num_heads <= 0 or qkv.shape[-1] % (3 * num_heads):
        raise ValueError(
            f"qkv must be [B, S, 3 * num_heads * head_size] with num_heads = "
            f"{num_heads}, got {tuple(qkv.shape)}"
        )
    if key_mask is not None and tuple(key_mask.shape) != tuple(qkv.shape[:2]):
        raise ValueError(
            f"key_mask must be [B, S] = {tuple(qkv.shape[:2])}, got {tuple(key_mask.shape)}"
        )
    if backend not in (None, "reference", "cpu"):
        raise ValueError(f"packed_attention runs on 'cpu' or 'reference', not {backend!r}")
    use = kernel_applies if backend == "cpu" else kernel_preferred
    if backend != "reference" and use(qkv, num_heads):
        if key_mask is not None:
            key_mask = key_mask.float()
        return torch.ops.xpe_fast.packed_attention.default(qkv, key_mask, num_heads, float(scale))
    if backend == "cpu":
        raise ValueError(
            "the packed_attention kernel needs CPU float32/bfloat16 qkv without "
            "gradient, head size 16/32/64/128 and the compiled extension"
        )
    return packed_attention_reference(qkv, key_mask, num_heads, scale)
