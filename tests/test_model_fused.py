"""End to end: the model on the fused CPU kernels equals the model on the reference path."""

import copy

import pytest
import torch
from helpers import padded_ids, tiny_backbone

from xpe_fast import PromptedEncoderForSequenceClassification


@pytest.mark.parametrize("kind", ["xlmr", "bert"])
@pytest.mark.parametrize(
    "ratio,scope", [(0.0, "batch"), (0.3, "batch"), (1.0, "batch"), (0.3, "sample")]
)
def test_cpu_backend_matches_reference_logits_and_gradients(kind, ratio, scope):
    backbone = tiny_backbone(kind)
    fused = PromptedEncoderForSequenceClassification(
        backbone,
        5,
        num_virtual_tokens=6,
        encoder_ratio=ratio,
        encoder_hidden_size=12,
        # per-sample prompts: MLP dropout on, the same masks on both routes under one seed
        prompt_dropout=0.0 if scope == "batch" else 0.3,
        prompt_dropout_scope=scope,
        classifier_dropout=0.0,
        backend="cpu",
    )
    ref = copy.deepcopy(fused)
    ref.set_backend("reference")
    fused.train(), ref.train()  # backbone dropout 0 (tiny config), so train mode is exact
    ids, mask = padded_ids(5, 13, backbone.config.vocab_size)
    labels = torch.tensor([0, 1, 2, 3, 4])
    torch.manual_seed(7)
    loss_f, logits_f = fused(ids, mask, labels=labels)
    torch.manual_seed(7)
    loss_r, logits_r = ref(ids, mask, labels=labels)
    torch.testing.assert_close(logits_f, logits_r, rtol=1e-5, atol=1e-5)
    loss_f.backward()
    loss_r.backward()
    pf = dict(fused.named_parameters())
    for name, p in ref.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(pf[name].grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)
        else:
            assert pf[name].grad is None


def test_triton_backend_in_the_model():
    pytest.importorskip("triton")
    backbone = tiny_backbone("xlmr")
    m = PromptedEncoderForSequenceClassification(
        backbone, 3, num_virtual_tokens=4, encoder_hidden_size=8, backend="triton"
    ).eval()
    ids, mask = padded_ids(2, 7, backbone.config.vocab_size)
    out = m(ids, mask)
    m.set_backend("reference")
    torch.testing.assert_close(out, m(ids, mask), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["xlmr", "bert"])
