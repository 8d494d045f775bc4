"""assemble_embeddings: every backend against the eager reference, forward and gradient."""

import itertools

import pytest
import torch
from conftest import requires_triton
from helpers import assert_close, assert_close_or_better, padded_ids

from xpe_fast import ops
from xpe_fast.reference import assemble_embeddings_reference

DTYPES = [torch.float32, torch.bfloat16]


def make_inputs(B, L, N, d, dtype, shared=True, V=97, offset=2, pad_id=1):
    ids, _ = padded_ids(B, L, V, pad_id=pad_id)
    P = offset + N + L + 3
    prompt = torch.randn(*((N, d) if shared else (B, N, d)), dtype=dtype)
    word = torch.randn(V, d, dtype=dtype)
    pos = torch.randn(P, d, dtype=dtype)
    typ = torch.randn(d, dtype=dtype)
    ln_w = (1 + 0.5 * torch.randn(d)).to(dtype)
    ln_b = (0.1 * torch.randn(d)).to(dtype)
    return ids, prompt, word, pos, typ, ln_w, ln_b, 1e-5, offset


def check_backend(backend, B, L, N, d, dtype, shared, offset=2):
    ids, prompt, *rest = make_inputs(B, L, N, d, dtype, shared, offset=offset)
    p_ref = prompt.clone().requires_grad_()
    p_fused = prompt.clone().requires_grad_()
    ref = assemble_embeddings_reference(ids, p_ref, *rest)
    out = ops.assemble_embeddings(ids, p_fused, *rest, backend=backend)
    assert out.shape == (B, N + L, d) and out.dtype == dtype
    grad = torch.randn_like(ref)
    (g_ref,) = torch.autograd.grad(ref, p_ref, grad)
    (g_out,) = torch.autograd.grad(out, p_fused, grad)
    p64 = prompt.double().requires_grad_()
    exact = assemble_embeddings_reference(
        ids, p64, *[t.double() if torch.is_tensor(t) else t for t in rest]
    )
    (g_exact,) = torch.autograd.grad(exact, p64, grad.double())
    assert_close_or_better(out, ref, exact, dtype, f"forward {backend}")
    assert_close_or_better(g_out, g_ref, g_exact, dtype, f"grad prompt {backend}")


SWEEP = list(itertools.product([1, 3, 127, 256, 384, 1024], [1, 7, 20], [1, 13, 64], [1, 5, 32]))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", [1, 3, 127, 256, 384, 1024])
def test_cpu_sweep(d, dtype):
    for _, N, L, B in (s for s in SWEEP if s[0] == d):
        for shared in (True, False):
            check_backend("cpu", B, L, N, d, dtype, shared)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("shared", [True, False])
