"""FrozenLinear (the backbone's linear layers on oneDNN) against nn.Linear."""

import copy

import pytest
import torch
from torch import nn

from xpe_fast.frozen_linear import (
    FrozenLinear,
    onednn_available,
    prepare_frozen_linears,
    set_frozen_linears_fast,
)

pytestmark = pytest.mark.skipif(not onednn_available(), reason="this torch has no oneDNN")


def pair(i, o, bias=True, seed=0):
    torch.manual_seed(seed)
    ref = nn.Linear(i, o, bias=bias).requires_grad_(False)
    fast = copy.deepcopy(ref)
    assert prepare_frozen_linears(fast) == 1
    return ref, fast


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (2, 13, 127), (3, 7, 384)])
@pytest.mark.parametrize("out", [1, 7, 384])
@pytest.mark.parametrize("bias", [True, False])
def test_fp32_forward_and_input_gradient(shape, out, bias):
    ref, fast = pair(shape[-1], out, bias)
    x = torch.randn(*shape, requires_grad=True)
    g = torch.randn(*shape[:-1], out)
    y_ref, y = ref(x), fast(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    (gx_ref,) = torch.autograd.grad(y_ref, x, g)
    (gx,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-5)


def test_non_contiguous_input_and_no_grad():
    ref, fast = pair(64, 33)
    x = torch.randn(40, 64)
    xs = torch.randn(64, 40).t()
    assert not xs.is_contiguous()
    with torch.no_grad():
        torch.testing.assert_close(fast(xs), ref(xs), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast(x), ref(x), rtol=1e-5, atol=1e-5)


def test_bf16_autocast_matches_autocast_linear_and_follows_weight_updates():
    ref, fast = pair(96, 50)
    x = torch.randn(4, 9, 96, requires_grad=True)
    g = torch.randn(4, 9, 50)
    for _ in range(2):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y_ref, y = ref(x), fast(x)
        assert y.dtype == y_ref.dtype == torch.bfloat16
        torch.testing.assert_close(y.float(), y_ref.float(), rtol=2e-2, atol=2e-2)
        (gx_ref,) = torch.autograd.grad(y_ref, x, g.bfloat16())
        (gx,) = torch.autograd.grad(y, x, g.bfloat16())
        assert gx.dtype == torch.float32
        torch.testing.assert_close(gx, gx_ref, rtol=2e-2, atol=2e-2)
        with torch.no_grad():  # the cached bf16 copy must follow an in-place change
            for m in (ref, fast):
                m.weight.mul_(-2.0)
                m.bias.add_(1.0)


def test_falls_back_where_it_cannot_serve():
    ref, fast = pair(8, 4)
    x64 = torch.randn(3, 8, dtype=torch.float64)
    torch.testing.assert_close(fast.double()(x64), ref.double()(x64))
    ref, fast = pair(8, 4)
    fast.requires_grad_(True)  # trainable weights need nn.Linear's weight gradients
    x = torch.randn(3, 8)
    fast(x).sum().backward()
    assert fast.weight.grad is not None
    ref, fast = pair(8, 4)
    set_frozen_linears_fast(fast, False)
    assert torch.equal(fast(x), ref(x))


def test_keeps_class_parameters_and_state_dict_keys():
    seq = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)).requires_grad_(False)
    keys = list(seq.state_dict())
    assert prepare_frozen_linears(seq) == 2
    assert all(isinstance(m, (FrozenLinear, nn.ReLU)) for m in seq)
    assert isinstance(seq[0], nn.Linear) and list(seq.state_dict()) == keys


@pytest.mark.parametrize("autocast", [False, True])
def test_gelu_fused_into_the_gemm(autocast):
    ref, fast = pair(40, 77)
    x = torch.randn(3, 5, 40)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y_ref, y = torch.nn.functional.gelu(ref(x)), fast.forward_gelu(x)
    tol = 2e-2 if autocast else 1e-5
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=tol, atol=tol)
    xg = x.clone().requires_grad_()  # with a gradient to carry: the unfused route
    fast.forward_gelu(xg).sum().backward()
    assert xg.grad is not None


def test_evaluating_first_then_training_works():
    # Caches built under inference_mode must still be usable by a later training step.
    ref, fast = pair(16, 8)
    x = torch.randn(4, 16)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast(x)
    xg = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fast(xg)
    y.float().sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


def test_bf16_falls_back_to_torch_where_onednn_has_no_bf16(monkeypatch):
    # AVX2-only CPUs: oneDNN cannot build bf16 inner products there (test_avx2_machine.py
    # runs the real thing with oneDNN capped); nn.Linear's autocast path serves instead.
    import xpe_fast.frozen_linear as fl

    monkeypatch.setattr(fl, "onednn_bf16_available", lambda: False)
    ref, fast = pair(40, 24)
    x = torch.randn(3, 5, 40, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast._operands(x) is None
        y_ref, y = ref(x), fast(x)
        y_gelu = fast.forward_gelu(x)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    torch.testing.assert_close(y_gelu, torch.nn.functional.gelu(y_ref), rtol=0, atol=0)
    (gx,) = torch.autograd.grad(y.float().sum(), x)
    assert gx.shape == x.shape
