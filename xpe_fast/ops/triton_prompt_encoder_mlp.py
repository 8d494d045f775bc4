"""Triton kernels of the prompt-encoder MLP (the GPU path; CPU under TRITON_INTERPRET=1).

One strided matmul kernel with fused epilogues serves every product of forward and backward:
- forward:  h = relu(x @ W^T + b) * mask            (EPILOGUE_RELU_MASK)
- backward: g_prev = relu_dropout_grad(g @ W, h, m)  (EPILOGUE_RELU_GRAD)
            gW = g^T @ h                             (plain, through strides)
Bias gradients are column sums (a small reduction kernel). Operands are upcast to fp32
before tl.dot (bf16 dots are wrong under the interpreter) and accumulate in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_rounding import to_output

EPI_NONE, EPI_RELU_MASK, EPI_RELU_GRAD = 0, 1, 2


@triton.jit
def _matmul_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    bias_ptr,
    m_ptr,
    h_ptr,
    M,
    N,
    K,
    s_am,
    s_ak,
    s_bk,
    s_bn,
    HAS_BIAS: tl.constexpr,
    HAS_MASK: tl.constexpr,
    EPILOGUE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        a = tl.load(
            a_ptr + rm[:, None] * s_am + kk[None, :] * s_ak,
            mask=(rm[:, None] < M) & (kk[None, :] < K),
            other=0.0,
        ).to(tl.float32)
        b = tl.load(
            b_ptr + kk[:, None] * s_bk + rn[None, :] * s_bn,
            mask=(kk[:, None] < K) & (rn[None, :] < N),
            other=0.0,
        ).to(tl.float32)
        acc += tl.dot(a, b, input_precision="ieee")
    cmask = (rm[:, None] < M) & (rn[None, :] < N)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    offs = rm[:, None] * N + rn[None, :]
    if EPILOGUE == 1:  # relu, then the scaled dropout keep-mask
        acc = tl.where(acc > 0, acc, 0.0)
        if HAS_MASK:
            acc = acc * tl.load(m_ptr + offs, mask=cmask, other=0.0).to(tl.float32)
    if EPILOGUE == 2:  # gradient through dropout and relu, from the saved output h
        h = tl.load(h_ptr + offs, mask=cmask, other=0.0).to(tl.float32)
        if HAS_MASK:
            acc = acc * tl.load(m_ptr + offs, mask=cmask, other=0.0).to(tl.float32)
        acc = tl.where(h > 0, acc, 0.0)
    tl.store(c_ptr + offs, to_output(acc, c_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def _colsum_kernel(g_ptr, out_ptr, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        rm = m0 + tl.arange(0, BLOCK_M)
        g = tl.load(
            g_ptr + rm[:, None] * N + rn[None, :],
            mask=(rm[:, None] < M) & (rn[None, :] < N),
            other=0.0,
        ).to(tl.float32)
        acc += tl.sum(g, axis=0)
    tl.store(out_ptr + rn, to_output(acc, out_ptr.dtype.element_ty), mask=rn < N)


_BM, _BN, _BK = 32, 64, 64


def _mm(a, b, *, bias=None, mask=None, h=None, epilogue=EPI_NONE, dtype=None):
    """c = epilogue(a @ b [+ bias]) for 2-D views a [M, K] and b [K, N] of any strides."""
    M, K = a.shape
    N = b.shape[1]
    c = torch.empty((M, N), dtype=dtype or a.dtype, device=a.device)
    dummy = c
    grid = (triton.cdiv(M, _BM), triton.cdiv(N, _BN))
    _matmul_kernel[grid](
        a,
        b,
        c,
        bias if bias is not None else dummy,
        mask if mask is not None else dummy,
        h if h is not None else dummy,
        M,
        N,
        K,
        a.stride(0),
        a.stride(1),
        b.stride(0),
        b.stride(1),
        HAS_BIAS=bias is not None,
        HAS_MASK=mask is not None,
        EPILOGUE=epilogue,
        BLOCK_M=_BM,
        BLOCK_N=_BN,
        BLOCK_K=_BK,
    )
    return c


def _colsum(g):
    M, N = g.shape
    out = torch.empty((N,), dtype=g.dtype, device=g.device)
    _colsum_kernel[(triton.cdiv(N, 128),)](g, out, M, N, BLOCK_M=32, BLOCK_N=128)
    return out


def _c(t):
    return None if t is None else (t if t.is_contiguous() else t.contiguous())


def prompt_encoder_mlp_forward(x, w1, b1, w2, b2, w3, b3, mask1=None, mask2=None):
    x, w1, b1, w2, b2, w3, b3, mask1, mask2 = map(_c, (x, w1, b1, w2, b2, w3, b3, mask1, mask2))
    h1 = _mm(x, w1.t(), bias=b1, mask=mask1, epilogue=EPI_RELU_MASK)
    h2 = _mm(h1, w2.t(), bias=b2, mask=mask2, epilogue=EPI_RELU_MASK)
    out = _mm(h2, w3.t(), bias=b3)
    return out, h1, h2


def prompt_encoder_mlp_backward(grad_out, x, w1, w2, w3, h1, h2, mask1=None, mask2=None):
    g, x, w1, w2, w3, h1, h2, mask1, mask2 = map(
        _c, (grad_out, x, w1, w2, w3, h1, h2, mask1, mask2)
    )
    gw3 = _mm(g.t(), h2)
    gb3 = _colsum(g)
    g2 = _mm(g, w3, mask=mask2, h=h2, epilogue=EPI_RELU_GRAD)
    gw2 = _mm(g2.t(), h1)
    gb2 = _colsum(g2)
    g1 = _mm(g2, w2, mask=mask1, h=h1, epilogue=EPI_RELU_GRAD)
    gw1 = _mm(g1.t(), x)
    gb1 = _colsum(g1)
    gx = _mm(g1, w1)
    return [gx, gw1, gb1, gw2, gb2, gw3, gb3]
