"""ops.packed_attention (C++ kernel, csrc/cpu/packed_attention.cpp) against its eager
reference, on odd sizes with real key padding, and its input checks."""

import pytest
import torch
from helpers import TOL

from xpe_fast import _extension, ops
from xpe_fast.ops.packed_attention import kernel_preferred
from xpe_fast.reference import packed_attention_reference

pytestmark = pytest.mark.skipif(_extension._C is None, reason="the C++ extension is not built")


def padded_key_mask(B, S, g):
    """Additive mask: sample 0 full length, the others a random length >= 1."""
    m = torch.zeros(B, S)
    for b in range(1, B):
        n = int(torch.randint(1, S + 1, (), generator=g))
        m[b, n:] = float("-inf")
    return m


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "B,S,H,hd",
    [
        (1, 1, 1, 16),
        (3, 7, 2, 32),
        (2, 31, 3, 32),
        (2, 33, 5, 32),
        (4, 97, 12, 32),
        (1, 164, 2, 32),
        (3, 17, 3, 64),
        (2, 13, 1, 128),
        (5, 63, 2, 16),
    ],
)
def test_matches_the_reference(dtype, B, S, H, hd):
    g = torch.Generator().manual_seed(B * 1000 + S * 10 + H)
    qkv = (torch.randn(B, S, 3 * H * hd, generator=g) * 2).to(dtype)
    mask = padded_key_mask(B, S, g)
    scale = hd**-0.5
    out = ops.packed_attention(qkv, mask, H, scale, backend="cpu")
    ref = packed_attention_reference(qkv, mask, H, scale)
    exact = packed_attention_reference(qkv.double(), mask.double(), H, scale)
    assert out.shape == (B, S, H * hd) and out.dtype == dtype
    tol = TOL[dtype]
    torch.testing.assert_close(out.double(), ref.double(), rtol=tol, atol=tol)
    # fp32 accumulation: as close to float64 as the output dtype's rounding allows
    err = (out.double() - exact).abs().max().item()
    big = max(1.0, exact.abs().max().item())
    assert err <= (1e-5 if dtype == torch.float32 else 2**-8) * big


def test_no_mask_equals_a_zero_mask_and_sdpa():
    g = torch.Generator().manual_seed(3)
    B, S, H, hd = 2, 19, 4, 32
    qkv = torch.randn(B, S, 3 * H * hd, generator=g)
    a = ops.packed_attention(qkv, None, H, 0.3)
    b = ops.packed_attention(qkv, torch.zeros(B, S), H, 0.3)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    q, k, v = qkv.view(B, S, 3, H, hd).permute(2, 0, 3, 1, 4)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.3)
    torch.testing.assert_close(a, sdpa.transpose(1, 2).reshape(B, S, H * hd), rtol=1e-5, atol=1e-5)


def test_finite_additive_mask_values_and_a_fully_masked_row():
    g = torch.Generator().manual_seed(4)
    B, S, H, hd = 3, 11, 2, 16
    qkv = torch.randn(B, S, 3 * H * hd, generator=g)
    mask = torch.randn(B, S, generator=g) * 3  # any additive bias, not only 0 / -inf
    mask[2] = float("-inf")  # sample 2 attends to nothing
    out = ops.packed_attention(qkv, mask, H, 0.25)
    ref = packed_attention_reference(qkv, mask, H, 0.25)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(out[2], torch.zeros_like(out[2]))


def test_non_contiguous_inputs():
    g = torch.Generator().manual_seed(5)
    B, S, H, hd = 2, 9, 2, 32
    big = torch.randn(B, 2 * S, 3 * H * hd, generator=g)
    qkv = big[:, ::2]
    mask = torch.zeros(S, B).t()
    assert not qkv.is_contiguous() and not mask.is_contiguous()
    torch.testing.assert_close(
        ops.packed_attention(qkv, mask, H, 0.2),
        packed_attention_reference(qkv, mask, H, 0.2),
        rtol=1e-5,
        atol=1e-5,
    )


def test_the_kernel_serves_inference_only():
    qkv = torch.randn(2, 5, 3 * 2 * 32, requires_grad=True)
    assert not kernel_preferred(qkv, 2)
    out = ops.packed_attention(qkv, None, 2, 0.2)  # the reference, with autograd
    out.sum().backward()
    assert qkv.grad is not None
    from xpe_fast import cpu_paths
    from xpe_fast.ops.packed_attention import kernel_applies

    with torch.no_grad():
        assert kernel_applies(qkv, 2)
        # backend=None takes it only where it is the faster path (AVX-512; cpu_paths.py)
        assert kernel_preferred(qkv, 2) == cpu_paths.use_packed_attention()
    with pytest.raises(ValueError, match="needs CPU float32/bfloat16"):
        ops.packed_attention(qkv, None, 2, 0.2, backend="cpu")


def test_bad_inputs_raise_clear_errors():
    qkv = torch.randn(2, 5, 3 * 2 * 32)
    with pytest.raises(ValueError, match="3 \\* num_heads"):
        ops.packed_attention(qkv, None, 5, 0.2)
    with pytest.raises(ValueError, match="key_mask must be"):
        ops.packed_attention(qkv, torch.zeros(2, 4), 2, 0.2)
    with pytest.raises(ValueError, match="runs on 'cpu' or 'reference'"):
        ops.packed_attention(qkv, None, 2, 0.2, backend="cuda")
    # the C++ kernel checks for itself
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        torch.ops.xpe_fast.packed_attention(qkv.double(), None, 2, 0.2)
    with pytest.raises(ValueError, match="head size must be"):
        torch.ops.xpe_fast.packed_attention(torch.randn(2, 5, 3 * 2 * 24), None, 2, 0.2)
    with pytest.raises(ValueError, match="must be \\[B, S, 3"):
        torch.ops.xpe_fast.packed_attention(torch.randn(5, 3 * 2 * 32), None, 2, 0.2)
    with pytest.raises(ValueError, match="empty batch"):
        torch.ops.xpe_fast.packed_attention(torch.randn(2, 0, 3 * 2 * 32), None, 2, 0.2)
    with pytest.raises(TypeError, match="key_mask must be float32"):
        torch.ops.xpe_fast.packed_attention(qkv, torch.zeros(2, 5, dtype=torch.bool), 2, 0.2)
    with pytest.raises(ValueError, match="key_mask must be \\[B, S\\]"):
        torch.ops.xpe_fast.packed_attention(qkv, torch.zeros(2, 6), 2, 0.2)
    # meta tensors reach the fake kernel (shapes only), not the CPU kernel
    assert torch.ops.xpe_fast.packed_attention(qkv.to("meta"), None, 2, 0.2).shape == (2, 5, 64)
    with pytest.raises(ValueError, match="scale must be finite"):
        torch.ops.xpe_fast.packed_attention(qkv, None, 2, float("nan"))
