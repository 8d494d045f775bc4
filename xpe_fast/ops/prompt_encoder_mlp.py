"""prompt_encoder_mlp: Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear over x [N, d_in].

A torch.library custom op (fake implementation for torch.compile) whose forward and backward
are each one call into the chosen backend; in eager mode on the CPU backend, the autograd
Function itself is C++ (csrc/cpu/prompt_encoder_mlp.cpp, MlpFunction). Dropout masks are drawn
in Python through
`reference.dropout_masks`, so every backend and the eager reference use the same masks under
the same seed, and backward reuses the forward's masks.
"""

from __future__ import annotations

import torch

from .. import _extension
from ..reference import dropout_masks, prompt_encoder_mlp_reference
from ._backend import resolve_backend
from ._validate import check_mlp_inputs


def _impl(backend: str):
    if backend == "cpu":
        return _extension._C
    if backend == "cuda":
        return _extension._cuda
    from . import triton_prompt_encoder_mlp as tk

    return tk


@torch.library.custom_op("xpe_fast::prompt_encoder_mlp", mutates_args=())
def _mlp_op(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    w3: torch.Tensor,
    b3: torch.Tensor,
    mask1: torch.Tensor | None,
    mask2: torch.Tensor | None,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    out, h1, h2 = _impl(backend).prompt_encoder_mlp_forward(x, w1, b1, w2, b2, w3, b3, mask1, mask2)
    return out, h1, h2


@_mlp_op.register_fake
def _(x, w1, b1, w2, b2, w3, b3, mask1, mask2, backend):
    n = x.shape[0]
    return (
        x.new_empty((n, w3.shape[0])),
        x.new_empty((n, w1.shape[0])),
        x.new_empty((n, w2.shape[0])),
    )


@torch.library.custom_op("xpe_fast::prompt_encoder_mlp_backward", mutates_args=())
def _mlp_backward_op(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    w3: torch.Tensor,
    h1: torch.Tensor,
    h2: torch.Tensor,
    mask1: torch.Tensor | None,
    mask2: torch.Tensor | None,
    backend: str,
) -> list[torch.Tensor]:
    return list(
        _impl(backend).prompt_encoder_mlp_backward(grad_out, x, w1, w2, w3, h1, h2, mask1, mask2)
    )


@_mlp_backward_op.register_fake
def _(grad_out, x, w1, w2, w3, h1, h2, mask1, mask2, backend):
    h, d = w1.shape[0], w3.shape[0]
    return [
        torch.empty_like(x),
        torch.empty_like(w1),
        w1.new_empty((h,)),
        torch.empty_like(w2),
        w2.new_empty((h,)),
        torch.empty_like(w3),
        w3.new_empty((d,)),
    ]


def _setup_context(ctx, inputs, output):
    x, w1, _b1, w2, _b2, w3, _b3, mask1, mask2, backend = inputs
    _out, h1, h2 = output
    ctx.save_for_backward(x, w1, w2, w3, h1, h2, mask1, mask2)
    ctx.backend = backend


def _backward(ctx, grad_out, _grad_h1, _grad_h2):
    # h1 and h2 are outputs only so that backward can reuse them; nothing downstream uses them.
    x, w1, w2, w3, h1, h2, mask1, mask2 = ctx.saved_tensors
    gx, gw1, gb1, gw2, gb2, gw3, gb3 = _mlp_backward_op(
        grad_out.contiguous(), x, w1, w2, w3, h1, h2, mask1, mask2, ctx.backend
    )
    return gx, gw1, gb1, gw2, gb2, gw3, gb3, None, None, None


_mlp_op.register_autograd(_backward, setup_context=_setup_context)


class _MLPFunction(torch.autograd.Function):
    """The same forward/backward as the custom op, for eager mode: torch.library's dispatch
    costs about 0.5 ms per call on the CPU, as much as the whole MLP at the paper's size."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, w3, b3, mask1, mask2, backend):
        out, h1, h2 = _impl(backend).prompt_encoder_mlp_forward(
            x, w1, b1, w2, b2, w3, b3, mask1, mask2
        )
        ctx.save_for_backward(x, w1, w2, w3, h1, h2, mask1, mask2)
        ctx.backend = backend
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, w1, w2, w3, h1, h2, mask1, mask2 = ctx.saved_tensors
        grads = _impl(ctx.backend).prompt_encoder_mlp_backward(
            grad_out.contiguous(), x, w1, w2, w3, h1, h2, mask1, mask2
        )
        return (*grads, None, None, None)


def prompt_encoder_mlp(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    w3: torch.Tensor,
    b3: torch.Tensor,
    dropout_p: float = 0.0,
    training: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """The prompt-encoder MLP of XPE: [N, d_in] -> [N, d].

    Weights are in nn.Linear's [out, in] layout: w1 [h, d_in], w2 [h, h], w3 [d, h]. Dropout
    (probability `dropout_p`) follows each ReLU when `training`. Backward gives the gradients
    of x and of all six weights.
    """
    backend = resolve_backend(backend, x.device)
    if not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"dropout_p must be in [0, 1], got {dropout_p}")
    if backend in ("reference", "triton"):
        check_mlp_inputs(x, w1, b1, w2, b2, w3, b3)
    masks = (None, None)
    if training and dropout_p > 0.0:
        masks = dropout_masks(x.shape[0], w1.shape[0], dropout_p, x.device, x.dtype)
    if backend == "reference":
        return prompt_encoder_mlp_reference(
            x,
            w1,
            b1,
            w2,
            b2,
            w3,
            b3,
            dropout_p,
            training,
            masks=masks if masks[0] is not None else None,
        )
    if torch.compiler.is_compiling():  # the custom op (with its fake) is what compile traces
        return _mlp_op(x, w1, b1, w2, b2, w3, b3, masks[0], masks[1], backend)[0]
    if backend == "cpu":  # the same Function in C++: Python's apply costs ~4 us more a call
        return _extension._C.prompt_encoder_mlp_autograd(x, w1, b1, w2, b2, w3, b3, *masks)
    return _MLPFunction.apply(x, w1, b1, w2, b2, w3, b3, masks[0], masks[1], backend)
