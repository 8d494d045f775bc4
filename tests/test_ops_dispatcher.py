"""The fused ops as dispatcher ops: torch.library.opcheck on every CPU dtype each supports,
torch.compile(fullgraph=True) through both training ops, the ops by name in torch.profiler,
and the Triton kernels registered as kernels of the same ops (selected and removed again)."""

import pytest
import torch
from helpers import padded_ids

import xpe_fast
from xpe_fast import ops
from xpe_fast.ops._backend import triton_available, triton_runs_on_cpu

pytestmark = pytest.mark.skipif(
    not xpe_fast.has_compiled_extension(), reason="xpe_fast._C is not built: no dispatcher ops"
)
XOPS = torch.ops.xpe_fast if xpe_fast.has_compiled_extension() else None
FLOATS = [torch.float32, torch.float64, torch.bfloat16]


def mlp_args(dtype, N=5, d_in=7, h=6, d=9, grad=True, masks=True):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, d_in, generator=g)
    ws = [
        torch.randn(h, d_in, generator=g) / 3,
        torch.randn(h, generator=g),
        torch.randn(h, h, generator=g) / 3,
        torch.randn(h, generator=g),
        torch.randn(d, h, generator=g) / 3,
        torch.randn(d, generator=g),
    ]
    leaves = [t.to(dtype).requires_grad_(grad) for t in (x, *ws)]
    m = [(torch.rand(N, h, generator=g) > 0.3).to(dtype) / 0.7 for _ in range(2)]
    return (*leaves, *(m if masks else (None, None)))


def assemble_args(dtype, B=3, L=6, N=4, V=31, d=10, P=40, shared=True):
    g = torch.Generator().manual_seed(1)
    ids, _mask = padded_ids(B, L, V)
    prompt = torch.randn(*(() if shared else (B,)), N, d, generator=g).to(dtype)
    frozen = [
        torch.randn(V, d, generator=g),
        torch.randn(P, d, generator=g),
        torch.randn(d, generator=g),
        1 + 0.1 * torch.randn(d, generator=g),
        0.1 * torch.randn(d, generator=g),
    ]
    return (ids, prompt.requires_grad_(), *(t.to(dtype) for t in frozen), 1e-5, 2)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("masks", [True, False], ids=["dropout", "no-dropout"])
