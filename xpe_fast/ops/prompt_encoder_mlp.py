"""prompt_encoder_mlp: Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear over x [N, d_in].

The dispatcher op `torch.ops.xpe_fast.prompt_encoder_mlp` (schema in csrc/schema.cpp) returns
(out, h1, h2) and its backward op the seven gradients; its kernels are C++ (CPU, CUDA) or
Triton (triton_prompt_encoder_mlp.py), its autograd is C++ (csrc/autograd.cpp) for every
backend. Here: the fake kernels for torch.compile, the argument checks of the Python-side
backends, and the public function. Dropout masks are drawn in Python through
`reference.dropout_masks`, so every backend and the eager reference use the same masks under
the same seed, and backward reuses the forward's masks.
"""

from __future__ import annotations

import torch

from .. import _extension
from ..reference import dropout_masks, prompt_encoder_mlp_reference
from ._backend import resolve_backend
from ._validate import check_mlp_inputs


def _check_mlp_shapes(x, w1, b1, w2, b2, w3, b3, mask1, mask2) -> None:
    """The fake kernel's checks (as the C++ kernel's): nn.Linear layouts that chain."""
    torch._check(x.dim() == 2, lambda: f"x must be [N, d_in], got {x.shape}")
    n, d_in = x.shape
    h, d = w1.shape[0], w3.shape[0]
    torch._check(tuple(w1.shape) == (h, d_in), lambda: f"w1 must be [h, {d_in}], got {w1.shape}")
    torch._check(tuple(w2.shape) == (h, h), lambda: f"w2 must be [{h}, {h}], got {w2.shape}")
    torch._check(tuple(w3.shape) == (d, h), lambda: f"w3 must be [d, {h}], got {w3.shape}")
    for name, b, size in (("b1", b1, h), ("b2", b2, h), ("b3", b3, d)):
        torch._check(tuple(b.shape) == (size,), lambda: f"{name} must be [{size}], got {b.shape}")
    for m in (mask1, mask2):
        torch._check(m is None or tuple(m.shape) == (n, h), lambda: f"masks must be [{n}, {h}]")


def mlp_fake(x, w1, b1, w2, b2, w3, b3, mask1=None, mask2=None):
    """The forward's fake kernel (xpe_fast's op and the Triton op alike)."""
    n = x.shape[0]
    _check_mlp_shapes(x, w1, b1, w2, b2, w3, b3, mask1, mask2)
    return (
        x.new_empty((n, w3.shape[0])),
        x.new_empty((n, w1.shape[0])),
        x.new_empty((n, w2.shape[0])),
    )


def mlp_backward_fake(grad_out, x, w1, w2, w3, h1, h2, mask1=None, mask2=None):
    """The backward's fake kernel: contiguous gradients, whatever the inputs' strides (as the
    kernels return them)."""
    h, d = w1.shape[0], w3.shape[0]
    return [
        x.new_empty(x.shape),
        w1.new_empty(w1.shape),
        w1.new_empty((h,)),
        w2.new_empty(w2.shape),
        w2.new_empty((h,)),
        w3.new_empty(w3.shape),
        w3.new_empty((d,)),
    ]


if _extension.has_cpu_kernels():
    torch.library.register_fake("xpe_fast::prompt_encoder_mlp")(mlp_fake)
    torch.library.register_fake("xpe_fast::prompt_encoder_mlp_backward")(mlp_backward_fake)


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
    masks: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The prompt-encoder MLP of XPE: [N, d_in] -> [N, d].

    Weights are in nn.Linear's [out, in] layout: w1 [h, d_in], w2 [h, h], w3 [d, h]. Dropout
    (probability `dropout_p`) follows each ReLU when `training`: with the two scaled
    keep-masks [N, h] in `masks` where given (e.g. drawn per sample), else drawn here.
    Backward gives the gradients of x and of all six weights.
    """
    backend = resolve_backend(backend, x.device)
    if not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"dropout_p must be in [0, 1], got {dropout_p}")
    if backend in ("reference", "triton"):  # the C++ kernels validate for themselves
        check_mlp_inputs(x, w1, b1, w2, b2, w3, b3)
    if not (training and dropout_p > 0.0):
        masks = (None, None)
    elif masks is None:
        masks = dropout_masks(x.shape[0], w1.shape[0], dropout_p, x.device, x.dtype)
    else:
        want = (x.shape[0], w1.shape[0])
        if len(masks) != 2 or any(tuple(m.shape) != want for m in masks):
            raise ValueError(f"masks must be two keep-masks of shape {want}")
        masks = tuple(m.to(x.dtype) for m in masks)
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
    if backend == "triton":
        from . import triton_ops

        return triton_ops.prompt_encoder_mlp(x, w1, b1, w2, b2, w3, b3, *masks)[0]
    return torch.ops.xpe_fast.prompt_encoder_mlp.default(x, w1, b1, w2, b2, w3, b3, *masks)[0]
