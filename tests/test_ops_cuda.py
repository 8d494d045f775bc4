"""The fused ops on a CUDA device (the CUDA kernels and the Triton kernels compiled for the
GPU) against the eager reference, forward and every gradient; and the model on CUDA against
its reference route. Skipped without a CUDA device: `benchmarks/gpu_check.py` runs them on a
GPU machine (with TRITON_INTERPRET=0)."""

import pytest
import torch
from helpers import assert_close_or_better, padded_ids

from xpe_fast import ops
from xpe_fast.reference import assemble_embeddings_reference, prompt_encoder_mlp_reference

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device here: the CUDA and Triton backends are "
    "checked on a GPU by benchmarks/gpu_check.py",
)
BACKENDS = ["cuda", "triton"]
DTYPES = [torch.float32, torch.bfloat16]


def backend_or_skip(backend):
    if backend not in ops.available_backends("cuda"):
        pytest.skip(
            f"backend {backend!r} is not available on this CUDA machine "
            f"(available: {ops.available_backends('cuda')})"
        )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "B,L,N,d,shared",
    [(1, 1, 1, 1, True), (3, 13, 7, 127, True), (4, 64, 20, 384, False), (2, 33, 20, 1024, True)],
)
def test_assemble_embeddings_on_cuda(backend, dtype, B, L, N, d, shared):
    backend_or_skip(backend)
    ids, _ = padded_ids(B, L, 97)
    P = 2 + N + L
    cpu = [
        torch.randn(*((N, d) if shared else (B, N, d))),
        torch.randn(97, d),
        torch.randn(P, d),
        torch.randn(d),
        1 + 0.5 * torch.randn(d),
        0.1 * torch.randn(d),
    ]
    ref_in = [t.to(dtype) for t in cpu]
    p_ref = ref_in[0].clone().requires_grad_()
    ref = assemble_embeddings_reference(ids, p_ref, *ref_in[1:], 1e-5, 2)
    p = ref_in[0].cuda().requires_grad_()
    out = ops.assemble_embeddings(
        ids.cuda(), p, *[t.cuda() for t in ref_in[1:]], 1e-5, 2, backend=backend
    )
    g = torch.randn(ref.shape).to(dtype)
    (g_ref,) = torch.autograd.grad(ref, p_ref, g)
    (g_out,) = torch.autograd.grad(out, p, g.cuda())
    p64 = cpu[0].double().requires_grad_()
    exact = assemble_embeddings_reference(
        ids, p64, *[t.to(dtype).double() for t in cpu[1:]], 1e-5, 2
    )
    (g_exact,) = torch.autograd.grad(exact, p64, g.double())
    assert_close_or_better(out.cpu(), ref, exact, dtype, f"forward {backend}")
    assert_close_or_better(g_out.cpu(), g_ref, g_exact, dtype, f"grad {backend}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("N,d_in,h,d", [(1, 1, 1, 1), (7, 33, 19, 33), (20, 1024, 256, 1024)])
@pytest.mark.parametrize("p", [0.0, 0.1])
def test_prompt_encoder_mlp_on_cuda(backend, dtype, N, d_in, h, d, p):
    backend_or_skip(backend)
    ws = [
        torch.randn(N, d_in),
        torch.randn(h, d_in) * d_in**-0.5,
        torch.randn(h) * 0.1,
        torch.randn(h, h) * h**-0.5,
        torch.randn(h) * 0.1,
        torch.randn(d, h) * h**-0.5,
        torch.randn(d) * 0.1,
    ]
    g = torch.randn(N, d).to(dtype)

    def grads(fn, tensors, gout):
        leaves = [t.clone().requires_grad_() for t in tensors]
        torch.manual_seed(5)  # the same dropout masks (drawn on the CPU generator)
        out = fn(leaves)
        return out, torch.autograd.grad(out, leaves, gout)

    ref, g_ref = grads(
        lambda l: prompt_encoder_mlp_reference(*l, dropout_p=p, training=True),
        [t.to(dtype) for t in ws],
        g,
    )
    exact, g_exact = grads(
        lambda l: prompt_encoder_mlp_reference(*l, dropout_p=p, training=True),
        [t.to(dtype).double() for t in ws],
        g.double(),
    )
    out, g_out = grads(
        lambda l: ops.prompt_encoder_mlp(*l, dropout_p=p, training=True, backend=backend),
        [t.to(dtype).cuda() for t in ws],
        g.cuda(),
    )
    assert_close_or_better(out.cpu(), ref, exact, dtype, f"forward {backend}")
    for name, a, e, x in zip("x w1 b1 w2 b2 w3 b3".split(), g_out, g_ref, g_exact):
        assert_close_or_better(a.cpu(), e, x, dtype, f"grad {name} {backend}")


def test_model_on_cuda_matches_its_reference_route():
    from helpers import tiny_backbone

    from xpe_fast import PromptedEncoderForSequenceClassification

    m = (
        PromptedEncoderForSequenceClassification(
            tiny_backbone("xlmr"), 7, num_virtual_tokens=5, encoder_hidden_size=16, accelerate=True
        )
        .cuda()
        .eval()
    )
    ids, mask = padded_ids(4, 11, 211)
    ids, mask = ids.cuda(), mask.cuda()
    with torch.no_grad():
        fused = m(ids, mask)
        m.set_backend("reference")
        ref = m(ids, mask)
    torch.testing.assert_close(fused, ref, rtol=1e-4, atol=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16), torch.no_grad():
        assert m(ids, mask).shape == (4, 7)


def test_dropout_on_cuda_draws_the_cpu_kernels_masks():
    """The op's CUDA kernel (Triton) and its C++ CPU kernel: the same bits, so a GPU run's
    masks, numbered by global sample index, do not depend on the number of processes."""
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        x = torch.randn(7, 1000).to(dtype)
        for offset in (0, (1 << 32) - 3):
            cpu = torch.ops.xpe_fast.dropout(x, 0.1, 1234567, offset)
            gpu = ops.dropout(x.cuda(), 0.1, 1234567, offset)
            torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_model_on_cuda_trains_as_on_the_cpu(dtype):
    """One training step with every dropout on (backbone hidden and attention, head, prompt
    MLP): on CUDA the same masks as on the CPU under one seed, so the logits and every
    trained gradient agree (bf16: autocast on both, within its rounding)."""
    import copy

    from helpers import tiny_backbone

    from xpe_fast import PromptedEncoderForSequenceClassification

    torch.manual_seed(0)
    cpu = PromptedEncoderForSequenceClassification(
        tiny_backbone("xlmr", dropout=0.1), 7, num_virtual_tokens=5, encoder_ratio=0.6,
        encoder_hidden_size=16, prompt_dropout=0.1, accelerate=True,
    ).train()  # fmt: skip
    gpu = copy.deepcopy(cpu).cuda().train()
    gpu.set_backend(None)
    ids, mask = padded_ids(4, 11, 211)
    labels = torch.tensor([0, 3, 6, 2])
    out = {}
    for name, m, dev in (("cpu", cpu, "cpu"), ("cuda", gpu, "cuda")):
        torch.manual_seed(42)
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss, logits = m(ids.to(dev), mask.to(dev), labels=labels.to(dev))
        loss.backward()
        grads = {n: p.grad.float().cpu() for n, p in m.named_parameters() if p.requires_grad}
        out[name] = (logits.float().detach().cpu(), grads)
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(out["cuda"][0], out["cpu"][0], rtol=tol, atol=tol)
    for n, g in out["cpu"][1].items():
        torch.testing.assert_close(out["cuda"][1][n], g, rtol=tol, atol=tol, msg=n)


@pytest.mark.parametrize("train", [True, False], ids=["training", "inference"])
def test_unpadded_layers_on_cuda_equal_the_padded_route(train):
    """On CUDA the layers run over the real tokens only (flash varlen attention in bf16
    inference): the padded route's logits (and, training, the same dropout masks)."""
    import copy

    from helpers import tiny_backbone

    from xpe_fast import PromptedEncoderForSequenceClassification
    from xpe_fast.encoder_fast_path import FastPathOptions

    torch.manual_seed(0)
    m = PromptedEncoderForSequenceClassification(
        tiny_backbone("xlmr", hidden=64, heads=4, dropout=0.1), 7, num_virtual_tokens=5,
        encoder_hidden_size=16, fast_path=FastPathOptions(unpadded=False), accelerate=True,
    ).cuda()  # fmt: skip
    u = copy.deepcopy(m)
    u.fast_path = FastPathOptions(unpadded=True)
    ids, mask = padded_ids(6, 17, 211)
    ids, mask = ids.cuda(), mask.cuda()
    outs = []
    for model in (m, u):
        model.train(train)
        torch.manual_seed(5)
        with torch.autocast("cuda", dtype=torch.bfloat16), torch.set_grad_enabled(train):
            outs.append(model(ids, mask).float())
    torch.testing.assert_close(outs[1], outs[0], rtol=3e-2, atol=3e-2)
