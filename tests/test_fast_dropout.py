"""The backbone's dropout with counter-based masks (fast_dropout, torch.ops.xpe_fast.dropout)."""

import pytest
import torch
import torch.nn.functional as F

from xpe_fast import _extension
from xpe_fast import fast_dropout as FD

pytestmark = pytest.mark.skipif(_extension._C is None, reason="the C++ extension is not built")
DTYPES = [torch.float32, torch.float64, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_scale_and_backward_mask(p, dtype):
    torch.manual_seed(0)
    n = 1 << 20
    x = (torch.rand(n, dtype=torch.float64) + 0.5).to(dtype).requires_grad_()
    y = FD.dropout(x, p)
    kept = y != 0
    rate = kept.double().mean().item()
    sigma = ((1 - p) * p / n) ** 0.5
    assert abs(rate - (1 - p)) < 6 * sigma, (rate, 1 - p)
    scale = 1.0 / (1.0 - p)
    expect = (x.detach().float() * torch.tensor(scale, dtype=torch.float32)).to(dtype)
    torch.testing.assert_close(
        y[kept].detach(), expect[kept], rtol=0, atol=0
    ) if dtype != torch.float64 else torch.testing.assert_close(
        y[kept].detach(), x.detach()[kept] * scale
    )
    g = torch.randn(n, dtype=torch.float64).to(dtype)
    (gx,) = torch.autograd.grad(y, x, g)
    assert torch.equal(gx != 0, kept & (g != 0))  # the forward's mask, recomputed


def test_masks_are_fresh_per_call_and_follow_the_seed():
    x = torch.ones(4096)
    torch.manual_seed(3)
    a, b = FD.dropout(x, 0.5), FD.dropout(x, 0.5)
    assert not torch.equal(a, b)
    torch.manual_seed(3)
    assert torch.equal(FD.dropout(x, 0.5), a)


def hash_keep(seed: int, first: int, n: int, p: float):
    """kernel_math.h's dropout_bits for elements first..first+n-1, in numpy (the spec)."""
    import numpy as np

    m = np.uint64(0xFFFFFFFF)

    def mix32(x):
        x = x ^ (x >> np.uint64(16))
        x = (x * np.uint64(0x7FEB352D)) & m
        x = x ^ (x >> np.uint64(15))
        x = (x * np.uint64(0x846CA68B)) & m
        return x ^ (x >> np.uint64(16))

    i = np.arange(n, dtype=np.uint64) + np.uint64(first)
    s = np.uint64(seed)
    a = mix32((i & m) ^ (s & m))
    bits = mix32((a + (i >> np.uint64(32)) * np.uint64(0x9E3779B9) + (s >> np.uint64(32))) & m)
    threshold = int(p * 16777216.0 + 0.5)
    return torch.from_numpy((bits >> np.uint64(8)) >= np.uint64(threshold))


@pytest.mark.parametrize("offset", [0, 12345, (1 << 32) - 37, (5 << 32) - 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_masks_are_the_specified_hash(offset, dtype):
    """Bit for bit the hash of kernel_math.h at this ISA level, also where the element index
    crosses a multiple of 2^32 (the kernel evaluates it in 32-bit lanes)."""
    seed, n, p = 0x1234_5678_9ABC_DEF0, 3001, 0.3
    y = torch.ops.xpe_fast.dropout(torch.ones(n, dtype=dtype), p, seed, offset)
    keep = hash_keep(seed, offset, n, p)
    assert torch.equal(y != 0, keep)
    assert torch.all(y[keep] == torch.tensor(1 / (1 - p), dtype=torch.float32).to(dtype))


def test_neighbouring_elements_are_uncorrelated():
    m = (torch.ops.xpe_fast.dropout(torch.ones(1 << 20), 0.5, 12345) != 0).double()
    for lag in (1, 2, 16, 1024):
        c = torch.corrcoef(torch.stack([m[:-lag], m[lag:]]))[0, 1].item()
        assert abs(c) < 0.01, (lag, c)


def test_edge_cases_and_bad_input():
    x = torch.randn(3, 5)
    assert FD.dropout(x, 0.0) is x
    assert FD.dropout(x, 0.7, training=False) is x
    assert torch.count_nonzero(FD.dropout(x, 1.0)) == 0
    with pytest.raises(ValueError, match="dropout probability"):
        FD.dropout(x, 1.5)
    with pytest.raises(TypeError, match="float32, float64 or bfloat16"):
        torch.ops.xpe_fast.dropout(torch.ones(3, dtype=torch.int64), 0.1, 0)
    with pytest.raises(ValueError, match="p must be in"):
        torch.ops.xpe_fast.dropout(x, 1.0, 0)
    xt = torch.randn(6, 4).t()  # non-contiguous
    y = FD.dropout(xt, 0.5)
    assert y.shape == xt.shape
    kept = y != 0
    torch.testing.assert_close(y[kept], xt[kept] * 2.0)
    assert FD.dropout(torch.empty(0, 7), 0.5).shape == (0, 7)


def test_fast_dropout_module_is_identity_in_eval():
    m = torch.nn.Dropout(0.3)
    assert FD.prepare_dropouts(torch.nn.Sequential(m)) == 1
    assert isinstance(m, FD.FastDropout)
    x = torch.randn(100)
    m.eval()
    assert m(x) is x
    m.train()
    assert (m(x) == 0).any()


@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
def test_attention_without_dropout_equals_sdpa(mask_kind):
    torch.manual_seed(0)
    B, H, S, hd = 3, 4, 13, 8
    q, k, v = (torch.randn(B, H, S, hd) for _ in range(3))
    keep = torch.ones(B, 1, 1, S, dtype=torch.bool)
    keep[0, ..., -5:] = False
    mask = {
        "none": None,
        "bool": keep,
        "float": torch.zeros(B, 1, 1, S).masked_fill(~keep, float("-inf")),
    }[mask_kind]
    out = FD.attention_with_dropout(q, k, v, mask, 0.3, 0.0)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.manual_seed(1)
    out = FD.attention_with_dropout(q, k, v, mask, 0.3, 0.5)
    assert out.shape == ref.shape and torch.isfinite(out).all()
