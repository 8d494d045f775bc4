"""Frozen linear layers of the backbone, prepared once for speed on the CPU.

The backbone is frozen, so its linear layers never need weight gradients: only y = x W^T + b
forward and dx = dy W backward. On the CPU, torch's dense fp32 GEMM goes to MKL, which runs
its AVX2 code on AMD processors, while oneDNN runs AVX-512 (about twice the rate on the same
core and shapes: BENCHMARKS.md, micro-measurements). `FrozenLinear` sends both GEMMs to oneDNN
(`torch.ops.mkldnn._linear_pointwise`, the op torch.compile's CPU freezing path uses), with
the transposed weight as a strided view, so no copy of the weights is kept in fp32. Under
bf16 autocast it keeps one bf16 copy of each weight (autocast would cast it on every call),
refreshed if the weight changes. The arithmetic is the same (fp32 products and sums; bf16
inputs with fp32 accumulation under autocast); only the summation order differs, by fp32
rounding.

`prepare_frozen_linears(module)` turns every nn.Linear of a frozen module into a
FrozenLinear in place (same class for isinstance, same parameters and state_dict keys);
anything it cannot serve (float64, CUDA, weights that require grad, no oneDNN, bf16 where
oneDNN has no bf16 kernels) falls back to nn.Linear's own forward.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu_paths
from .module_swap import BF16_WEIGHTS, LINEAR_FAST, recall, remember, swap_classes


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@functools.cache
def onednn_bf16_available() -> bool:
    """Whether oneDNN can build bf16 GEMMs on this CPU: it needs AVX-512 (or AMX); on AVX2-only
    CPUs, or with oneDNN capped by ONEDNN_MAX_CPU_ISA=AVX2, its bf16 inner product fails."""
    if not onednn_available():
        return False
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


def _linear(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, post_op: str = "none"
) -> torch.Tensor:
    """x w^T + b on oneDNN, with an optional fused elementwise post-op ("gelu": exact GELU)."""
    return torch.ops.mkldnn._linear_pointwise(
        x, w, b, post_op, [], "none" if post_op == "gelu" else ""
    )


def tensor_version(t: torch.Tensor) -> int:
    """t's in-place-change counter; inference tensors have none (and cannot change)."""
    try:
        return t._version
    except RuntimeError:
        return -1


class _FrozenLinearFunction(torch.autograd.Function):
    """y = x w^T + b with w and b constant: backward gives only dx = dy w."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(w)
        return _linear(x, w, b)

    @staticmethod
    def backward(ctx, gy):
        (w,) = ctx.saved_tensors
        return _linear(gy.contiguous(), w.t(), None), None, None


class FrozenLinear(nn.Linear):
    """An nn.Linear whose frozen forward (and input gradient) runs on oneDNN; see module doc."""

    def _bf16_weights(self):
        key = (
            self.weight.data_ptr(),
            tensor_version(self.weight),
            None if self.bias is None else tensor_version(self.bias),
        )
        cached = recall(self, BF16_WEIGHTS)
        if cached is None or cached[0] != key:
            # Normal tensors even when first built under inference_mode: a later training
            # step saves them for backward.
            with torch.inference_mode(False), torch.no_grad():
                w = self.weight.detach().to(torch.bfloat16)
                b = None if self.bias is None else self.bias.detach().to(torch.bfloat16)
            cached = (key, w, b)
            remember(self, BF16_WEIGHTS, cached)
        return cached[1], cached[2]

    def _operands(self, x: torch.Tensor):
        """(x, w, b) for oneDNN, cast as autocast would; None where nn.Linear must serve."""
        w, b = self.weight, self.bias
        if not (
            recall(self, LINEAR_FAST, True)
            and x.device.type == "cpu"
            and w.device.type == "cpu"
            and not w.requires_grad
            and (b is None or not b.requires_grad)
            and x.dim() >= 2
            and x.shape[-1] == w.shape[1]
        ):
            return None
        if (
            torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16
            and x.dtype in (torch.float32, torch.bfloat16)
        ):
            if not onednn_bf16_available():
                return None  # torch's own autocast linear works on every CPU
            w, b = self._bf16_weights()
            x = x.to(torch.bfloat16)
        elif x.dtype != torch.float32 or w.dtype != torch.float32:
            return None
        if not cpu_paths.use_onednn_linear():
            return None
        return x.contiguous(), w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ops = self._operands(x)
        if ops is None:
            return super().forward(x)
        x, w, b = ops
        with torch.autocast("cpu", enabled=False):
            if torch.is_grad_enabled() and x.requires_grad:
                return _FrozenLinearFunction.apply(x, w, b)
            return _linear(x, w, b)

    def forward_gelu(self, x: torch.Tensor) -> torch.Tensor:
        """gelu(self(x)) (exact, erf GELU); without a gradient to carry, the GELU runs as a
        oneDNN post-op inside the GEMM, on the fp32 accumulator."""
        ops = self._operands(x)
        if ops is None or (torch.is_grad_enabled() and x.requires_grad):
            return F.gelu(self(x))
        x, w, b = ops
        with torch.autocast("cpu", enabled=False):
            return _linear(x, w, b, "gelu")


def prepare_frozen_linears(module: nn.Module) -> int:
    """Makes every nn.Linear of `module` a FrozenLinear in place; returns how many. A no-op
    without oneDNN."""
    return swap_classes(module, nn.Linear, FrozenLinear) if onednn_available() else 0


def set_frozen_linears_fast(module: nn.Module, fast: bool) -> None:
    """fast=False: every FrozenLinear of `module` runs nn.Linear's own forward again."""
    for m in module.modules():
        if isinstance(m, FrozenLinear):
            remember(m, LINEAR_FAST, fast)
