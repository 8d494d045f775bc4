"""The few-row GEMMs of the prompt-encoder MLP against torch.mm in float64, over sizes that hit
every block and tail of the loops: float32 (csrc/cpu/skinny_gemm.cpp) and bfloat16
(csrc/cpu/skinny_gemm_bf16.cpp, on CPUs with AVX512-BF16; elsewhere bf16 goes to ATen)."""

import os
import re

import pytest
import torch

from xpe_fast import _extension

pytestmark = pytest.mark.skipif(_extension._C is None, reason="the C++ extension is not built")

# M up to 64 (the MLP's rows); K and N around the 16-wide vectors and 64-column blocks.
SIZES = [
    (1, 1, 1),
    (3, 5, 7),
    (4, 16, 16),
    (20, 1024, 256),
    (20, 256, 1024),
    (7, 203, 145),
    (13, 64, 65),
    (64, 33, 130),
    (5, 0, 9),
    (17, 31, 1),
    (21, 7, 2048),  # tn with rows 4 KB apart: the packed variant
    (20, 256, 1024),
    (2, 129, 97),
    (9, 2, 31),
]  # bf16: odd K (a lone last pair), column tails


def close(out, exact, K):
    # fp32 accumulation over K terms: error grows with sqrt(K) times the magnitudes
    assert out.shape == exact.shape and out.dtype == torch.float32
    if exact.numel() == 0:
        return
    tol = 1e-6 * max(1.0, K) ** 0.5 * max(1.0, exact.abs().max().item())
    assert (out.double() - exact).abs().max().item() <= tol * 4


@pytest.mark.parametrize("M,K,N", SIZES)
def test_nt_nn_tn_match_float64(M, K, N):
    C = _extension._C
    g = torch.Generator().manual_seed(M * 10000 + K * 100 + N)
    a = torch.randn(M, K, generator=g)
    w = torch.randn(N, K, generator=g)
    bias = torch.randn(N, generator=g)
    b = torch.randn(K, N, generator=g)
    close(C.skinny_gemm_nt(a, w, bias), torch.addmm(bias.double(), a.double(), w.double().t()), K)
    close(C.skinny_gemm_nt(a, w), a.double() @ w.double().t(), K)
    close(C.skinny_gemm_nn(a, b), a.double() @ b.double(), K)
    h = torch.randn(M, N, generator=g)
    close(C.skinny_gemm_tn(a, h), a.double().t() @ h.double(), M)


def close_bf16(out, exact, K):
    # One rounding to bf16 (half an ulp, 2^-9 relative) of a float32 sum, whose own error can
    # move a value across a rounding boundary: allow one ulp, plus the float32 error.
    assert out.shape == exact.shape and out.dtype == torch.bfloat16
    if exact.numel() == 0:
        return
    tol = 2.0**-8 * exact.abs() + 1e-6 * max(1.0, K) ** 0.5 * max(1.0, exact.abs().max().item())
    err = (out.double() - exact).abs()
    assert (err <= tol).all(), f"max error {err.max().item()} (at {err.argmax().item()})"


@pytest.mark.parametrize("M,K,N", SIZES)
def test_bf16_nt_nn_tn_match_float64(M, K, N):
    C = _extension._C
    g = torch.Generator().manual_seed(M * 10000 + K * 100 + N + 1)
    a, w, b, h = (torch.randn(*s, generator=g).bfloat16() for s in [(M, K), (N, K), (K, N), (M, N)])
    bias = torch.randn(N, generator=g).bfloat16()
    A, Wd, B, H, bd = (t.double() for t in (a, w, b, h, bias))
    close_bf16(C.skinny_gemm_nt(a, w, bias), torch.addmm(bd, A, Wd.t()), K)
    close_bf16(C.skinny_gemm_nt(a, w), A @ Wd.t(), K)
    close_bf16(C.skinny_gemm_nn(a, b), A @ B, K)
    close_bf16(C.skinny_gemm_tn(a, h), A.t() @ H, M)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "M,N1,N2,N",
    [
        (20, 1024, 256, 1024),
        (20, 256, 1024, 256),
        (7, 5, 3, 130),
        (1, 1, 1, 1),
        (13, 67, 129, 65),
        (4, 0, 3, 5),
    ],
)
def test_tn_nn_together_match_float64(M, N1, N2, N, dtype, threads):
    """The backward's two GEMMs in one parallel region (blocks of both split among threads by
    FLOPs): the same results as apart, at every split."""
    C = _extension._C
    g = torch.Generator().manual_seed(M + N1 + N2 + N)
    a, h, b = (torch.randn(*s, generator=g).to(dtype) for s in [(M, N1), (M, N2), (N1, N)])
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        c1, c2 = C.skinny_gemm_tn_nn(a, h, b)
    finally:
        torch.set_num_threads(old)
    check = close if dtype == torch.float32 else close_bf16
    check(c1, a.double().t() @ h.double(), M)
    check(c2, a.double() @ b.double(), N1)
    with pytest.raises(ValueError, match="inner sizes differ"):
        C.skinny_gemm_tn_nn(a, h, torch.randn(N1 + 1, N).to(dtype))


def test_bf16_kernels_are_the_ones_tested_here():
    """Where the CPU has AVX512-BF16 the bf16 test above exercises the hand-written loops (level
    3), not ATen's fallback; say so when it does not."""
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    if not re.search(r"\bavx512_bf16\b", flags):
        pytest.skip("this CPU has no AVX512-BF16: bf16 GEMMs run ATen's mm")
    if os.environ.get("XPE_FAST_CPU_ISA"):
        pytest.skip("XPE_FAST_CPU_ISA limits the level")
    assert _extension._C.cpu_isa_level() == 3


def test_bad_inputs_raise():
    C = _extension._C
    a = torch.randn(4, 8)
    with pytest.raises(ValueError, match="contiguous 2-D float32"):
        C.skinny_gemm_nn(a.double(), torch.randn(8, 3))
    with pytest.raises(ValueError, match="contiguous 2-D float32"):
        C.skinny_gemm_nn(a.t(), torch.randn(4, 3))
    with pytest.raises(ValueError, match="inner sizes differ"):
        C.skinny_gemm_nn(a, torch.randn(7, 3))
    with pytest.raises(ValueError, match="inner sizes differ"):
        C.skinny_gemm_nt(a, torch.randn(3, 7))
    with pytest.raises(ValueError, match="inner sizes differ"):
        C.skinny_gemm_tn(a, torch.randn(5, 3))
    with pytest.raises(ValueError, match="bias must be"):
        C.skinny_gemm_nt(a, torch.randn(3, 8), torch.randn(4))
    with pytest.raises(ValueError, match="bias must be"):
        C.skinny_gemm_nt(a, torch.randn(3, 8), torch.randn(3).bfloat16())
    with pytest.raises(TypeError, match="first operand"):
        C.skinny_gemm_nn(a.bfloat16(), torch.randn(8, 3))
    with pytest.raises(TypeError, match="first operand"):
        C.skinny_gemm_tn(a, torch.randn(4, 3).bfloat16())
