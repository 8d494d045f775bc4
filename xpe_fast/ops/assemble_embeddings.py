"""assemble_embeddings: prompt rows in front of the token embeddings, plus positions, token
type 0 and the embedding LayerNorm, in one pass (forward and backward).

The op is a torch.library custom op with a fake (meta) implementation, so torch.compile
traces around it, and an autograd formula that returns the prompt's gradient only.
"""

from __future__ import annotations

import torch

from .. import _extension
from ..reference import assemble_embeddings_reference
from ._backend import resolve_backend
from ._validate import check_assemble_inputs

_FROZEN_NAMES = (
    "word_embeddings",
    "position_embeddings",
    "token_type_embedding",
    "ln_weight",
    "ln_bias",
)


def _forward_impl(backend: str):
    if backend == "cpu":
        return _extension._C.assemble_embeddings_forward
    if backend == "cuda":
        return _extension._cuda.assemble_embeddings_forward
    from . import triton_assemble_embeddings as tk

    return tk.assemble_embeddings_forward


def _backward_impl(backend: str):
    if backend == "cpu":
        return _extension._C.assemble_embeddings_backward
    if backend == "cuda":
        return _extension._cuda.assemble_embeddings_backward
    from . import triton_assemble_embeddings as tk

    return tk.assemble_embeddings_backward


@torch.library.custom_op("xpe_fast::assemble_embeddings", mutates_args=())
def _assemble_op(
    input_ids: torch.Tensor,
    prompt: torch.Tensor,
    word_embeddings: torch.Tensor,
    position_embeddings: torch.Tensor,
    token_type_embedding: torch.Tensor,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    eps: float,
    position_offset: int,
    backend: str,
) -> torch.Tensor:
    return _forward_impl(backend)(
        input_ids,
        prompt,
        word_embeddings,
        position_embeddings,
        token_type_embedding,
        ln_weight,
        ln_bias,
        eps,
        position_offset,
    )


@_assemble_op.register_fake
def _(
    input_ids,
    prompt,
    word_embeddings,
    position_embeddings,
    token_type_embedding,
    ln_weight,
    ln_bias,
    eps,
    position_offset,
    backend,
):
    B, L = input_ids.shape
    N, d = prompt.shape[-2:]
    return prompt.new_empty((B, N + L, d))


@torch.library.custom_op("xpe_fast::assemble_embeddings_backward", mutates_args=())
def _assemble_backward_op(
    grad_out: torch.Tensor,
    prompt: torch.Tensor,
    position_embeddings: torch.Tensor,
    token_type_embedding: torch.Tensor,
    ln_weight: torch.Tensor,
    eps: float,
    position_offset: int,
    seq_len: int,
    backend: str,
) -> torch.Tensor:
    return _backward_impl(backend)(
        grad_out,
        prompt,
        position_embeddings,
        token_type_embedding,
        ln_weight,
        eps,
        position_offset,
        seq_len,
    )


@_assemble_backward_op.register_fake
def _(
    grad_out,
    prompt,
    position_embeddings,
    token_type_embedding,
    ln_weight,
    eps,
    position_offset,
    seq_len,
    backend,
):
    return torch.empty_like(prompt)


def _setup_context(ctx, inputs, output):
    (input_ids, prompt, _word, pos, typ, ln_w, _ln_b, eps, offset, backend) = inputs
    ctx.save_for_backward(prompt, pos, typ, ln_w)
    ctx.eps, ctx.offset, ctx.seq_len, ctx.backend = eps, offset, input_ids.shape[1], backend


def _backward_with(kernel, ctx, grad_out):
    prompt, pos, typ, ln_w = ctx.saved_tensors
    grad_prompt = None
    if ctx.needs_input_grad[1]:
        grad_prompt = kernel(
            grad_out.contiguous(), prompt, pos, typ, ln_w, ctx.eps, ctx.offset, ctx.seq_len
        )
    return None, grad_prompt, None, None, None, None, None, None, None, None


