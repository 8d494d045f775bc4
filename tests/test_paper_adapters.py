"""The paper's own adapters (bmikaberidze/XPE): the files its save_pretrained writes for SPT,
XPE and DUAL runs (the prompt under `prompt_encoder.*`, its split int(N * r), both key
generations, with or without PEFT's wrappers), read against an independent peer (plain
transformers with the prompt built by an MLP laid out as the paper's gen_mlp_head), and used
through the commands: evaluate, continue training, export. What cannot be mapped is refused in
one line, never loaded partly."""

import json

import pytest
import torch
from helpers import padded_ids, tiny_config
from safetensors.torch import load_file, save_file

from xpe_fast.adapter import AdapterMismatchError, build_model_for_adapter, load_adapter
from xpe_fast.interop import read_any_adapter

LABELS = 7


def paper_split(n: int, r: float) -> tuple[int, int]:
    """(SPT rows, XPE rows) as the paper's CrossPromptEncoder sizes its two tables."""
    if r == 0:
        return n, 0
    if r == 1:
        return 0, n
    x = max(1, min(n - 1, int(n * r)))
    return n - x, x


def paper_mlp(d_in: int, h: int, d: int, layers: int = 2) -> torch.nn.Sequential:
    """The paper's prompt MLP for encoder_num_layers `layers`: Linear, ReLU, Dropout, then
    (Linear, ReLU, Dropout) per extra layer, then the output Linear."""
    hidden = []
    for _ in range(layers - 1):
        hidden += [torch.nn.Linear(h, h), torch.nn.ReLU(), torch.nn.Dropout(0.1)]
    return torch.nn.Sequential(
        torch.nn.Linear(d_in, h), torch.nn.ReLU(), torch.nn.Dropout(0.1), *hidden,
        torch.nn.Linear(h, d),
    )  # fmt: skip


def paper_config(n, r, d, h, d_in=None, layers=2, base="base"):
    """adapter_config.json as CrossPromptEncoderConfig.save_pretrained writes it (peft 0.14:
    every dataclass field, sorted, indent 2)."""
    modules = (["embedding"] if r < 1 else []) + (["xpe_embedding", "xpe_head"] if r > 0 else [])
    return {
        "auto_mapping": None,
        "base_model_name_or_path": base,
        "encoder_dropout": 0.1,
        "encoder_embedding_freeze": False,
        "encoder_embedding_init_type": "hf_default",
        "encoder_embedding_normalize": None,
        "encoder_embedding_normalize_max_norm": None,
        "encoder_freeze": False,
        "encoder_hidden_size": h,
        "encoder_init_state_dict_path": None,
        "encoder_input_size": d_in,
        "encoder_num_heads": 8,
        "encoder_num_layers": layers,
        "encoder_ratio": r,
        "encoder_reparameterization_type": "MLP",
        "inference_mode": True,
        "modules_to_save": modules,
        "num_attention_heads": 4,
        "num_layers": 2,
        "num_transformer_submodules": 1,
        "num_virtual_tokens": n,
        "peft_type": "P_TUNING",
        "revision": None,
        "task_type": "SEQ_CLS",
        "token_dim": d,
    }


def paper_tensors(n, r, d, h, d_in=None, layers=2, old_key=False, seed=0):
    """A trained paper model's tensors under the names its save_pretrained writes: the
    prompt module's (`prompt_encoder.*`) and the RoBERTa head's (`base_model.classifier.*`),
    every one random; plus the MLP module that holds them."""
    torch.manual_seed(seed)
    d_in = d_in or d
    n_spt, n_xpe = paper_split(n, r)
    t = {}
    if n_spt:
        t["prompt_encoder.embedding.weight"] = torch.randn(n_spt, d)
    mlp = None
    if n_xpe:
        key = "embedding" if old_key else "xpe_embedding"
        t[f"prompt_encoder.{key}.weight"] = torch.randn(n_xpe, d_in)
        mlp = paper_mlp(d_in, h, d, layers).eval()
        for k, v in mlp.state_dict().items():
            t[f"prompt_encoder.xpe_head.{k}"] = v.clone()
    t["base_model.classifier.dense.weight"] = torch.randn(d, d) / d**0.5
    t["base_model.classifier.dense.bias"] = torch.randn(d)
    t["base_model.classifier.out_proj.weight"] = torch.randn(LABELS, d) / d**0.5
    t["base_model.classifier.out_proj.bias"] = torch.randn(LABELS)
    return t, mlp


