"""residual_layer_norm: y = LayerNorm(x + residual) of an encoder layer's output, for
inference, in one pass, optionally also returning y in bf16 (the input of the next linear
layer under bf16 autocast, which eager PyTorch would cast in a pass of its own).

Inference only (no autograd): the op `torch.ops.xpe_fast.residual_layer_norm`, whose C++
kernel (csrc/cpu/residual_layer_norm.cpp) runs for
CPU float32/bfloat16 tensors outside gradient mode; anything else runs the eager reference.
"""

from __future__ import annotations

import torch

from .. import _extension, cpu_paths
from ..reference import residual_layer_norm_reference

if _extension.has_cpu_kernels():

    @torch.library.register_fake("xpe_fast::residual_layer_norm")
    def _(x, residual, weight, bias, eps, bf16_copy=False):
        torch._check(
            x.shape == residual.shape,
            lambda: f"residual_layer_norm: x {x.shape} and residual {residual.shape} differ",
        )
        d = residual.shape[-1]
        torch._check(
            tuple(weight.shape) == (d,) and tuple(bias.shape) == (d,),
            lambda: f"residual_layer_norm: weight and bias must be [{d}]",
        )
        y = torch.empty_like(residual, memory_format=torch.contiguous_format)
        if bf16_copy and y.dtype == torch.float32:
            return [y, torch.empty_like(y, dtype=torch.bfloat16)]
        return [y]


def kernel_applies(x: torch.Tensor, residual: torch.Tensor) -> bool:
    ok = (torch.float32, torch.bfloat16)
    if (
        _extension._C is None
        or x.device.type != "cpu"
        or residual.device.type != "cpu"
        or x.dtype not in ok
        or residual.dtype not in ok
        or (x.dtype == torch.float32 and residual.dtype == torch.bfloat16)
    ):
        return False
    return not (torch.is_grad_enabled() and (x.requires_grad or residual.requires_grad))


def residual_layer_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    bf16_copy: bool = False,
    backend: str | None = None,
):
    """(LayerNorm(x + residual) in the promoted dtype, its bf16 copy if `bf16_copy` else
    None). backend: None (the kernel where it applies) or "reference"."""
    if x.shape != residual.shape:
        raise ValueError(
            f"x and residual must have the same shape, got {tuple(x.shape)} and "
            f"{tuple(residual.shape)}"
        )
    d = x.shape[-1] if x.dim() else 0
    if weight.shape != (d,) or bias.shape != (d,):
        raise ValueError(
            f"weight and bias must be [{d}], got {tuple(weight.shape)} and {tuple(bias.shape)}"
        )
    if backend not in (None, "reference", "cpu"):
        raise ValueError(f"residual_layer_norm runs on 'cpu' or 'reference', not {backend!r}")
    if (
        backend != "reference"
        and kernel_applies(x, residual)
        and (backend == "cpu" or cpu_paths.use_residual_layer_norm())
        and not (torch.is_grad_enabled() and (weight.requires_grad or bias.requires_grad))
    ):
        ys = torch.ops.xpe_fast.residual_layer_norm.default(
            x, residual, weight, bias, float(eps), bf16_copy
        )
        if len(ys) == 2:
            return ys[0], ys[1]
        return ys[0], (ys[0] if bf16_copy else None)  # a bf16 y is its own bf16 copy
    if backend == "cpu":
        raise ValueError(
            "the residual_layer_norm kernel needs CPU float32/bfloat16 inputs "
            "without gradient and the compiled extension"
        )
    return residual_layer_norm_reference(x, residual, weight, bias, eps, bf16_copy)
