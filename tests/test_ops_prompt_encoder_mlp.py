"""prompt_encoder_mlp: every backend against the eager reference, forward and all gradients."""

import pytest
import torch
from conftest import requires_triton
from helpers import assert_close_or_better

from xpe_fast import ops
from xpe_fast.reference import prompt_encoder_mlp_reference

DTYPES = [torch.float32, torch.bfloat16]


def make_params(N, d_in, h, d, dtype):
    def lin(o, i):
        bound = i**-0.5  # nn.Linear's scale keeps activations O(1)
        return ((torch.rand(o, i) * 2 - 1) * bound).to(dtype), ((torch.rand(o) * 2 - 1) * bound).to(
            dtype
        )

    x = torch.randn(N, d_in, dtype=dtype)
    w1, b1 = lin(h, d_in)
    w2, b2 = lin(h, h)
    w3, b3 = lin(d, h)
    return [x, w1, b1, w2, b2, w3, b3]


def run(backend, params, p, training, grad, seed=7):
    leaves = [t.clone().requires_grad_() for t in params]
    torch.manual_seed(seed)  # the same dropout masks for every backend
    if backend == "reference":
        out = prompt_encoder_mlp_reference(*leaves, dropout_p=p, training=training)
    else:
        out = ops.prompt_encoder_mlp(*leaves, dropout_p=p, training=training, backend=backend)
    grads = torch.autograd.grad(out, leaves, grad)
    return out, grads


def check(backend, N, d_in, h, d, dtype, p=0.0, training=False):
    params = make_params(N, d_in, h, d, dtype)
    grad = torch.randn(N, d, dtype=dtype)
    ref, g_ref = run("reference", params, p, training, grad)
    exact, g_exact = run("reference", [t.double() for t in params], p, training, grad.double())
    out, g_out = run(backend, params, p, training, grad)
    assert out.shape == (N, d) and out.dtype == dtype
    assert_close_or_better(out, ref, exact, dtype, f"{backend} forward")
    names = ["x", "w1", "b1", "w2", "b2", "w3", "b3"]
    for n, a, e, x in zip(names, g_out, g_ref, g_exact):
        assert a.shape == e.shape
        assert_close_or_better(a, e, x, dtype, f"{backend} grad {n}")