def test_opcheck_prompt_encoder_mlp(dtype, masks):
    args = mlp_args(dtype, masks=masks)
    torch.library.opcheck(XOPS.prompt_encoder_mlp.default, args)
    out, h1, h2 = XOPS.prompt_encoder_mlp(*[a.detach() if a is not None else a for a in args])
    g = torch.randn_like(out)
    detached = [a.detach() if a is not None else None for a in args]
    x, w1, _b1, w2, _b2, w3, _b3, m1, m2 = detached
    torch.library.opcheck(
        XOPS.prompt_encoder_mlp_backward.default, (g, x, w1, w2, w3, h1, h2, m1, m2)
    )


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("shared", [True, False], ids=["shared-prompt", "per-sample-prompt"])
def test_opcheck_assemble_embeddings(dtype, shared):
    args = assemble_args(dtype, shared=shared)
    torch.library.opcheck(XOPS.assemble_embeddings.default, args)
    ids, prompt, word, pos, typ, ln_w, ln_b, eps, off = args
    g = torch.randn(ids.shape[0], prompt.shape[-2] + ids.shape[1], prompt.shape[-1]).to(dtype)
    torch.library.opcheck(
        XOPS.assemble_embeddings_backward.default,
        (g, prompt.detach(), pos, typ, ln_w, eps, off, ids.shape[1]),
    )


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_opcheck_dropout(dtype):
    x = torch.randn(4, 7, 5).to(dtype).requires_grad_()
    torch.library.opcheck(XOPS.dropout.default, (x, 0.3, 11, 6))
    torch.library.opcheck(XOPS.dropout.default, (x.detach().transpose(0, 2), 0.3, 11, 0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_opcheck_packed_attention(dtype):
    B, S, H, hd = 2, 7, 3, 32
    qkv = torch.randn(B, S, 3 * H * hd).to(dtype)
    mask = torch.zeros(B, S)
    mask[1, 5:] = float("-inf")
    torch.library.opcheck(XOPS.packed_attention.default, (qkv, mask, H, hd**-0.5))
    torch.library.opcheck(XOPS.packed_attention.default, (qkv, None, H, hd**-0.5))


@pytest.mark.parametrize(
    "tx,tr",
    [
        (torch.float32, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.bfloat16, torch.bfloat16),
    ],
    ids=str,
)
@pytest.mark.parametrize("bf16_copy", [False, True])
def test_opcheck_residual_layer_norm(tx, tr, bf16_copy):
    x, r = torch.randn(3, 5, 24).to(tx), torch.randn(3, 5, 24).to(tr)
    w, b = torch.randn(24), torch.randn(24)
    torch.library.opcheck(XOPS.residual_layer_norm.default, (x, r, w, b, 1e-5, bf16_copy))
    y, y16 = ops.residual_layer_norm(x, r, w, b, 1e-5, bf16_copy, backend="cpu")
    assert (y16 is not None) == bf16_copy and (y16 is None or y16.dtype == torch.bfloat16)


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_fullgraph_compile_of_both_ops_matches_eager(compiler):
    """One function calling both training ops (the MLP with dropout) compiles without a graph
    break (fullgraph), forward and backward, and gives the eager numbers."""
    ids, prompt, word, pos, typ, ln_w, ln_b, eps, off = assemble_args(torch.float32, d=7)
    x, w1, b1, w2, b2, w3, b3, _m1, _m2 = mlp_args(torch.float32, N=4, d_in=7, h=6, d=7)

    def f(x, w1, b1, w2, b2, w3, b3):
        rows = ops.prompt_encoder_mlp(
            x, w1, b1, w2, b2, w3, b3, dropout_p=0.1, training=True, backend="cpu"
        )
        emb = ops.assemble_embeddings(ids, rows, word, pos, typ, ln_w, ln_b, eps, off, "cpu")
        return (emb * emb).sum()

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend=compiler)
    params = (x, w1, b1, w2, b2, w3, b3)
    torch.manual_seed(0)  # the same dropout masks
    got = compiled(*params)
    g_got = torch.autograd.grad(got, params)
    torch.manual_seed(0)
    exp = f(*params)
    g_exp = torch.autograd.grad(exp, params)
    torch.testing.assert_close(got, exp)
    for a, e in zip(g_got, g_exp):
        torch.testing.assert_close(a, e)


def test_the_ops_appear_in_the_profiler_by_name():
    args = mlp_args(torch.float32)
    a_args = assemble_args(torch.float32)
    with torch.profiler.profile() as prof:
        out = ops.prompt_encoder_mlp(*args[:7], dropout_p=0.2, training=True, backend="cpu")
        out.sum().backward()
        emb = ops.assemble_embeddings(*a_args, backend="cpu")
        emb.sum().backward()
        ops.packed_attention(torch.randn(1, 5, 96), None, 1, 0.2, backend="cpu")
        ops.residual_layer_norm(
            torch.randn(2, 8), torch.randn(2, 8), torch.ones(8), torch.zeros(8), 1e-5, True, "cpu"
        )
        xpe_fast.fast_dropout.dropout(torch.randn(4, 4, requires_grad=True), 0.5).sum().backward()
    names = {e.name for e in prof.events()}
    for op in (
        "prompt_encoder_mlp",
        "prompt_encoder_mlp_backward",
        "assemble_embeddings",
        "assemble_embeddings_backward",
        "packed_attention",
        "residual_layer_norm",
        "dropout",
    ):
        assert f"xpe_fast::{op}" in names, (op, sorted(n for n in names if "xpe" in n))


def test_frozen_tables_requiring_grad_are_refused_by_the_autograd_kernel():
    ids, prompt, word, *rest = assemble_args(torch.float32)
    with pytest.raises(ValueError, match="word_embeddings requires grad"):
        XOPS.assemble_embeddings(ids, prompt, word.requires_grad_(), *rest)


requires_triton_cpu = pytest.mark.skipif(
    not (triton_available() and triton_runs_on_cpu()),
    reason="the Triton kernels run on the CPU only under TRITON_INTERPRET=1 with triton installed",
)


@requires_triton_cpu
def test_triton_runs_as_ops_of_its_own_and_swaps_no_kernel(monkeypatch):
    """backend="triton" calls torch.ops.xpe_fast_triton.* (forward and backward through their
    autograd); xpe_fast's ops keep their C++ kernels, whatever was called before."""
    from xpe_fast.ops import triton_prompt_encoder_mlp as tk

    calls = []
    for fn in ("prompt_encoder_mlp_forward", "prompt_encoder_mlp_backward"):
        orig = getattr(tk, fn)
        monkeypatch.setattr(tk, fn, lambda *a, _f=orig, _n=fn: calls.append(_n) or _f(*a))
    args = mlp_args(torch.float32, masks=False)
    with torch.profiler.profile() as prof:
        ops.prompt_encoder_mlp(*args[:7], backend="triton").sum().backward()
    assert calls == ["prompt_encoder_mlp_forward", "prompt_encoder_mlp_backward"]
    assert "xpe_fast_triton::prompt_encoder_mlp" in {e.name for e in prof.events()}
    with torch.profiler.profile() as prof:
        ops.prompt_encoder_mlp(*args[:7]).sum().backward()  # the C++ kernels, untouched
    assert len(calls) == 2
    assert "xpe_fast::prompt_encoder_mlp" in {e.name for e in prof.events()}


@pytest.mark.skipif(
    not (triton_available() and triton_runs_on_cpu()),
    reason="the Triton ops run on the CPU only under TRITON_INTERPRET=1 with triton installed",
)
def test_opcheck_triton_ops():
    from xpe_fast.ops import triton_ops

    args = mlp_args(torch.float32)
    torch.library.opcheck(triton_ops.prompt_encoder_mlp, args)
    ids, _ = padded_ids(2, 3, 10)
    emb = [torch.randn(10, 8), torch.randn(9, 8)] + [torch.randn(8) for _ in range(3)]
    prompt = torch.randn(4, 8, requires_grad=True)
    torch.library.opcheck(triton_ops.assemble_embeddings, (ids, prompt, *emb, 1e-5, 2))
    x = torch.randn(3, 33, requires_grad=True)
    torch.library.opcheck(triton_ops.dropout, (x, 0.25, 7, 3))


@pytest.mark.skipif(
    not (triton_available() and triton_runs_on_cpu()),
    reason="the Triton backend runs on the CPU only under TRITON_INTERPRET=1 with triton",
)
def test_two_models_with_different_kernels_interleaved_give_their_own_results():
    """A model on the C++ kernels and one on Triton's, called in turn in one process: each
    gives what it gives alone (no process-wide kernel swap between them)."""
    import copy

    from helpers import tiny_backbone

    from xpe_fast import PromptedEncoderForSequenceClassification

    torch.manual_seed(0)
    a = PromptedEncoderForSequenceClassification(
        tiny_backbone("xlmr"), 5, num_virtual_tokens=4, encoder_hidden_size=8, backend="cpu"
    ).eval()
    b = copy.deepcopy(a)
    b.set_backend("triton")
    ids, mask = padded_ids(3, 7, 211)
    calls = []
    from xpe_fast.ops import triton_prompt_encoder_mlp as tk

    real = tk.prompt_encoder_mlp_forward
    tk.prompt_encoder_mlp_forward = lambda *x: calls.append(1) or real(*x)
    try:
        with torch.no_grad():
            alone_a, alone_b = a(ids, mask), b(ids, mask)
            n = len(calls)
            for _ in range(2):
                torch.testing.assert_close(a(ids, mask), alone_a, rtol=0, atol=0)
                assert len(calls) == n  # model a never reached the Triton kernels
                torch.testing.assert_close(b(ids, mask), alone_b, rtol=0, atol=0)
                assert len(calls) == n + 1
                n += 1
    finally:
        tk.prompt_encoder_mlp_forward = real
    torch.testing.assert_close(alone_a, alone_b, rtol=1e-5, atol=1e-5)


def test_fake_kernels_refuse_what_the_kernels_refuse():
    """Under torch.compile (fake tensors) a shape the C++ kernels would refuse is refused too,
    not traced into a graph that fails later."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.randn(5, 8)
        w1, b1 = torch.randn(4, 8), torch.randn(4)
        w2, b2 = torch.randn(4, 4), torch.randn(4)
        w3, b3 = torch.randn(6, 4), torch.randn(6)
        XOPS.prompt_encoder_mlp.default(x, w1, b1, w2, b2, w3, b3)  # fits
        for bad in (
            (torch.randn(4, 7), b1, w2),
            (w1, torch.randn(3), w2),
            (w1, b1, torch.randn(4, 5)),
        ):
            with pytest.raises(Exception, match="must be"):
                XOPS.prompt_encoder_mlp.default(x, bad[0], bad[1], bad[2], b2, w3, b3)
        ids = torch.randint(0, 10, (2, 3))
        word, pos, row = torch.randn(10, 6), torch.randn(9, 6), torch.randn(6)
        XOPS.assemble_embeddings.default(ids, torch.randn(4, 6), word, pos, row, row, row, 1e-5, 2)
        with pytest.raises(Exception, match="exceed"):  # 4 + 3 slots from position 3 > 9
            XOPS.assemble_embeddings.default(
                ids, torch.randn(4, 6), word, pos, row, row, row, 1e-5, 3
            )
        with pytest.raises(Exception, match="per-sample prompt"):
            XOPS.assemble_embeddings.default(
                ids, torch.randn(3, 4, 6), word, pos, row, row, row, 1e-5, 2
            )
        with pytest.raises(Exception, match="key_mask"):
            XOPS.packed_attention.default(torch.randn(2, 5, 24), torch.zeros(2, 4), 2, 0.5)
        with pytest.raises(Exception, match="differ"):
            XOPS.residual_layer_norm.default(torch.randn(2, 6), torch.randn(2, 5), row, row, 1e-5)
        with pytest.raises(Exception, match="p must be"):
            XOPS.dropout.default(x, 1.0, 0, 0)