def wrapped_names(t: dict) -> dict:
    """The same tensors as PeftModel.state_dict() names them (prompt_encoder.default.<module>
    and the classifier inside ModulesToSaveWrapper), with the wrappers' untrained
    original_module copies beside them (other values: they must never be read)."""
    out = {}
    for k, v in t.items():
        if k.startswith("prompt_encoder."):
            module, rest = k[len("prompt_encoder.") :].split(".", 1)
            pre = f"base_model.model.prompt_encoder.default.{module}"
        else:
            rest = k[len("base_model.classifier.") :]
            pre = "base_model.model.classifier"
        out[f"{pre}.modules_to_save.default.{rest}"] = v
        out[f"{pre}.original_module.{rest}"] = torch.zeros_like(v)
    return out


def write_paper_adapter(folder, t, cfg, wrapped=False):
    folder.mkdir(parents=True)
    names = wrapped_names(t) if wrapped else t
    save_file(
        {k: v.contiguous() for k, v in names.items()}, str(folder / "adapter_model.safetensors")
    )
    (folder / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return folder


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny random XLM-R with room for 90 virtual tokens."""
    import transformers as T

    torch.manual_seed(11)
    folder = tmp_path_factory.mktemp("paper") / "xlmr"
    T.XLMRobertaModel(tiny_config("xlmr", max_pos=128)).save_pretrained(folder)
    return str(folder)


def peer_logits(base, t, mlp, ids, mask):
    """Plain transformers as the paper's PEFT route runs it: the prompt (SPT rows, then the
    MLP over the XPE rows) in front of the token embeddings as inputs_embeds, the head at
    slot 0."""
    import transformers as T

    model = T.XLMRobertaForSequenceClassification.from_pretrained(base, num_labels=LABELS)
    model.classifier.load_state_dict(
        {k[len("base_model.classifier.") :]: v for k, v in t.items() if "classifier" in k}
    )
    model.eval()
    emb = t.get("prompt_encoder.embedding.weight")
    xpe = t.get("prompt_encoder.xpe_embedding.weight")
    with torch.no_grad():
        if mlp is None:
            rows = [emb]
        elif xpe is None:  # the old key: the XPE input table
            rows = [mlp(emb)]
        else:
            rows = ([emb] if emb is not None else []) + [mlp(xpe)]
    with torch.no_grad():
        prompt = torch.cat(rows)
        words = model.roberta.embeddings.word_embeddings(ids)
        embeds = torch.cat([prompt.expand(ids.shape[0], -1, -1), words], dim=1)
        full = torch.cat([torch.ones(ids.shape[0], prompt.shape[0], dtype=mask.dtype), mask], 1)
        return model(inputs_embeds=embeds, attention_mask=full).logits


def our_logits(base, folder, ids, mask):
    import transformers as T

    conf, tensors = read_any_adapter(folder)
    model = build_model_for_adapter(T.AutoModel.from_pretrained(base), conf).eval()
    load_adapter(folder, model, base, (conf, tensors))
    with torch.no_grad():
        return conf, model(ids, mask)


CASES = [(20, 0.0), (20, 0.3), (20, 0.7), (20, 1.0), (90, 0.7)]


@pytest.mark.parametrize("wrapped", [False, True], ids=["saved", "wrapped"])
@pytest.mark.parametrize("n,r", CASES)
def test_paper_adapters_load_with_the_papers_split_and_logits(base, tmp_path, n, r, wrapped):
    d, h = 24, 10
    t, mlp = paper_tensors(n, r, d, h)
    folder = write_paper_adapter(tmp_path / "a", t, paper_config(n, r, d, h), wrapped)
    ids, mask = padded_ids(3, 9, 211)
    conf, ours = our_logits(base, folder, ids, mask)
    n_spt, n_xpe = paper_split(n, r)
    assert (conf["num_spt_tokens"], conf["num_xpe_tokens"]) == (n_spt, n_xpe)
    assert conf["encoder_ratio"] == r and conf["source_format"] == "bmikaberidze/XPE"
    want = peer_logits(base, t, mlp, ids, mask)
    torch.testing.assert_close(ours, want, rtol=0, atol=2e-5)


def test_the_papers_split_differs_from_rounding_where_the_issue_says():
    from xpe_fast.prompt import split_virtual_tokens

    for n, r in [(50, 0.58), (90, 0.7), (100, 0.29), (100, 0.57), (100, 0.58)]:
        assert paper_split(n, r) != split_virtual_tokens(n, r)
        # an explicit split (a loaded adapter's) is taken as it is
        assert split_virtual_tokens(n, r, paper_split(n, r)[1]) == paper_split(n, r)


@pytest.mark.parametrize("wrapped", [False, True], ids=["saved", "wrapped"])
def test_old_key_xpe_adapter_loads_its_table_as_the_xpe_input(base, tmp_path, wrapped):
    d, h = 24, 10
    t, mlp = paper_tensors(20, 1.0, d, h, old_key=True)
    folder = write_paper_adapter(tmp_path / "a", t, paper_config(20, 1.0, d, h), wrapped)
    ids, mask = padded_ids(3, 9, 211)
    conf, ours = our_logits(base, folder, ids, mask)
    assert conf["method"] == "xpe" and conf["num_xpe_tokens"] == 20
    torch.testing.assert_close(ours, peer_logits(base, t, mlp, ids, mask), rtol=0, atol=2e-5)


def test_an_xpe_table_narrower_than_the_backbone_loads(base, tmp_path):
    d, h, d_in = 24, 10, 13
    t, mlp = paper_tensors(20, 1.0, d, h, d_in=d_in)
    folder = write_paper_adapter(tmp_path / "a", t, paper_config(20, 1.0, d, h, d_in=d_in))
    ids, mask = padded_ids(3, 9, 211)
    conf, ours = our_logits(base, folder, ids, mask)
    assert conf["encoder_input_size"] == d_in
    torch.testing.assert_close(ours, peer_logits(base, t, mlp, ids, mask), rtol=0, atol=2e-5)


def _deeper(t, d, h):
    return paper_tensors(20, 1.0, d, h, layers=3)[0]  # Linear at 0, 3, 6, 9


def _shallower(t, d, h):
    return paper_tensors(20, 1.0, d, h, layers=1)[0]  # Linear at 0, 3


def _lstm(t, d, h):
    t = dict(t)
    t["prompt_encoder.xpe_head.lstm.weight_ih_l0"] = torch.randn(4 * h, d)
    return t


def _ratio_says_dual(t, d, h):
    return t  # with the config edited below


@pytest.mark.parametrize(
    "edit,cfg_edit,match",
    [
        (_deeper, {}, r"prompt_encoder\.xpe_head\.9\.weight does not fit.*4 Linear layers"),
        (_shallower, {}, r"prompt_encoder\.xpe_head\.3\.weight does not fit.*2 Linear layers"),
        (_lstm, {}, r"prompt_encoder\.xpe_head\.lstm\.weight_ih_l0 does not fit"),
        (_ratio_says_dual, {"encoder_ratio": 0.3}, r"old layout.*encoder_ratio 0.3"),
        (_ratio_says_dual, {"num_virtual_tokens": 21}, r"num_virtual_tokens 21.*20 rows"),
    ],
)
def test_what_cannot_be_mapped_is_refused_in_one_line(base, tmp_path, edit, cfg_edit, match):
    # d == h: the shapes of a deeper MLP fit xpe_fast's three layers; it must still be refused
    d = h = 24
    t, _ = paper_tensors(20, 1.0, d, h, old_key=True)
    folder = write_paper_adapter(
        tmp_path / "a", edit(t, d, h), {**paper_config(20, 1.0, d, h), **cfg_edit}
    )
    with pytest.raises(AdapterMismatchError, match=match) as e:
        read_any_adapter(folder)
    assert "\n" not in str(e.value)


def test_a_ratio_that_contradicts_the_tensors_is_refused(tmp_path):
    t, _ = paper_tensors(20, 0.0, 24, 10)
    folder = write_paper_adapter(tmp_path / "a", t, paper_config(20, 0.3, 24, 10))
    with pytest.raises(AdapterMismatchError, match=r"encoder_ratio 0.3 \(dual\).*20 SPT and 0 XPE"):
        read_any_adapter(folder)


def test_wrapped_files_read_the_trained_copy_not_the_original_module(tmp_path):
    t, _ = paper_tensors(20, 0.3, 24, 10)
    folder = write_paper_adapter(tmp_path / "a", t, paper_config(20, 0.3, 24, 10), wrapped=True)
    conf, tensors = read_any_adapter(folder)
    torch.testing.assert_close(
        tensors["prompt.spt_embedding"], t["prompt_encoder.embedding.weight"], rtol=0, atol=0
    )
    torch.testing.assert_close(
        tensors["prompt.encoder.fc3.weight"], t["prompt_encoder.xpe_head.6.weight"], rtol=0, atol=0
    )


# ---- through the commands ----------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_env(shared_dir, tmp_path_factory):
    from test_cli import tiny_xlmr

    root = tmp_path_factory.mktemp("paper-cli")
    return {
        "backbone": tiny_xlmr(root / "tiny"),
        "tokenizer": str(shared_dir / "xlmr-tokenizer" / "tokenizer.json"),
        "data": str(shared_dir / "sib200"),
    }


def evaluate_args(env, adapter, *extra, languages="amh_Ethi"):
    from test_cli import eval_args

    return eval_args(env, adapter, "--precision", "fp32", *extra, languages=languages)


def train_args(env, out, *extra):
    from test_cli import base_args

    return base_args(env, out, "--targets", "amh_Ethi", "--steps", "1", "--eval-every", "1", *extra)


@pytest.mark.parametrize("n,r,method", [(20, 0.0, "spt"), (90, 0.7, "dual"), (20, 1.0, "xpe")])
def test_paper_adapters_evaluate_continue_and_export(cli_env, tmp_path, capsys, n, r, method):
    from xpe_fast import evaluate, export, train

    d, h = 16, 8
    t, _ = paper_tensors(n, r, d, h, old_key=method == "xpe")
    paper = write_paper_adapter(tmp_path / "paper", t, paper_config(n, r, d, h))
    langs = "amh_Ethi,fra_Latn"
    # evaluate the paper's adapter, and its PEFT export: the same numbers
    peft_dir = tmp_path / "peft"
    assert export.main(["--adapter", str(paper), "--out", str(peft_dir)]) == 0
    rows = {}
    for name, folder in (("paper", paper), ("peft", peft_dir)):
        csv = tmp_path / f"{name}.csv"
        args = evaluate_args(cli_env, folder, "--output", str(csv), languages=langs)
        assert evaluate.main(args) == 0, capsys.readouterr().err
        rows[name] = csv.read_text().splitlines()
    assert rows["paper"] == rows["peft"] and len(rows["paper"]) == 3
    # continue training from it: after one step at a negligible learning rate the saved
    # tensors are the paper's, in the paper's split
    out = tmp_path / "cont"
    extra = ["--method", method, "--num-virtual-tokens", str(n), "--encoder-hidden-size", str(h)]
    if method == "dual":
        extra += ["--encoder-ratio", str(r)]
    code = train.main(
        train_args(cli_env, out, *extra, "--lr", "1e-12", "--lr-prompt", "1e-12",
                   "--init-adapter", str(paper))
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    saved = load_file(str(out / "seed-0/adapter/adapter.safetensors"))
    conf = json.loads((out / "seed-0/adapter/adapter_config.json").read_text())
    assert (conf["num_spt_tokens"], conf["num_xpe_tokens"]) == paper_split(n, r)
    _, imported = read_any_adapter(paper)
    for k, v in imported.items():
        torch.testing.assert_close(saved[k], v, rtol=0, atol=1e-6, msg=k)


def test_an_unmappable_paper_adapter_is_one_line_from_evaluate(cli_env, tmp_path, capsys):
    from xpe_fast import evaluate

    t, _ = paper_tensors(20, 1.0, 16, 16, layers=3)
    paper = write_paper_adapter(tmp_path / "deep", t, paper_config(20, 1.0, 16, 16, layers=3))
    code = evaluate.main(evaluate_args(cli_env, paper))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "xpe_head.9.weight" in err, err


def test_any_encoder_input_size_trains_evaluates_and_continues(cli_env, tmp_path, capsys):
    from xpe_fast import evaluate, train

    out = tmp_path / "narrow"
    extra = ["--method", "xpe", "--num-virtual-tokens", "4", "--encoder-hidden-size", "8"]
    assert train.main(train_args(cli_env, out, *extra, "--encoder-input-size", "5")) == 0
    adapter = out / "seed-0/adapter"
    conf = json.loads((adapter / "adapter_config.json").read_text())
    assert conf["encoder_input_size"] == 5
    assert load_file(str(adapter / "adapter.safetensors"))["prompt.xpe_embedding"].shape == (4, 5)
    args = evaluate_args(cli_env, adapter)
    assert evaluate.main(args) == 0
    # continued without naming the width: the adapter's is taken
    assert (
        train.main(train_args(cli_env, tmp_path / "c", *extra, "--init-adapter", str(adapter))) == 0
    )
    # a width that contradicts the adapter's: one line
    capsys.readouterr()
    code = train.main(
        train_args(cli_env, tmp_path / "bad", *extra, "--encoder-input-size", "6",
                   "--init-adapter", str(adapter))
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "encoder_input_size" in err and err.count("\n") == 1
