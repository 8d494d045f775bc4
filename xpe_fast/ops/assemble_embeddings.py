"""assemble_embeddings: prompt rows in front of the token embeddings, plus positions, token
type 0 and the embedding LayerNorm, in one pass (forward and backward).

The dispatcher op `torch.ops.xpe_fast.assemble_embeddings` (schema in csrc/schema.cpp) and its
backward op (the prompt's gradient, the only one); kernels in C++ (CPU, CUDA) or Triton
(triton_assemble_embeddings.py), autograd in C++ (csrc/autograd.cpp) for every backend.
Here: the fake kernels for torch.compile, the argument checks of the Python-side backends,
and the public function.
"""

from __future__ import annotations

import torch

from .. import _extension
from ..reference import assemble_embeddings_reference
from ._backend import resolve_backend
from ._validate import check_assemble_inputs

if _extension.has_cpu_kernels():

    @torch.library.register_fake("xpe_fast::assemble_embeddings")
    def _(input_ids, prompt, word, pos, typ, ln_w, ln_b, eps, position_offset):
        torch._check(
            input_ids.dim() == 2, lambda: f"input_ids must be [B, L], got {input_ids.shape}"
        )
        B, L = input_ids.shape
        torch._check(
            prompt.dim() in (2, 3),
            lambda: f"prompt must be [N, d] or [B, N, d], got {prompt.shape}",
        )
        N, d = prompt.shape[-2:]
        torch._check(
            prompt.dim() == 2 or prompt.shape[0] == B,
            lambda: f"a per-sample prompt needs {B} rows, got {prompt.shape[0]}",
        )
        torch._check(
            word.shape[-1] == d and pos.shape[-1] == d,
            lambda: f"word and position tables must be [*, {d}]",
        )
        torch._check(
            pos.shape[0] >= position_offset + N + L,
            lambda: (
                f"{N + L} slots from position {position_offset} exceed {pos.shape[0]} positions"
            ),
        )
        for name, t in (("token type row", typ), ("ln_weight", ln_w), ("ln_bias", ln_b)):
            torch._check(tuple(t.shape) == (d,), lambda: f"{name} must be [{d}], got {t.shape}")
        return prompt.new_empty((B, N + L, d))

    @torch.library.register_fake("xpe_fast::assemble_embeddings_backward")
    def _(grad_out, prompt, pos, typ, ln_w, eps, position_offset, seq_len):
        return prompt.new_empty(prompt.shape)


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
    op = torch.ops.xpe_fast.assemble_embeddings.default
    if backend == "triton":
        from . import triton_ops

        op = triton_ops.assemble_embeddings
    return op(
        input_ids,
        prompt,
        word_embeddings,
        position_embeddings,
        token_type_embedding,
        ln_weight,
        ln_bias,
        float(eps),
        int(position_offset),
    )