def test_backbone_dropout_runs_on_counter_based_masks(kind, monkeypatch):
    from xpe_fast import fast_dropout

    backbone = tiny_backbone(kind, dropout=0.2)
    m = PromptedEncoderForSequenceClassification(
        backbone, 3, num_virtual_tokens=4, encoder_hidden_size=8, backend="cpu", accelerate=True
    )
    calls = []
    real = fast_dropout.attention_with_dropout
    monkeypatch.setattr(
        fast_dropout, "attention_with_dropout", lambda *a: calls.append(a[-1]) or real(*a)
    )
    assert all(
        type(d) is fast_dropout.FastDropout
        for d in m.backbone.modules()
        if isinstance(d, torch.nn.Dropout)
    )
    ids, mask = padded_ids(4, 9, backbone.config.vocab_size)
    labels = torch.tensor([0, 1, 2, 0])
    m.train()
    losses = []
    for _ in range(2):
        torch.manual_seed(5)
        loss, _ = m(ids, mask, labels=labels)
        losses.append(loss)
    assert torch.equal(losses[0], losses[1])  # masks follow torch's seed
    assert len(calls) == 4 and all(p == 0.2 for p in calls)  # every layer, both runs
    losses[0].backward()
    grads = [p.grad for p in m.prompt.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    # Evaluation (dropout off) equals the unmodified Hugging Face route.
    m.eval()
    with torch.no_grad():
        out = m(ids, mask)
        m.set_backend("reference")
        assert not any(type(d) is fast_dropout.FastDropout for d in m.backbone.modules())
        assert m.backbone.config._attn_implementation != fast_dropout.ATTN_IMPLEMENTATION
        torch.testing.assert_close(out, m(ids, mask), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["xlmr", "bert"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("L", [9, 90])  # short keys (matmul + softmax) and long (SDPA)
# head size 6: the attention fallback; 32 and 16: ops.packed_attention's kernel
@pytest.mark.parametrize("hidden,heads", [(24, 4), (64, 2), (48, 3)])
def test_inference_layer_equals_the_hugging_face_layer(kind, precision, L, hidden, heads):
    from xpe_fast.encoder_fast_path import inference_layer

    backbone = tiny_backbone(kind, max_pos=128, hidden=hidden, heads=heads)
    m = PromptedEncoderForSequenceClassification(
        backbone, 3, num_virtual_tokens=4, encoder_hidden_size=8, backend="cpu", accelerate=True
    ).eval()
    ids, mask = padded_ids(3, L, backbone.config.vocab_size)
    layer = m.backbone.encoder.layer[0]
    tol = 1e-5 if precision == "fp32" else 2e-2
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        hidden = m.embed(ids)
        ext = m._extended_mask(ids, mask)
        add = torch.zeros(ext.shape).masked_fill_(ext == 0, float("-inf"))[:, None, None, :]
        ours, ours16 = inference_layer(layer, hidden, add)
        # With the key mask [B, S] (the packed kernel) and a bf16 copy of the input.
        h16 = hidden.bfloat16() if precision == "bf16" else None
        ours_k, ours_k16 = inference_layer(layer, hidden, add, add[:, 0, 0, :].contiguous(), h16)
        m.set_backend("reference")
        from transformers.masking_utils import create_bidirectional_mask

        mask4d = create_bidirectional_mask(
            config=m.backbone.config, inputs_embeds=hidden, attention_mask=ext
        )
        ref = layer(hidden, mask4d)
        ref = ref[0] if isinstance(ref, tuple) else ref
    for out, out16 in ((ours, ours16), (ours_k, ours_k16)):
        assert out.dtype == ref.dtype
        torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=tol)
        if precision == "bf16":  # the copy is the output rounded to bf16, exactly
            assert out16.dtype == torch.bfloat16 and torch.equal(out16, out.bfloat16())
        else:
            assert out16 is None


@pytest.mark.parametrize("kind", ["xlmr", "bert"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_inference_path_equals_the_reference_route(kind, precision):
    # The whole evaluation path (packed attention, fused residual LayerNorms with the bf16
    # chain, first-row last layer) on a backbone whose head size the kernel serves.
    backbone = tiny_backbone(kind, max_pos=128, hidden=64, heads=2, layers=3)
    m = PromptedEncoderForSequenceClassification(
        backbone, 3, num_virtual_tokens=5, encoder_hidden_size=8, backend="cpu", accelerate=True
    ).eval()
    ids, mask = padded_ids(5, 23, backbone.config.vocab_size)
    tol = 1e-5 if precision == "fp32" else 3e-2
    with (
        torch.inference_mode(),
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"),
    ):
        with torch.profiler.profile() as prof:
            ours = m(ids, mask)
        m.set_backend("reference")
        ref = m(ids, mask)
    torch.testing.assert_close(ours.float(), ref.float(), rtol=tol, atol=tol)
    calls = [e.name for e in prof.events()]
    # layers 1 and 2 ran the kernels (layer 3 is the first-row layer), where cpu_paths takes
    # them at this ISA level (the AVX2 run of test_avx2_machine.py proves the other branch)
    from xpe_fast import cpu_paths

    assert calls.count("xpe_fast::packed_attention") == 2 * cpu_paths.use_packed_attention()
    assert calls.count("xpe_fast::residual_layer_norm") == 4 * cpu_paths.use_residual_layer_norm()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_evaluate_then_train(precision):
    # Caches built during an inference_mode evaluation (bf16 weights, fused QKV) must not
    # leak inference tensors into the next training step.
    backbone = tiny_backbone("xlmr", dropout=0.1)
    m = PromptedEncoderForSequenceClassification(
        backbone, 3, num_virtual_tokens=4, encoder_hidden_size=8, backend="cpu", accelerate=True
    )
    ids, mask = padded_ids(3, 11, backbone.config.vocab_size)
    ac = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    m.eval()
    with torch.inference_mode(), ac:
        m(ids, mask)
    m.train()
    with ac:
        loss, _ = m(ids, mask, labels=torch.tensor([0, 1, 2]))
    loss.backward()
    assert all(p.grad is not None for p in m.prompt.parameters())


def test_a_backbone_wrapped_twice_still_restores_the_reference_route():
    import gc

    from transformers.modeling_utils import AttentionInterface

    from xpe_fast import fast_dropout

    gc.collect()  # models of earlier tests, accelerated and never restored, are gone
    backbone = tiny_backbone("bert")
    plain = PromptedEncoderForSequenceClassification(backbone, 3, num_virtual_tokens=4)
    assert not plain.accelerated and backbone.config._attn_implementation == "sdpa"  # opt-in
    PromptedEncoderForSequenceClassification(backbone, 3, num_virtual_tokens=4, accelerate=True)
    second = PromptedEncoderForSequenceClassification(
        backbone, 3, num_virtual_tokens=4, accelerate=True
    )
    assert backbone.config._attn_implementation == fast_dropout.ATTN_IMPLEMENTATION
    assert fast_dropout.ATTN_IMPLEMENTATION in AttentionInterface._global_mapping
    second.set_backend("reference")
    assert backbone.config._attn_implementation == "sdpa"
    # the process-wide registration with transformers is undone with the last user
    assert fast_dropout.ATTN_IMPLEMENTATION not in AttentionInterface._global_mapping


def test_evaluation_draws_nothing_from_the_generator():
    # Building the fused QKV layer must not initialize weights randomly: that would shift
    # every later dropout mask of a seeded run that evaluates first.
    backbone = tiny_backbone("xlmr", dropout=0.1)
    m = PromptedEncoderForSequenceClassification(
        backbone, 3, num_virtual_tokens=4, encoder_hidden_size=8, backend="cpu", accelerate=True
    ).eval()
    ids, mask = padded_ids(3, 11, backbone.config.vocab_size)
    torch.manual_seed(0)
    with torch.inference_mode():
        m(ids, mask)
    after_eval = torch.rand(4)
    torch.manual_seed(0)
    assert torch.equal(after_eval, torch.rand(4))


@pytest.mark.parametrize("kind", ["xlmr", "bert"])
@pytest.mark.parametrize("train", [True, False], ids=["training", "inference"])
def test_unpadded_layers_equal_the_padded_route(kind, train, monkeypatch):
    """The layers over the real tokens only (the CUDA default; forced here on the CPU) give
    the padded route's logits and every trained gradient, with every dropout on: the same
    masks, numbered as in the padded [B, S, d] tensors."""
    from xpe_fast import encoder_fast_path
    from xpe_fast.encoder_fast_path import FastPathOptions

    calls = []
    real_layer = encoder_fast_path.unpadded_layer
    monkeypatch.setattr(
        encoder_fast_path,
        "unpadded_layer",
        lambda layer, x, pk, opts: calls.append(x.shape[0]) or real_layer(layer, x, pk, opts),
    )

    backbone = tiny_backbone(kind, dropout=0.1)
    padded = PromptedEncoderForSequenceClassification(
        backbone, 5, num_virtual_tokens=4, encoder_ratio=0.5, encoder_hidden_size=8,
        fast_path=FastPathOptions(unpadded=False), accelerate=True,
    )  # fmt: skip
    unpadded = copy.deepcopy(padded)
    unpadded.fast_path = FastPathOptions(unpadded=True)
    ids, mask = padded_ids(5, 13, backbone.config.vocab_size)
    labels = torch.tensor([0, 1, 2, 3, 4])
    out = []
    for m in (padded, unpadded):
        m.train(train)
        torch.manual_seed(3)
        with torch.set_grad_enabled(train):
            loss, logits = m(ids, mask, labels=labels)
        grads = {}
        if train:
            loss.backward()
            grads = {n: p.grad for n, p in m.named_parameters() if p.requires_grad}
        out.append((logits.detach(), grads))
    assert calls and calls[0] == int(mask.sum()) + 5 * 4  # the real tokens only, prompt too
    torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-5, atol=1e-5)
    for name, g in out[0][1].items():
        torch.testing.assert_close(out[1][1][name], g, rtol=1e-5, atol=1e-6, msg=name)
    # the routes differ where they should: the dropout masks do matter in training
    if train:
        torch.manual_seed(4)
        assert not torch.allclose(unpadded(ids, mask), out[1][0])
