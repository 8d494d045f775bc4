"""ops.residual_layer_norm (C++ kernel, csrc/cpu/residual_layer_norm.cpp) against its eager
reference (the add, LayerNorm and bf16 cast that eager PyTorch does under bf16 autocast)."""

import pytest
import torch
import torch.nn.functional as F
from helpers import TOL

from xpe_fast import _extension, ops
from xpe_fast.reference import residual_layer_norm_reference

pytestmark = pytest.mark.skipif(_extension._C is None, reason="the C++ extension is not built")

PAIRS = [
    (torch.bfloat16, torch.float32),
    (torch.float32, torch.float32),
    (torch.bfloat16, torch.bfloat16),
]


@pytest.mark.parametrize("xd,rd", PAIRS)
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 7, 33), (2, 13, 384), (5, 127), (4, 3, 1031)])
@pytest.mark.parametrize("bf16_copy", [False, True])
def test_matches_the_reference(xd, rd, shape, bf16_copy):
    g = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(shape, generator=g) * 3).to(xd)
    r = (torch.randn(shape, generator=g) + 1).to(rd)
    w, b = torch.randn(shape[-1], generator=g), torch.randn(shape[-1], generator=g)
    y, y16 = ops.residual_layer_norm(x, r, w, b, 1e-6, bf16_copy=bf16_copy, backend="cpu")
    yr, yr16 = residual_layer_norm_reference(x, r, w, b, 1e-6, bf16_copy)
    assert y.dtype == yr.dtype == torch.promote_types(xd, rd) and y.shape == x.shape
    tol = TOL[y.dtype]
    torch.testing.assert_close(y.double(), yr.double(), rtol=tol, atol=tol * 4)
    if bf16_copy:
        assert y16.dtype == torch.bfloat16 and torch.equal(y16, y.bfloat16())
    else:
        assert y16 is None and yr16 is None


def test_equals_eager_autocast_layer_norm():
    # What an encoder's output block computes under bf16 autocast, then the next layer's cast.
    g = torch.Generator().manual_seed(1)
    ln = torch.nn.LayerNorm(96, eps=1e-12)
    with torch.no_grad():
        ln.weight.normal_(generator=g), ln.bias.normal_(generator=g)
    x = torch.randn(4, 9, 96, generator=g).bfloat16()
    r = torch.randn(4, 9, 96, generator=g)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref = ln(x + r)
        y, y16 = ops.residual_layer_norm(x, r, ln.weight, ln.bias, ln.eps, bf16_copy=True)
    assert ref.dtype == y.dtype == torch.float32
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


def test_the_kernel_serves_inference_only():
    x = torch.randn(3, 8, requires_grad=True)
    r = torch.randn(3, 8)
    w, b = torch.ones(8), torch.zeros(8)
    y, _ = ops.residual_layer_norm(x, r, w, b, 1e-5)  # the reference, with autograd
    y.sum().backward()
    assert x.grad is not None
    with pytest.raises(ValueError, match="without gradient"):
        ops.residual_layer_norm(x, r, w, b, 1e-5, backend="cpu")


def test_non_contiguous_inputs():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 40, generator=g)[:, ::2]
    r = torch.randn(20, 3, generator=g).t()
    assert not x.is_contiguous() and not r.is_contiguous()
    w, b = torch.randn(20, generator=g), torch.randn(20, generator=g)
    y, _ = ops.residual_layer_norm(x, r, w, b, 1e-5)
    torch.testing.assert_close(y, F.layer_norm(x + r, (20,), w, b, 1e-5), rtol=1e-5, atol=1e-5)


def test_bad_inputs_raise_clear_errors():
    x, r, w, b = torch.randn(2, 8), torch.randn(2, 8), torch.ones(8), torch.zeros(8)
    with pytest.raises(ValueError, match="same shape"):
        ops.residual_layer_norm(x, r[:1], w, b, 1e-5)
    with pytest.raises(ValueError, match="weight and bias must be"):
        ops.residual_layer_norm(x, r, w[:3], b, 1e-5)
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        torch.ops.xpe_fast.residual_layer_norm(x.double(), r, w, b, 1e-5, False)
    with pytest.raises(TypeError, match="float32 residual"):
        torch.ops.xpe_fast.residual_layer_norm(x, r.bfloat16(), w, b, 1e-5, False)
    with pytest.raises(ValueError, match="same shape"):
        torch.ops.xpe_fast.residual_layer_norm(x, r.t().contiguous(), w, b, 1e-5, False)
    with pytest.raises(ValueError, match="must be \\[8\\]"):
        torch.ops.xpe_fast.residual_layer_norm(x, r, torch.ones(7), b, 1e-5, False)
    with pytest.raises(ValueError, match="eps must be > 0"):
        torch.ops.xpe_fast.residual_layer_norm(x, r, w, b, 0.0, False)
    # meta tensors reach the fake kernel (shapes only), not the CPU kernel
    (y,) = torch.ops.xpe_fast.residual_layer_norm(x.to("meta"), r.to("meta"), w, b, 1e-5, False)
    assert y.device.type == "meta" and y.shape == x.shape
