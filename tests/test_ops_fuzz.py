"""Property-based tests (hypothesis) of both fused ops on every CPU backend: random shapes
(1, primes, N + L at the position table's limit and one past it), dtypes, strides and storage
offsets, ids at and beyond the word table's edges. Every call either matches the eager
reference (forward and every gradient) or raises a Python exception, exactly when the
reference rejects the input too; none may crash the process."""

import pytest
import torch
from conftest import requires_triton
from helpers import TOL

from xpe_fast import ops

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

DTYPES = [torch.float32, torch.float64, torch.bfloat16]
SIZES = st.sampled_from([1, 2, 3, 5, 7, 13, 16, 17, 31, 64, 97, 128, 257])
SETTINGS = dict(
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def layout(t: torch.Tensor, kind: str) -> torch.Tensor:
    """The same values as `t`, stored contiguously, with a storage offset, or strided."""
    if kind == "offset":
        buf = torch.empty(t.numel() + 3, dtype=t.dtype)
        out = buf[3:].view(t.shape)
    elif kind == "strided" and t.dim() >= 1:
        out = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)[..., ::2]
    else:
        return t.clone()
    out.copy_(t)
    return out


def outcome(fn):
    try:
        return fn(), None
    except Exception as e:  # any Python exception is an allowed answer to bad input
        return None, e


def close(a, e, x, dtype, what):
    """`a` within tolerance of the reference `e`, or its error against the float64 result
    `x` at most twice the reference's own (ill-conditioned cases: a LayerNorm over d = 2)."""
    if not e.numel():
        return
    tol = TOL[dtype] * (4 if dtype == torch.bfloat16 else 10)
    scale = max(1.0, e.double().abs().max().item())
    err = (a.double() - e.double()).abs().max().item()
    if err <= tol * scale:
        return
    err_x = (a.double() - x).abs().max().item()
    ref_x = (e.double() - x).abs().max().item()
    assert err_x <= 2 * ref_x + tol * scale, (
        f"{what}: {err:.3e} from the reference, {err_x:.3e} from float64 (the reference's "
        f"own: {ref_x:.3e})"
    )


def as_double(ts):
    return [t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in ts]


@st.composite
def assemble_case(draw):
    dtype = draw(st.sampled_from(DTYPES))
    B, L, N = draw(st.integers(1, 4)), draw(st.integers(1, 9)), draw(st.integers(1, 7))
    d = draw(SIZES)
    V = draw(st.integers(1, 40))
    offset = draw(st.sampled_from([0, 2]))
    need = offset + N + L
    P = draw(st.sampled_from([need, need + 3, need - 1]))  # at the limit, room, one short
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    ids = torch.randint(0, V, (B, L), generator=g)
    edge = draw(st.sampled_from(["none", "first", "last", "minus1", "V", "huge"]))
    i, j = draw(st.integers(0, B - 1)), draw(st.integers(0, L - 1))
    ids[i, j] = {"none": ids[i, j], "first": 0, "last": V - 1, "minus1": -1, "V": V, "huge": 2**40}[
        edge
    ]
    prompt = torch.randn(*(([B] if draw(st.booleans()) else []) + [N, d]), generator=g)
    word = torch.randn(V, d, generator=g)
    pos = torch.randn(max(P, 1), d, generator=g)
    typ, w, b = (torch.randn(d, generator=g) for _ in range(3))
    kinds = [draw(st.sampled_from(["contiguous", "offset", "strided"])) for _ in range(3)]
    prompt = layout(prompt.to(dtype), kinds[0])
    word = layout(word.to(dtype), kinds[1])
    pos = layout(pos.to(dtype), kinds[2])
    return ids, prompt, word, pos, typ.to(dtype), w.to(dtype), b.to(dtype), 1e-5, offset


def run_assemble(backend, case, gout):
    ids, prompt, *rest = case
    p = prompt.detach().clone().requires_grad_()
    # backend="reference": the eager reference behind the op's own argument checks
    out = ops.assemble_embeddings(ids, p, *rest, backend=backend)
    (gp,) = torch.autograd.grad(out, p, gout(out))
    return out.detach(), gp


def check_assemble(backend, case):
    if backend == "triton" and case[1].dtype == torch.float64:
        return  # the Triton interpreter's kernels take fp32 and bf16 only (checked elsewhere)
    g = torch.Generator().manual_seed(1)
    gouts = {}

    def gout(out):
        if "g" not in gouts:
            gouts["g"] = torch.randn(out.shape, generator=g).to(out.dtype)
        return gouts["g"]

    ref, ref_err = outcome(lambda: run_assemble("reference", case, gout))
    got, err = outcome(lambda: run_assemble(backend, case, gout))
    if ref_err is not None:
        assert err is not None, f"the reference rejects this input ({ref_err}); {backend} ran"
        return
    assert err is None, f"{backend} raised on a valid input: {err!r}"
    exact = run_assemble("reference", tuple(as_double(case)), lambda o: gout(o).double())
    close(got[0], ref[0], exact[0], case[1].dtype, "forward")
    close(got[1], ref[1], exact[1], case[1].dtype, "prompt gradient")