# fp32 with N <= 64 runs csrc/cpu/skinny_gemm.cpp: widths below 16, 64-column blocks with
# 16-column and scalar tails (145 = 2 * 64 + 16 + 1); bf16 with N <= 64 runs
# skinny_gemm_bf16.cpp where the CPU has AVX512-BF16 (odd widths: masked tails and a lone
# last pair); N = 66 takes ATen's BLAS instead.
SHAPES = [
    (1, 1, 1, 1),
    (7, 3, 5, 3),
    (20, 127, 64, 127),
    (20, 384, 256, 384),
    (7, 1024, 256, 1024),
    (13, 64, 31, 1),
    (23, 203, 97, 145),
    (66, 40, 33, 20),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("N,d_in,h,d", SHAPES)
@pytest.mark.parametrize("p", [0.0, 0.1])
def test_cpu(N, d_in, h, d, dtype, p):
    check("cpu", N, d_in, h, d, dtype, p, training=True)


@pytest.mark.parametrize("N,d_in,h,d", SHAPES[:3])
def test_cpu_eval_mode_ignores_dropout(N, d_in, h, d):
    check("cpu", N, d_in, h, d, torch.float32, 0.5, training=False)


TRITON_SHAPES = [(1, 1, 1, 1), (7, 3, 5, 3), (20, 127, 64, 127), (5, 384, 96, 33)]


@requires_triton
@pytest.mark.parametrize("N,d_in,h,d", TRITON_SHAPES)
@pytest.mark.parametrize("p", [0.0, 0.3])
def test_triton_interpreter(N, d_in, h, d, p):
    check("triton", N, d_in, h, d, torch.float32, p, training=True)


def backward_float64(g, x, w1, w2, w3, h1, h2, m1, m2):
    """MLP backward written out from the saved activations, in float64 (independent code)."""
    g, x, w1, w2, w3, h1, h2 = (t.double() for t in (g, x, w1, w2, w3, h1, h2))
    m1 = torch.ones_like(h1) if m1 is None else m1.double()
    m2 = torch.ones_like(h2) if m2 is None else m2.double()
    dz2 = (g @ w3) * m2 * (h2 > 0)
    dz1 = (dz2 @ w2) * m1 * (h1 > 0)
    return [dz1 @ w1, dz1.T @ x, dz1.sum(0), dz2.T @ h1, dz2.sum(0), g.T @ h2, g.sum(0)]


@pytest.mark.parametrize("backend", ["cpu", pytest.param("triton", marks=requires_triton)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("N,d_in,h,d", TRITON_SHAPES)
@pytest.mark.parametrize("p", [0.0, 0.3])
def test_stagewise_against_float64(backend, N, d_in, h, d, dtype, p):
    """Forward activations, and backward from the same saved activations, per stage.

    End to end, a bf16 ReLU network's gradient jumps wherever one backend's rounding puts a
    pre-activation on the other side of 0, so bf16 is checked stage by stage: each backend's
    backward gets identical saved activations and is compared with float64 formulas.
    """
    from xpe_fast.reference import dropout_masks

    ns = torch.ops.xpe_fast_triton if backend == "triton" else torch.ops.xpe_fast
    if backend == "triton":
        from xpe_fast.ops import triton_ops  # noqa: F401 (defines the xpe_fast_triton ops)
    x, w1, b1, w2, b2, w3, b3 = make_params(N, d_in, h, d, dtype)
    m1, m2 = dropout_masks(N, h, p, "cpu", dtype)
    out, h1, h2 = ns.prompt_encoder_mlp(x, w1, b1, w2, b2, w3, b3, m1, m2)
    # forward, stage by stage, from the backend's own previous stage
    f64 = lambda t: None if t is None else t.double()  # noqa: E731
    e1 = torch.relu(f64(x) @ f64(w1).T + f64(b1)) * (1 if m1 is None else f64(m1))
    e2 = torch.relu(f64(h1) @ f64(w2).T + f64(b2)) * (1 if m2 is None else f64(m2))
    eo = f64(h2) @ f64(w3).T + f64(b3)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for name, a, e in (("h1", h1, e1), ("h2", h2, e2), ("out", out, eo)):
        rel = ((a.double() - e).norm() / e.norm().clamp_min(1e-30)).item()
        assert rel <= tol, f"{name}: relative error {rel:.2e}"
    g = torch.randn(N, d, dtype=dtype)
    got = ns.prompt_encoder_mlp_backward(g, x, w1, w2, w3, h1, h2, m1, m2)
    exp = backward_float64(g, x, w1, w2, w3, h1, h2, m1, m2)
    for name, a, e in zip(["x", "w1", "b1", "w2", "b2", "w3", "b3"], got, exp):
        assert a.dtype == dtype and a.shape == e.shape
        rel = ((a.double() - e).norm() / e.norm().clamp_min(1e-30)).item()
        assert rel <= tol or e.norm() == 0 and a.double().norm() == 0, f"grad {name}: {rel:.2e}"


def test_cpu_gradcheck_float64():
    params = [t.requires_grad_() for t in make_params(5, 7, 6, 4, torch.float64)]
    # Keep pre-activations away from 0 so finite differences do not straddle ReLU's kink.
    torch.manual_seed(3)
    f = lambda *a: ops.prompt_encoder_mlp(*a, backend="cpu")  # noqa: E731
    assert torch.autograd.gradcheck(f, tuple(params), eps=1e-6, atol=1e-7)


def test_cpu_gradcheck_float64_with_dropout():
    params = [t.requires_grad_() for t in make_params(5, 7, 6, 4, torch.float64)]

    def f(*a):
        torch.manual_seed(11)  # same masks at every evaluation
        return ops.prompt_encoder_mlp(*a, dropout_p=0.4, training=True, backend="cpu")

    assert torch.autograd.gradcheck(f, tuple(params), eps=1e-6, atol=1e-7)


def test_dropout_masks_are_reused_in_backward_and_drop_units():
    params = make_params(20, 32, 64, 16, torch.float32)
    leaves = [t.clone().requires_grad_() for t in params]
    torch.manual_seed(0)
    out = ops.prompt_encoder_mlp(*leaves, dropout_p=0.9, training=True, backend="cpu")
    out.sum().backward()
    # With p = 0.9 most hidden units of the first layer are dropped: their w1 rows get no grad
    # from the dropped (row, unit) pairs; overall many w1-grad entries come from few units.
    torch.manual_seed(0)
    out2 = ops.prompt_encoder_mlp(*params, dropout_p=0.9, training=True, backend="cpu")
    torch.testing.assert_close(out, out2)
    out3 = ops.prompt_encoder_mlp(*params, dropout_p=0.0, training=True, backend="cpu")
    assert not torch.allclose(out2, out3)


@pytest.mark.parametrize(
    "backend", ["cpu", "reference", pytest.param("triton", marks=requires_triton)]
)
def test_bad_input_raises_a_clear_error(backend):
    x, w1, b1, w2, b2, w3, b3 = make_params(4, 6, 5, 3, torch.float32)
    cases = [
        ("dtype", (x.double(), w1, b1, w2, b2, w3, b3)),
        ("w1", (x, w1[:, :4], b1, w2, b2, w3, b3)),
        ("b2", (x, w1, b1, w2, b2[:2], w3, b3)),
        ("w2", (x, w1, b1, w2[:, :3], b2, w3, b3)),
        ("x", (x[0], w1, b1, w2, b2, w3, b3)),
        ("x", (x[:0], w1, b1, w2, b2, w3, b3)),
    ]
    for match, args in cases:
        with pytest.raises((ValueError, TypeError), match=match):
            ops.prompt_encoder_mlp(*args, backend=backend)
    with pytest.raises(ValueError, match="dropout_p"):
        ops.prompt_encoder_mlp(x, w1, b1, w2, b2, w3, b3, dropout_p=1.5, backend=backend)


def test_noncontiguous_weights_are_accepted():
    params = make_params(6, 8, 10, 4, torch.float32)
    nc = [params[0]] + [t.t().contiguous().t() if t.dim() == 2 else t for t in params[1:]]
    torch.testing.assert_close(
        ops.prompt_encoder_mlp(*nc, backend="cpu"), prompt_encoder_mlp_reference(*params)
    )