def test_cpu_thread_splits(threads, shared):
    """Rows split among threads: backward's per-thread blocks of prompt slots start past 0."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for dtype in DTYPES:
            check_backend("cpu", 7, 13, 20, 384, dtype, shared)
            check_backend("cpu", 5, 9, 7, 1024, dtype, shared)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("d", [256, 384, 1024])
def test_cpu_outputs_over_4mb_take_streaming_stores(d, dtype):
    """Outputs over 4 MB are written with non-temporal stores (and an sfence)."""
    B, L, N = 64, 150, 20
    assert B * (N + L) * d * dtype.itemsize > 4 << 20
    check_backend("cpu", B, L, N, d, dtype, True)


@pytest.mark.parametrize("offset", [0, 2])
def test_cpu_bert_and_xlmr_offsets(offset):
    check_backend("cpu", 5, 13, 7, 127, torch.float32, True, offset=offset)


@requires_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "B,L,N,d", [(1, 1, 1, 1), (3, 13, 7, 127), (5, 7, 20, 384), (2, 5, 3, 1024)]
)
@pytest.mark.parametrize("shared", [True, False])
def test_triton_interpreter(B, L, N, d, dtype, shared):
    check_backend("triton", B, L, N, d, dtype, shared)


@pytest.mark.parametrize("shared", [True, False])
def test_cpu_gradcheck_float64(shared):
    ids, prompt, *rest = make_inputs(3, 5, 4, 11, torch.float64, shared)
    prompt.requires_grad_()
    f = lambda p: ops.assemble_embeddings(ids, p, *rest, backend="cpu")  # noqa: E731
    assert torch.autograd.gradcheck(f, (prompt,), eps=1e-6, atol=1e-8)


def test_cpu_matches_an_independent_loop():
    """A separate, per-row implementation (no shared code with either path)."""
    ids, prompt, word, pos, typ, w, b, eps, off = make_inputs(2, 6, 3, 10, torch.float64)
    out = ops.assemble_embeddings(ids, prompt, word, pos, typ, w, b, eps, off, backend="cpu")
    N = prompt.shape[0]
    for bi in range(2):
        for j in range(N + 6):
            src = prompt[j] if j < N else word[ids[bi, j - N]]
            x = src + pos[off + j] + typ
            mu = sum(x.tolist()) / len(x)
            var = sum((v - mu) ** 2 for v in x.tolist()) / len(x)
            y = [
                (v - mu) / (var + eps) ** 0.5 * float(w[k]) + float(b[k])
                for k, v in enumerate(x.tolist())
            ]
            torch.testing.assert_close(out[bi, j], torch.tensor(y, dtype=torch.float64))


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64], ids=str)
@pytest.mark.parametrize("where", ["word rows", "ln_weight"])
def test_cpu_nan_and_inf_propagate_as_in_eager(dtype, where):
    """Rows with NaN/inf take the bf16 kernel's NaN-aware path; the pattern of NaNs and the
    finite values match the eager reference."""
    ids, prompt, word, pos, typ, w, b, eps, off = make_inputs(3, 11, 4, 37, dtype)
    if where == "word rows":
        word[ids[0, 0]] = float("nan")
        word[ids[1, 2], 5] = float("inf")
        word[ids[2, 1], 7] = float("-inf")
    else:
        w[3] = float("nan")
        b[9] = float("inf")
    ref = assemble_embeddings_reference(ids, prompt, word, pos, typ, w, b, eps, off)
    out = ops.assemble_embeddings(ids, prompt, word, pos, typ, w, b, eps, off, backend="cpu")
    assert torch.equal(out.isnan(), ref.isnan())
    assert torch.equal(out.isinf(), ref.isinf())
    assert out.isnan().any() and out.isfinite().any()
    fin = ref.isfinite()
    assert_close(out[fin], ref[fin], dtype)


def test_noncontiguous_inputs_are_accepted():
    ids, prompt, word, pos, typ, w, b, eps, off = make_inputs(3, 9, 4, 16, torch.float32)
    ref = assemble_embeddings_reference(ids, prompt, word, pos, typ, w, b, eps, off)
    out = ops.assemble_embeddings(
        ids.t().contiguous().t(),
        prompt.t().contiguous().t(),
        word.t().contiguous().t(),
        pos,
        typ,
        w,
        b,
        eps,
        off,
        backend="cpu",
    )
    assert_close(out, ref)


def _bad_cases():
    good = make_inputs(2, 4, 3, 8, torch.float32)
    ids, prompt, word, pos, typ, w, b, eps, off = good

    def case(i, v):
        args = list(good)
        args[i] = v
        return args

    return [
        ("int64", case(0, ids.int())),
        ("input_ids", case(0, ids[0])),
        ("empty batch", case(0, ids[:0])),
        ("no tokens", case(0, ids[:, :0])),
        ("outside", case(0, ids.masked_fill(ids == ids[0, 0], 10_000))),
        ("outside", case(0, ids.masked_fill(ids == ids[0, 0], -1))),
        ("dtype", case(2, word.double())),
        ("word_embeddings", case(2, word[:, :5])),
        ("prompt", case(1, prompt[:0])),
        ("batch size", case(1, prompt.expand(5, -1, -1))),
        ("position_embeddings has", case(8, 100)),
        ("position_offset", case(8, -1)),
        ("ln_weight", case(5, w[:3])),
        ("float32, float64 or bfloat16", case(1, prompt.half())),
    ]


@pytest.mark.parametrize(
    "backend", ["cpu", "reference", pytest.param("triton", marks=requires_triton)]
)
@pytest.mark.parametrize("match,args", _bad_cases(), ids=[c[0] for c in _bad_cases()])
def test_bad_input_raises_a_clear_error(backend, match, args):
    with pytest.raises((ValueError, TypeError, IndexError), match=match):
        ops.assemble_embeddings(*args, backend=backend)


def test_gradient_of_frozen_tables_is_refused():
    ids, prompt, word, *rest = make_inputs(2, 4, 3, 8, torch.float32)
    with pytest.raises(ValueError, match="word_embeddings requires grad"):
        ops.assemble_embeddings(
            ids, prompt.requires_grad_(), word.requires_grad_(), *rest, backend="cpu"
        )


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend"):
        ops.assemble_embeddings(*make_inputs(1, 2, 1, 4, torch.float32), backend="tpu")


def test_environment_variable_overrides_the_default(monkeypatch):
    monkeypatch.setenv("XPE_FAST_BACKEND", "reference")
    assert ops.resolve_backend(None, torch.device("cpu")) == "reference"
    assert ops.resolve_backend("cpu", torch.device("cpu")) == "cpu"


def test_torch_compile_traces_around_the_op():
    args = make_inputs(2, 5, 3, 16, torch.float32)
    ids, prompt, *rest = args
    f = torch.compile(
        lambda p: ops.assemble_embeddings(ids, p, *rest, backend="cpu").sum(),
        backend="eager",
        fullgraph=True,
    )
    p = prompt.clone().requires_grad_()
    f(p).backward()
    p2 = prompt.clone().requires_grad_()
    assemble_embeddings_reference(ids, p2, *rest).sum().backward()
    assert_close(p.grad, p2.grad)