@st.composite
def mlp_case(draw):
    dtype = draw(st.sampled_from(DTYPES))
    N, d_in, h, d = draw(st.integers(1, 23)), draw(SIZES), draw(SIZES), draw(SIZES)
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))

    def lin(o, i):
        return (torch.rand(o, i, generator=g) * 2 - 1) * i**-0.5, (
            torch.rand(o, generator=g) * 2 - 1
        ) * i**-0.5

    x = torch.randn(N, d_in, generator=g)
    w1, b1 = lin(h, d_in)
    w2, b2 = lin(h, h)
    w3, b3 = lin(d, h)
    ts = [x, w1, b1, w2, b2, w3, b3]
    bad = draw(st.sampled_from(["none"] * 4 + ["w2 shape", "b3 length", "dtype", "empty"]))
    if bad == "w2 shape":
        ts[3] = torch.randn(h, h + 1, generator=g)
    elif bad == "b3 length":
        ts[6] = torch.randn(d + 1, generator=g)
    elif bad == "empty":
        ts[0] = torch.randn(0, d_in)
    ts = [t.to(dtype) for t in ts]
    if bad == "dtype":
        ts[2] = ts[2].to(torch.float16)
    kinds = [draw(st.sampled_from(["contiguous", "offset", "strided"])) for _ in ts]
    ts = [layout(t, k) for t, k in zip(ts, kinds)]
    p = draw(st.sampled_from([0.0, 0.1, 0.5]))
    return ts, p, draw(st.booleans())


def run_mlp(backend, ts, p, training, gdtype=None):
    leaves = [t.detach().clone().requires_grad_() for t in ts]
    torch.manual_seed(3)  # the same dropout masks for every backend
    out = ops.prompt_encoder_mlp(*leaves, dropout_p=p, training=training, backend=backend)
    g = torch.Generator().manual_seed(2)
    gout = torch.randn(out.shape, generator=g).to(gdtype or ts[0].dtype).to(out.dtype)
    grads = torch.autograd.grad(out, leaves, gout)
    return out.detach(), grads


def check_mlp(backend, case):
    ts, p, training = case
    dtype = ts[0].dtype
    if backend == "triton" and dtype == torch.float64:
        return
    if backend == "triton" and max(ts[1].shape + ts[5].shape) > 128:
        return  # the interpreter is slow; larger widths are covered by the shape tests
    ref, ref_err = outcome(lambda: run_mlp("reference", ts, p, training))
    got, err = outcome(lambda: run_mlp(backend, ts, p, training))
    if ref_err is not None:
        assert err is not None, f"the reference rejects this input ({ref_err}); {backend} ran"
        return
    assert err is None, f"{backend} raised on a valid input: {err!r}"
    exact = run_mlp("reference", as_double(ts), p, training, gdtype=dtype)
    what = (
        f"{backend}, {dtype}, x {tuple(ts[0].shape)}, h {ts[1].shape[0]}, d {ts[5].shape[0]}, "
        f"p {p}, training {training}"
    )
    close(got[0], ref[0], exact[0], dtype, f"{what}: forward")
    for name, a, e, x in zip(["x", "w1", "b1", "w2", "b2", "w3", "b3"], got[1], ref[1], exact[1]):
        close(a, e, x, dtype, f"{what}: grad {name}")


# The C++ backend: many examples (fast). Triton runs under its interpreter: fewer.
@settings(max_examples=150, **SETTINGS)
@given(case=assemble_case())
def test_assemble_embeddings_cpu_matches_or_raises(case):
    check_assemble("cpu", case)


@settings(max_examples=150, **SETTINGS)
@given(case=mlp_case())
def test_prompt_encoder_mlp_cpu_matches_or_raises(case):
    check_mlp("cpu", case)


@requires_triton
@settings(max_examples=25, **SETTINGS)
@given(case=assemble_case())
def test_assemble_embeddings_triton_matches_or_raises(case):
    check_assemble("triton", case)


@requires_triton
@settings(max_examples=25, **SETTINGS)
@given(case=mlp_case())
def test_prompt_encoder_mlp_triton_matches_or_raises(case):
    check_mlp("triton", case)
