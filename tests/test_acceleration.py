"""acceleration.accelerate / restore: every change the package makes to a backbone is undone,
leaving the Hugging Face object it was (compared with a freshly built copy)."""

import pytest
import torch
from helpers import padded_ids, tiny_backbone

from xpe_fast import PromptedEncoderForSequenceClassification
from xpe_fast.acceleration import accelerate, is_accelerated, restore


def fingerprint(m: torch.nn.Module) -> dict:
    """Classes, instance attributes, config and tensors of every submodule."""
    return {
        "classes": [(n, type(x)) for n, x in m.named_modules()],
        "dicts": [
            (n, sorted(k for k in x.__dict__ if k not in ("_parameters", "_buffers", "_modules")))
            for n, x in m.named_modules()
        ],
        "config": m.config.to_dict(),
        "attn": m.config._attn_implementation,
        "state": {k: v.clone() for k, v in m.state_dict().items()},
    }


@pytest.mark.parametrize("kind", ["xlmr", "bert"])
def test_restore_gives_back_the_hugging_face_backbone(kind):
    fresh = fingerprint(tiny_backbone(kind, dropout=0.1))
    bb = tiny_backbone(kind, dropout=0.1)
    model = PromptedEncoderForSequenceClassification(
        bb, 7, num_virtual_tokens=4, encoder_hidden_size=8, accelerate=True
    )
    assert is_accelerated(bb) and fingerprint(bb)["classes"] != fresh["classes"]
    ids, mask = padded_ids(3, 9, 211)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # fills the bf16 weight caches
        model(ids, mask, labels=torch.zeros(3, dtype=torch.long))[0].backward()
    model.eval()
    with torch.inference_mode():  # builds the fused QKV layers
        model(ids, mask)
    model.set_backend("reference")  # PEFT's route: the untouched Hugging Face backbone
    after = fingerprint(bb)
    for key in ("classes", "dicts", "config", "attn"):
        assert after[key] == fresh[key], key
    assert after["state"].keys() == fresh["state"].keys()
    for k, v in fresh["state"].items():
        torch.testing.assert_close(after["state"][k], v, rtol=0, atol=0)
    model.set_backend(None)  # and back: accelerated again, same logits as the reference
    with torch.no_grad():
        fast = model(ids, mask)
        restore(model.backbone)
        assert not is_accelerated(bb)
        model.backend = "reference"
        ref = model(ids, mask)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


def test_accelerate_is_idempotent():
    bb = tiny_backbone("xlmr")
    accelerate(accelerate(bb))
    restore(bb)
    assert fingerprint(bb)["classes"] == fingerprint(tiny_backbone("xlmr"))["classes"]
