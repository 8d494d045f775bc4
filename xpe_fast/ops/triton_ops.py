"""The Triton kernels as dispatcher ops of their own, `torch.ops.xpe_fast_triton.*`, with the
autograd of xpe_fast's ops (csrc/autograd.cpp) written once more here for them.

Choosing backend="triton" calls these ops; the kernels of `torch.ops.xpe_fast.*` (C++ on the
CPU, CUDA) are never swapped, so two models with different backends can run interleaved in
one process, each on its own kernels. The ops run on any device Triton runs on (a GPU, or
the CPU under TRITON_INTERPRET=1); their fake kernels check shapes as xpe_fast's do.
"""

import torch

from .prompt_encoder_mlp import mlp_backward_fake, mlp_fake

Tensor = torch.Tensor


# ---- prompt_encoder_mlp -------------------------------------------------------------------


@torch.library.custom_op("xpe_fast_triton::prompt_encoder_mlp", mutates_args=())
def prompt_encoder_mlp(
    x: Tensor,
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
    w3: Tensor,
    b3: Tensor,
    mask1: Tensor | None = None,
    mask2: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    from .triton_prompt_encoder_mlp import prompt_encoder_mlp_forward

    return prompt_encoder_mlp_forward(x, w1, b1, w2, b2, w3, b3, mask1, mask2)


prompt_encoder_mlp.register_fake(mlp_fake)


@torch.library.custom_op("xpe_fast_triton::prompt_encoder_mlp_backward", mutates_args=())
def prompt_encoder_mlp_backward(
    grad_out: Tensor,
    x: Tensor,
    w1: Tensor,
    w2: Tensor,
    w3: Tensor,
    h1: Tensor,
    h2: Tensor,
    mask1: Tensor | None = None,
    mask2: Tensor | None = None,
) -> list[Tensor]:
    from .triton_prompt_encoder_mlp import prompt_encoder_mlp_backward as backward

    return backward(grad_out, x, w1, w2, w3, h1, h2, mask1, mask2)


prompt_encoder_mlp_backward.register_fake(mlp_backward_fake)


def _mlp_setup(ctx, inputs, output):
    x, w1, _b1, w2, _b2, w3, _b3, mask1, mask2 = inputs
    _, h1, h2 = output
    ctx.save_for_backward(x, w1, w2, w3, h1, h2)
    ctx.masks = (mask1, mask2)
    ctx.mark_non_differentiable(h1, h2)  # outputs only so that backward can reuse them


def _mlp_backward(ctx, grad_out, _g1, _g2):
    x, w1, w2, w3, h1, h2 = ctx.saved_tensors
    g = prompt_encoder_mlp_backward(grad_out.contiguous(), x, w1, w2, w3, h1, h2, *ctx.masks)
    return (*g, None, None)


prompt_encoder_mlp.register_autograd(_mlp_backward, setup_context=_mlp_setup)


# ---- assemble_embeddings ------------------------------------------------------------------


@torch.library.custom_op("xpe_fast_triton::assemble_embeddings", mutates_args=())
def assemble_embeddings(
    input_ids: Tensor,
    prompt: Tensor,
    word: Tensor,
    pos: Tensor,
    typ: Tensor,
    ln_w: Tensor,
    ln_b: Tensor,
    eps: float,
    position_offset: int,
) -> Tensor:
    from .triton_assemble_embeddings import assemble_embeddings_forward

    return assemble_embeddings_forward(
        input_ids, prompt, word, pos, typ, ln_w, ln_b, eps, position_offset
    )


@assemble_embeddings.register_fake
def _(input_ids, prompt, word, pos, typ, ln_w, ln_b, eps, position_offset):
    B, L = input_ids.shape
    N, d = prompt.shape[-2:]
    return prompt.new_empty((B, N + L, d))


@torch.library.custom_op("xpe_fast_triton::assemble_embeddings_backward", mutates_args=())
def assemble_embeddings_backward(
    grad_out: Tensor,
    prompt: Tensor,
    pos: Tensor,
    typ: Tensor,
    ln_w: Tensor,
    eps: float,
    position_offset: int,
    seq_len: int,
) -> Tensor:
    from .triton_assemble_embeddings import assemble_embeddings_backward as backward

    return backward(grad_out, prompt, pos, typ, ln_w, eps, position_offset, seq_len)


@assemble_embeddings_backward.register_fake
def _(grad_out, prompt, pos, typ, ln_w, eps, position_offset, seq_len):
    return prompt.new_empty(prompt.shape)


def _assemble_setup(ctx, inputs, output):
    input_ids, prompt, _word, pos, typ, ln_w, _ln_b, eps, offset = inputs
    ctx.save_for_backward(prompt, pos, typ, ln_w)
    ctx.eps, ctx.offset, ctx.seq_len = eps, offset, input_ids.shape[1]


def _assemble_backward(ctx, grad_out):
    prompt, pos, typ, ln_w = ctx.saved_tensors
    g = assemble_embeddings_backward(
        grad_out.contiguous(), prompt, pos, typ, ln_w, ctx.eps, ctx.offset, ctx.seq_len
    )
    return None, g, None, None, None, None, None, None, None


assemble_embeddings.register_autograd(_assemble_backward, setup_context=_assemble_setup)


# ---- dropout ----------------------------------------------------------------------------


@torch.library.custom_op("xpe_fast_triton::dropout", mutates_args=())
def dropout(x: Tensor, p: float, seed: int, offset: int = 0) -> Tensor:
    from .triton_dropout import dropout as kernel

    return kernel(x, p, seed, offset)


@dropout.register_fake
def _(x, p, seed, offset=0):
    return x.new_empty(x.shape)


def _dropout_setup(ctx, inputs, output):
    _, ctx.p, ctx.seed, ctx.offset = inputs


def _dropout_backward(ctx, grad):  # the same mask: the same op on the gradient
    return dropout(grad.contiguous(), ctx.p, ctx.seed, ctx.offset), None, None, None


dropout.register_autograd(_dropout_backward, setup_context=_dropout_setup)
