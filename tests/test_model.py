"""The wrapped model against the plain Hugging Face model called with inputs_embeds (PEFT's
route)."""

import pytest
import torch
from helpers import padded_ids, tiny_backbone, tiny_config
from torch import nn

from xpe_fast import PromptedEncoderForSequenceClassification

METHODS = [0.0, 0.3, 0.7, 1.0]


def peft_style_logits(model, backbone, ids, mask):
    """What PEFT computes: inputs_embeds = cat(prompt, word_embeddings(ids)), mask extended."""
    prompt = model.prompt()
    B = ids.shape[0]
    embeds = torch.cat(
        [prompt.unsqueeze(0).expand(B, -1, -1), backbone.embeddings.word_embeddings(ids)], dim=1
    )
    ext = torch.cat([torch.ones(B, prompt.shape[0], dtype=mask.dtype), mask], dim=1)
    hidden = backbone(inputs_embeds=embeds, attention_mask=ext).last_hidden_state
    return model.head(hidden[:, 0])


@pytest.mark.parametrize("kind", ["xlmr", "bert"])
@pytest.mark.parametrize("ratio", METHODS)
@pytest.mark.parametrize("backend", [None, "reference"])
def test_logits_match_hugging_face_inputs_embeds(kind, ratio, backend):
    backbone = tiny_backbone(kind)
    model = PromptedEncoderForSequenceClassification(
        backbone,
        7,
        num_virtual_tokens=5,
        encoder_ratio=ratio,
        encoder_hidden_size=16,
        backend=backend,
    ).eval()
    ids, mask = padded_ids(4, 11, backbone.config.vocab_size)
    logits = model(ids, mask)
    expected = peft_style_logits(model, backbone, ids, mask)
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["xlmr", "bert"])
@pytest.mark.parametrize("ratio", METHODS)
def test_backbone_frozen_and_trainables_get_gradients(kind, ratio):
    backbone = tiny_backbone(kind)
    model = PromptedEncoderForSequenceClassification(
        backbone, 3, num_virtual_tokens=4, encoder_ratio=ratio, encoder_hidden_size=8
    )
    model.train()
    ids, mask = padded_ids(3, 9, backbone.config.vocab_size)
    loss, _ = model(ids, mask, labels=torch.tensor([0, 1, 2]))
    loss.backward()
    for name, p in model.backbone.named_parameters():
        assert not p.requires_grad and p.grad is None, name
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith(("prompt.", "head.")) for n, _ in trainable)
    for n, p in trainable:
        assert p.grad is not None and torch.isfinite(p.grad).all(), n


def test_positions_continue_through_the_prompt():
    """XLM-R numbers slots from padding_idx + 1 with the prompt included; BERT from 0."""
    for kind, offset in (("xlmr", 2), ("bert", 0)):
        model = PromptedEncoderForSequenceClassification(
            tiny_backbone(kind), 2, num_virtual_tokens=3
        )
        assert model.parts.position_offset == offset


def test_bert_head_starts_from_the_pooler():
    backbone = tiny_backbone("bert")
    model = PromptedEncoderForSequenceClassification(backbone, 2, num_virtual_tokens=3)
    assert model.head.style == "bert"
    torch.testing.assert_close(model.head.dense.weight, backbone.pooler.dense.weight)
    assert model.head.dense.weight.requires_grad


def _count(kind, ratio, hidden, ffn, layers, heads):
    import transformers as T

    cfg = tiny_config(
        kind, vocab=250002, hidden=hidden, layers=layers, heads=heads, ffn=ffn, max_pos=514
    )
    cls = {"xlmr": T.XLMRobertaModel, "bert": T.BertModel}[kind]
    with torch.device("meta"):  # XLM-R large's shapes without allocating 560 M weights
        backbone = cls(cfg)
        model = PromptedEncoderForSequenceClassification(
            backbone, 7, num_virtual_tokens=20, encoder_ratio=ratio, encoder_hidden_size=256
        )
    return model.num_trainable_parameters()


@pytest.mark.parametrize(
    "ratio,expected", [(1.0, 1_668_615), (0.3, 1_668_615), (0.7, 1_668_615), (0.0, 1_077_255)]
)
def test_trainable_parameters_of_xlmr_large_match_the_paper(ratio, expected):
    assert _count("xlmr", ratio, 1024, 4096, 24, 16) == expected


def test_bad_configuration_is_rejected():
    backbone = tiny_backbone("xlmr", max_pos=30)
    with pytest.raises(ValueError, match="encoder_ratio"):
        PromptedEncoderForSequenceClassification(backbone, 2, encoder_ratio=1.2)
    with pytest.raises(ValueError, match="num_virtual_tokens"):
        PromptedEncoderForSequenceClassification(backbone, 2, num_virtual_tokens=0)
    with pytest.raises(ValueError, match="position table"):
        PromptedEncoderForSequenceClassification(backbone, 2, num_virtual_tokens=28)
    with pytest.raises(ValueError, match="no recognizable embedding layer"):
        PromptedEncoderForSequenceClassification(nn.Linear(3, 3), 2)
    model = PromptedEncoderForSequenceClassification(backbone, 2, num_virtual_tokens=20)
    ids = torch.full((1, 9), 5)
    with pytest.raises(ValueError, match="exceed"):
        model(ids)


def test_accepts_a_model_with_a_head():
    import transformers as T

    cfg = tiny_config("xlmr")
    cfg.num_labels = 3
    full = T.XLMRobertaForSequenceClassification(cfg)
    model = PromptedEncoderForSequenceClassification(full, 7, num_virtual_tokens=2)
    assert model.backbone is full.roberta


def _tiny(cls_name, cfg_name, **kw):
    import transformers as T

    torch.manual_seed(0)
    base = dict(
        vocab_size=100,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    base.update(kw)
    return getattr(T, cls_name)(getattr(T, cfg_name)(**base)).eval()


@pytest.mark.parametrize(
    "cls_name,cfg_name,kw,why",
    [
        ("DebertaV2Model", "DebertaV2Config", {}, "logits differ"),
        ("ElectraModel", "ElectraConfig", {"embedding_size": 8}, "fused route fails"),
    ],
)
def test_unsupported_encoders_are_refused_naming_what_is_supported(cls_name, cfg_name, kw, why):
    from xpe_fast.model import UnsupportedBackboneError

    with pytest.raises(UnsupportedBackboneError, match=why) as e:
        PromptedEncoderForSequenceClassification(
            _tiny(cls_name, cfg_name, **kw), 7, num_virtual_tokens=4, encoder_hidden_size=8
        )
    assert "supported: bert, roberta, xlm-roberta" in str(e.value)


def test_an_other_family_is_accepted_when_it_matches_the_reference_route():
    # ELECTRA with embedding size = hidden size is a BERT-style encoder: same logits.
    bb = _tiny("ElectraModel", "ElectraConfig", embedding_size=16)
    m = PromptedEncoderForSequenceClassification(
        bb, 7, num_virtual_tokens=4, encoder_hidden_size=8
    ).eval()
    ids = torch.randint(3, 100, (3, 9))
    with torch.no_grad():
        fused = m(ids)
        m.set_backend("reference")
        ref = m(ids)
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-5)
