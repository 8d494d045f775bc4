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
            tiny_backbone("xlmr"), 7, num_virtual_tokens=5, encoder_hidden_size=16
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