def _backward(ctx, grad_out):  # the custom op's (what torch.compile traces)
    return _backward_with(lambda *a: _assemble_backward_op(*a, ctx.backend), ctx, grad_out)


_assemble_op.register_autograd(_backward, setup_context=_setup_context)


class _AssembleFunction(torch.autograd.Function):
    """The same forward/backward as the custom op, for eager mode, without torch.library's
    per-call dispatch cost."""

    @staticmethod
    def forward(ctx, input_ids, prompt, word, pos, typ, ln_w, ln_b, eps, offset, backend):
        out = _forward_impl(backend)(input_ids, prompt, word, pos, typ, ln_w, ln_b, eps, offset)
        ctx.save_for_backward(prompt, pos, typ, ln_w)
        ctx.eps, ctx.offset, ctx.seq_len, ctx.backend = eps, offset, input_ids.shape[1], backend
        return out

    @staticmethod
    def backward(ctx, grad_out):
        # The backend's kernel directly: the custom op's dispatch costs ~12 us a call.
        return _backward_with(_backward_impl(ctx.backend), ctx, grad_out)


def assemble_embeddings(
    input_ids: torch.Tensor,
    prompt: torch.Tensor,
    word_embeddings: torch.Tensor,
    position_embeddings: torch.Tensor,
    token_type_embedding: torch.Tensor,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    eps: float,
    position_offset: int,
    backend: str | None = None,
) -> torch.Tensor:
    """LayerNorm(prompt rows ++ word_embeddings[input_ids] + positions + token type 0).

    Args:
        input_ids: [B, L] int64 token ids, each in [0, V).
        prompt: [N, d] (the same rows for every sample) or [B, N, d].
        word_embeddings: [V, d]; position_embeddings: [P, d]; token_type_embedding: [d] (the
            row of token type 0); ln_weight, ln_bias: [d]. All frozen: only the prompt gets a
            gradient, and asking for any other raises.
        eps: the LayerNorm epsilon.
        position_offset: position of slot 0 (2 = padding_idx + 1 for XLM-R/RoBERTa, 0 for
            BERT); slot j uses position row position_offset + j, prompt rows included.
        backend: "reference", "cpu", "triton", "cuda" or None (best for the device; the
            XPE_FAST_BACKEND environment variable overrides that default).

    Returns:
        [B, N + L, d] in the prompt's dtype.
    """
    backend = resolve_backend(backend, prompt.device)
    if backend in ("reference", "triton"):  # the C++/CUDA entry points validate for themselves
        check_assemble_inputs(
            input_ids,
            prompt,
            word_embeddings,
            position_embeddings,
            token_type_embedding,
            ln_weight,
            ln_bias,
            eps,
            position_offset,
        )
    if backend == "reference":
        return assemble_embeddings_reference(
            input_ids,
            prompt,
            word_embeddings,
            position_embeddings,
            token_type_embedding,
            ln_weight,
            ln_bias,
            eps,
            position_offset,
        )
    if torch.is_grad_enabled():
        frozen = (word_embeddings, position_embeddings, token_type_embedding, ln_weight, ln_bias)
        for name, t in zip(_FROZEN_NAMES, frozen):
            if isinstance(t, torch.Tensor) and t.requires_grad:
                raise ValueError(
                    f"assemble_embeddings (backend {backend!r}) computes the gradient of the "
                    f"prompt only, but {name} requires grad: freeze or detach it, or use "
                    "backend='reference'"
                )
    args = (
        input_ids,
        prompt,
        word_embeddings,
        position_embeddings,
        token_type_embedding,
        ln_weight,
        ln_bias,
        float(eps),
        int(position_offset),
        backend,
    )
    if torch.compiler.is_compiling():  # the custom op (with its fake) is what compile traces
        return _assemble_op(*args)
    if backend == "cpu":  # the same Function in C++ (csrc/cpu/assemble_embeddings.cpp)
        return _extension._C.assemble_embeddings_autograd(*args[:-1])
    return _AssembleFunction.apply(*args)
