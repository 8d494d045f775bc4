"""Triton kernels of assemble_embeddings (the GPU path; runs on the CPU under TRITON_INTERPRET=1).

One program per output row: it reads the row's source (prompt row or word row), its position
row and the token-type row once, normalises in fp32 and writes once. Backward: one program
per prompt row; for a shared prompt it sums the incoming gradient over the batch first.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_rounding import to_output


@triton.jit
def _centered(src, pos_row_ptr, type_ptr, cols, mask, D, eps):
    """x = src + position row + type row; returns (x - mean, masked) and 1/std."""
    pos = tl.load(pos_row_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    typ = tl.load(type_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    x = (src + pos) + typ
    mean = tl.sum(x, axis=0) / D
    xc = tl.where(mask, x - mean, 0.0)
    var = tl.sum(xc * xc, axis=0) / D
    return xc, 1.0 / tl.sqrt(var + eps)


@triton.jit
def _assemble_fwd_kernel(
    ids_ptr,
    prompt_ptr,
    word_ptr,
    pos_ptr,
    type_ptr,
    w_ptr,
    b_ptr,
    out_ptr,
    L,
    N,
    D,
    offset,
    eps,
    SHARED: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64)
    S = N + L
    bi = r // S
    j = r % S
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    if j < N:
        if SHARED:
            src_row = j
        else:
            src_row = bi * N + j
        src = tl.load(prompt_ptr + src_row * D + cols, mask=mask, other=0.0).to(tl.float32)
    else:
        tok = tl.load(ids_ptr + bi * L + (j - N)).to(tl.int64)
        src = tl.load(word_ptr + tok * D + cols, mask=mask, other=0.0).to(tl.float32)
    xc, rstd = _centered(src, pos_ptr + (offset + j) * D, type_ptr, cols, mask, D, eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    y = xc * rstd * w + b
    tl.store(out_ptr + r * D + cols, to_output(y, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _assemble_bwd_kernel(
    gout_ptr,
    prompt_ptr,
    pos_ptr,
    type_ptr,
    w_ptr,
    gprompt_ptr,
    B,
    L,
    N,
    D,
    offset,
    eps,
    SHARED: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64)  # row of the prompt (and of its gradient)
    S = N + L
    j = r % N
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    if SHARED:
        g = tl.zeros([BLOCK_D], dtype=tl.float32)
        for bi in range(0, B):
            g += tl.load(gout_ptr + (bi * S + j) * D + cols, mask=mask, other=0.0).to(tl.float32)
    else:
        bi = r // N
        g = tl.load(gout_ptr + (bi * S + j) * D + cols, mask=mask, other=0.0).to(tl.float32)
    src = tl.load(prompt_ptr + r * D + cols, mask=mask, other=0.0).to(tl.float32)
    xc, rstd = _centered(src, pos_ptr + (offset + j) * D, type_ptr, cols, mask, D, eps)
    xhat = xc * rstd
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    gw = g * w
    mean_gw = tl.sum(gw, axis=0) / D
    mean_gwx = tl.sum(gw * xhat, axis=0) / D
    dx = rstd * (gw - mean_gw - xhat * mean_gwx)
    tl.store(gprompt_ptr + r * D + cols, to_output(dx, gprompt_ptr.dtype.element_ty), mask=mask)


def _c(t):
    return t if t.is_contiguous() else t.contiguous()


def assemble_embeddings_forward(input_ids, prompt, word, pos, typ, ln_w, ln_b, eps, offset):
    B, L = input_ids.shape
    N, D = prompt.shape[-2:]
    out = torch.empty((B, N + L, D), dtype=prompt.dtype, device=prompt.device)
    _assemble_fwd_kernel[(B * (N + L),)](
        _c(input_ids),
        _c(prompt),
        _c(word),
        _c(pos),
        _c(typ),
        _c(ln_w),
        _c(ln_b),
        out,
        L,
        N,
        D,
        offset,
        eps,
        SHARED=prompt.dim() == 2,
        BLOCK_D=triton.next_power_of_2(D),
    )
    return out


def assemble_embeddings_backward(grad_out, prompt, pos, typ, ln_w, eps, offset, seq_len):
    B = grad_out.shape[0]
    N, D = prompt.shape[-2:]
    shared = prompt.dim() == 2
    grad_prompt = torch.empty_like(prompt, memory_format=torch.contiguous_format)
    rows = N if shared else B * N
    _assemble_bwd_kernel[(rows,)](
        _c(grad_out),
        _c(prompt),
        _c(pos),
        _c(typ),
        _c(ln_w),
        grad_prompt,
        B,
        seq_len,
        N,
        D,
        offset,
        eps,
        SHARED=shared,
        BLOCK_D=triton.next_power_of_2(D),
    )
    return grad_prompt
