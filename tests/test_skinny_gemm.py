"""The few-row float32 GEMMs of the prompt-encoder MLP (csrc/cpu/skinny_gemm.cpp) against
torch.mm in float64, over sizes that hit every block and tail of the loops."""
import pytest
import torch

from xpe_fast import _extension

pytestmark = pytest.mark.skipif(_extension._C is None, reason="the C++ extension is not built")

# M up to 64 (the MLP's rows); K and N around the 16-wide vectors and 64-column blocks.
SIZES = [(1, 1, 1), (3, 5, 7), (4, 16, 16), (20, 1024, 256), (20, 256, 1024), (7, 203, 145),
         (13, 64, 65), (64, 33, 130), (5, 0, 9), (17, 31, 1),
         (21, 7, 2048)]  # tn with rows 4 KB apart: the packed variant


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
