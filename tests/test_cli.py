"""The command-line tools end to end on a tiny random XLM-R and three SIB-200 languages."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from xpe_fast import data as D
from xpe_fast import evaluate, train


def tiny_xlmr(folder, hidden=16, seed=0):
    import transformers as T

    torch.manual_seed(seed)
    cfg = T.XLMRobertaConfig(
        vocab_size=250002,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=220,
        pad_token_id=1,
    )
    T.XLMRobertaModel(cfg).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def env(shared_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    return {
        "backbone": tiny_xlmr(root / "tiny"),
        "other": tiny_xlmr(root / "other", hidden=8),
        "tokenizer": str(shared_dir / "xlmr-tokenizer" / "tokenizer.json"),
        "data": str(shared_dir / "sib200"),
        "root": root,
    }


def base_args(env, out, *extra):
    return [
        "--backbone",
        env["backbone"],
        "--tokenizer",
        env["tokenizer"],
        "--data-dir",
        env["data"],
        "--source",
        "eng_Latn",
        "--targets",
        "amh_Ethi,fra_Latn",
        "--steps",
        "4",
        "--eval-every",
        "2",
        "--batch-size",
        "8",
        "--eval-batch-size",
        "64",
        "--num-virtual-tokens",
        "4",
        "--encoder-hidden-size",
        "8",
        "--threads",
        "1",
        "--precision",
        "fp32",
        "--no-progress",
        "--output-dir",
        str(out),
        *extra,
    ]


def eval_args(env, adapter, *extra, languages="amh_Ethi", backbone=None):
    """xpe_fast.evaluate's arguments on the tiny backbone and SIB-200, in one place."""
    return [
        "--adapter",
        str(adapter),
        "--backbone",
        backbone or env["backbone"],
        "--tokenizer",
        env["tokenizer"],
        "--data-dir",
        env["data"],
        "--languages",
        languages,
        "--no-progress",
        *extra,
    ]


def interrupted_by_ctrl_c(args, out: Path) -> tuple[int, str]:
    """The training command in a process of its own, sent a real SIGINT (Ctrl-C) once its
    first checkpoint is written: stopped first (SIGSTOP), so the signal lands while work is
    left, then continued. Returns (exit code, stderr)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(repo))
    cmd = [sys.executable, "-m", "xpe_fast.train", *args]
    p = subprocess.Popen(cmd, cwd=repo, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "seed-0" / "checkpoint.safetensors").is_file():
        assert p.poll() is None and time.time() < deadline, "no checkpoint was written"
        time.sleep(0.01)
    p.send_signal(signal.SIGSTOP)
    p.send_signal(signal.SIGINT)
    p.send_signal(signal.SIGCONT)
    _, err = p.communicate(timeout=300)
    return p.returncode, err


def run_train(args, capsys):
    code = train.main(args)
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err
    return code, cap


def test_train_writes_every_output(env, capsys):
    out = env["root"] / "run"
    code, cap = run_train(base_args(env, out), capsys)
    assert code == 0, cap.err
    for name in (
        "summary.json",
        "accuracy.csv",
        "accuracy.png",
        "train.log",
        "run_config.json",
        "seed-0/adapter/adapter.safetensors",
        "seed-0/adapter/adapter_config.json",
        "seed-0/zero_shot_accuracy.csv",
        "seed-0/results.json",
    ):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["per_language"]["zero_shot"]) == {"amh_Ethi", "fra_Latn"}
    assert summary["config"]["seeds"] == [0]
    assert "Seen w/o Joshi5" in cap.out and "target group" in cap.out
    cfg = json.loads((out / "seed-0/adapter/adapter_config.json").read_text())
    assert cfg["method"] == "xpe" and cfg["labels"] == list(D.LABELS)
    tensors = load_file(str(out / "seed-0/adapter/adapter.safetensors"))
    assert "prompt.encoder.fc1.weight" in tensors and tensors["static_prompt"].shape == (4, 16)

    # The same folder again: refused, and nothing already written is lost.
    before = (out / "summary.json").read_bytes()
    code, cap = run_train(base_args(env, out), capsys)
    assert code == 2 and "already holds a run" in cap.err
    assert (out / "summary.json").read_bytes() == before
    # Another run's settings with --resume: refused too.
    code, cap = run_train(base_args(env, out, "--method", "spt", "--resume"), capsys)
    assert code == 2 and "holds another run" in cap.err

    # Evaluate the saved adapter; a different backbone is refused.
    code = evaluate.main(eval_args(env, str(out / "seed-0/adapter"), "--precision", "fp32"))
    cap = capsys.readouterr()
    assert code == 0, cap.err
    code = evaluate.main(eval_args(env, str(out / "seed-0/adapter"), backbone=env["other"]))
    cap = capsys.readouterr()
    assert code == 2 and "saved for backbone" in cap.err and "Traceback" not in cap.err


METHODS = {
    "spt": ["--method", "spt"],
    "xpe": ["--method", "xpe"],
    "dual-0.3": ["--method", "dual", "--encoder-ratio", "0.3"],
    "dual-0.7": ["--method", "dual", "--encoder-ratio", "0.7"],
}


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_trains_resumes_exactly_and_evaluates(
    env, capsys, monkeypatch, tmp_path, method
):
    full = tmp_path / "full"
    args = base_args(env, full, "--steps", "6", *METHODS[method])
    assert run_train(args, capsys)[0] == 0
    part = tmp_path / "part"
    code, err = interrupted_by_ctrl_c(base_args(env, part, "--steps", "6", *METHODS[method]), part)
    assert code == 130 and "--resume" in err, err
    code, cap = run_train(
        base_args(env, part, "--steps", "6", "--resume", *METHODS[method]), capsys
    )
    assert code == 0, cap.err
    a = load_file(str(full / "seed-0/adapter/adapter.safetensors"))
    b = load_file(str(part / "seed-0/adapter/adapter.safetensors"))
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    cfg = json.loads((part / "seed-0/adapter/adapter_config.json").read_text())
    assert cfg["method"] == method.split("-")[0]
    assert ("prompt.encoder.fc1.weight" in a) == (method != "spt")
    assert ("prompt.spt_embedding" in a) == (method != "xpe")
    summary = json.loads((part / "summary.json").read_text())
    assert summary["wall_seconds_total"] >= summary["wall_seconds"] > 0
    # The saved adapter evaluates to the run's own numbers (the backbone given with a
    # trailing slash is the same backbone).
    code = evaluate.main(
        eval_args(
            env,
            str(part / "seed-0/adapter"),
            "--precision",
            "fp32",
            "--output",
            str(tmp_path / "acc.csv"),
            languages="amh_Ethi,fra_Latn",
            backbone=env["backbone"] + "/",
        )
    )
    cap = capsys.readouterr()
    assert code == 0, cap.err
    rows = (tmp_path / "acc.csv").read_text().splitlines()[1:]
    got = {r.split(",")[0]: float(r.split(",")[2]) for r in rows}
    for lang, acc in summary["per_language"]["zero_shot"].items():
        assert got[lang] == pytest.approx(acc, abs=1e-4), lang


def test_grid_runs_every_method_and_seed_and_continues(env, capsys, tmp_path):
    out = tmp_path / "grid"
    args = base_args(env, out, "--steps", "2", "--methods", "spt,xpe,dual-30", "--seeds", "0,1")
    code, cap = run_train(args, capsys)
    assert code == 0, cap.err
    for tag in ("spt", "xpe", "dual-0.3"):
        for seed in (0, 1):
            assert (out / tag / f"seed-{seed}" / "results.json").is_file()
        assert (out / tag / "summary.json").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == {"spt", "xpe", "dual-0.3"}
    assert summary["config"]["methods"] == ["spt", "xpe", "dual-0.3"]
    assert summary["methods"]["xpe"]["seeds"] == [0, 1]
    assert "spt" in cap.out and "dual-0.3" in cap.out and "±" in cap.out
    # An interrupted grid continues: only the missing run is redone.
    (out / "xpe" / "seed-1" / "results.json").unlink()
    kept = (out / "spt" / "seed-1" / "results.json").stat().st_mtime_ns
    code, cap = run_train(args + ["--resume"], capsys)
    assert code == 0, cap.err
    assert (out / "spt" / "seed-1" / "results.json").stat().st_mtime_ns == kept
    again = json.loads((out / "summary.json").read_text())
    assert again["methods"]["xpe"]["groups"] == summary["methods"]["xpe"]["groups"]


def snapshot(*roots):
    """Every file and folder under `roots`, with size and modification time."""
    out = {}
    for root in roots:
        for p in sorted(Path(root).rglob("*")):
            st = p.stat()
            out[str(p)] = (p.is_dir(), st.st_size, st.st_mtime_ns)
    return out


BAD_TRAIN = [
    (["--targets", "xx_Latn"], "unknown language or group"),
    (["--source", "joshi6"], "unknown language or group"),
    (["--data-dir", "/nonexistent/sib200"], "does not exist"),
    (["--method", "spt", "--encoder-ratio", "0.5"], "does not match"),
    (["--method", "dual", "--encoder-ratio", "1.5"], "--encoder-ratio must be in [0, 1]"),
    (["--encoder-ratio", "1.5"], "--encoder-ratio must be in [0, 1]"),
    (["--encoder-ratio", "nan"], "--encoder-ratio must be a finite number"),
    (["--encoder-ratio", "-0.1"], "--encoder-ratio must be in [0, 1]"),
    (["--method", "dual", "--num-virtual-tokens", "1"], "--num-virtual-tokens"),
    (["--prompt-dropout", "1.0"], "--prompt-dropout"),
    (["--prompt-dropout", "-0.1"], "--prompt-dropout"),
    (["--num-virtual-tokens", "600"], "does not fit"),
    (["--num-virtual-tokens", "0"], "--num-virtual-tokens"),
    (["--lr", "-1"], "--lr must be > 0"),
    (["--lr", "inf"], "--lr must be a finite number"),
    (["--lr-prompt", "0"], "--lr-prompt"),
    (["--weight-decay", "-1"], "--weight-decay"),
    (["--warmup", "1.5"], "--warmup"),
    (["--grad-clip", "-1"], "--grad-clip"),
    (["--steps", "0"], "--steps"),
    (["--steps", "x"], "--steps"),
    (["--batch-size", "0"], "--batch-size"),
    (["--eval-every", "0"], "--eval-every"),
    (["--eval-every", "often"], "--eval-every"),
    (["--patience", "0"], "--patience"),
    (["--max-length", "2"], "--max-length"),
    (["--threads", "0"], "--threads"),
    (["--seeds", "a,b"], "--seeds"),
    (["--seeds", "1,1"], "--seeds"),
    (["--seeds", "-1"], "--seeds"),
    (["--methods", "spt,foo"], "--methods"),
    (["--methods", "spt,spt"], "--methods"),
    (["--methods", "spt,xpe", "--method", "xpe"], "--methods"),
    (["--backend", "cuda"], "--backend cuda"),
    (["--backend", "bogus"], "--backend"),
    (["--device", "cuda"], "--device cuda"),
    (["--device", "tpu"], "--device"),
    (["--precision", "fp8"], "--precision"),
    (["--schedule", "cosine-warm"], "--schedule"),
    (["--backbone", "/nonexistent/model"], "--backbone"),
    (["--tokenizer", "/nonexistent/tokenizer.json"], "--tokenizer"),
    (["--resume"], "--resume"),
    (["--config", "/nonexistent.json"], "--config"),
    (["--preset", "fast"], "--preset"),
]


@pytest.mark.parametrize("extra,match", BAD_TRAIN, ids=[" ".join(e) for e, _ in BAD_TRAIN])
def test_user_errors_are_one_line(env, capsys, extra, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    code, cap = run_train(base_args(env, tmp_path / "o", *extra), capsys)
    assert code == 2, cap.err
    assert match in cap.err and cap.err.count("\n") == 1, cap.err
    assert snapshot(tmp_path) == before  # nothing created or changed


def bad_data_dir(root, env, lang, split, content):
    """A copy of three languages' splits with one file replaced by `content`."""
    import shutil

    data = root / "data"
    for l in ("eng_Latn", "amh_Ethi", "fra_Latn"):
        shutil.copytree(Path(env["data"]) / "data" / "annotated" / l, data / l)
    (data / lang / f"{split}.tsv").write_text(content, encoding="utf-8")
    return data


@pytest.mark.parametrize(
    "lang,split,content,match",
    [
        (
            "fra_Latn",
            "test",
            "index_id\tcategory\ttext\n1\tpolitics\n",
            "fra_Latn/test.tsv, line 2",
        ),
        ("amh_Ethi", "test", "index_id\tcategory\ttext\n1\tweather\thello\n", "unknown label"),
        ("eng_Latn", "dev", "id\tlabel\n", "expected the header"),
        ("eng_Latn", "train", "index_id\tcategory\ttext\n", "no rows"),
    ],
)
def test_data_errors_before_any_work(env, capsys, tmp_path, lang, split, content, match):
    data = bad_data_dir(tmp_path, env, lang, split, content)
    before = snapshot(tmp_path)
    args = base_args(env, tmp_path / "o") + ["--data-dir", str(data)]
    code, cap = run_train(args, capsys)
    assert code == 2 and match in cap.err and cap.err.count("\n") == 1, cap.err
    assert snapshot(tmp_path) == before


def test_existing_run_folder_is_untouched_by_a_bad_rerun(env, capsys, tmp_path):
    out = tmp_path / "run"
    assert run_train(base_args(env, out, "--steps", "2"), capsys)[0] == 0
    before = snapshot(tmp_path)
    for extra in (["--lr", "-1", "--resume"], ["--steps", "3", "--resume"], ["--steps", "2"]):
        code, cap = run_train(base_args(env, out, "--steps", "2", *extra), capsys)
        assert code == 2 and cap.err.count("\n") == 1, cap.err
    assert snapshot(tmp_path) == before


def test_config_file_and_unknown_keys(env, capsys, tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"steps": 2, "eval-every": 1, "targets": "amh_Ethi"}))
    code, cap = run_train(base_args(env, tmp_path / "o") + ["--config", str(cfg)], capsys)
    assert code == 0, cap.err
    saved = json.loads((tmp_path / "o" / "run_config.json").read_text())
    assert saved["steps"] == 4  # the command line wins over the file
    cfg.write_text(json.dumps({"stepz": 2}))
    code, cap = run_train(base_args(env, tmp_path / "o2") + ["--config", str(cfg)], capsys)
    assert code == 2 and "unknown key" in cap.err


def test_supervised_regime_trains_on_each_target(env, capsys, tmp_path):
    out = tmp_path / "sup"
    args = base_args(
        env,
        out,
        "--regime",
        "supervised",
        "--targets",
        "amh_Ethi",
        "--steps",
        "2",
        "--target-steps",
        "2",
        "--eval-every",
        "1",
        "--method",
        "dual",
        "--encoder-ratio",
        "0.5",
    )
    code, cap = run_train(args, capsys)
    assert code == 0, cap.err
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["per_language"]) == {"zero_shot", "supervised"}
    assert (out / "seed-0/supervised_accuracy.csv").is_file()
    assert (out / "seed-0/supervised/amh_Ethi/result.json").is_file()
    assert "supervised" in cap.out


@pytest.fixture(scope="module")
def trained_adapter(env):
    out = env["root"] / "for-adapters"
    assert train.main(base_args(env, out, "--steps", "2")) == 0
    return out / "seed-0" / "adapter"


def _truncate(d):
    p = d / "adapter.safetensors"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _garbage(d):
    (d / "adapter.safetensors").write_bytes(b"\x00garbage" * 100)


def _reshape(d):
    from safetensors.torch import save_file

    t = load_file(str(d / "adapter.safetensors"))
    t["head.out_proj.weight"] = torch.zeros(5, t["head.out_proj.weight"].shape[1])
    save_file(t, str(d / "adapter.safetensors"))


def _drop_tensor(d):
    from safetensors.torch import save_file

    t = load_file(str(d / "adapter.safetensors"))
    del t["prompt.encoder.fc2.bias"]
    save_file(t, str(d / "adapter.safetensors"))


def _nan_tensor(d):
    from safetensors.torch import save_file

    t = load_file(str(d / "adapter.safetensors"))
    t["prompt.xpe_embedding"][0, 0] = float("nan")
    save_file(t, str(d / "adapter.safetensors"))


def _edit_config(**kw):
    def edit(d):
        cfg = json.loads((d / "adapter_config.json").read_text())
        cfg.update(kw)
        (d / "adapter_config.json").write_text(json.dumps(cfg))

    return edit


CORRUPT = {
    "truncated weights": (_truncate, "not a readable safetensors file"),
    "garbage weights": (_garbage, "not a readable safetensors file"),
    "missing weights": (lambda d: (d / "adapter.safetensors").unlink(), "is missing"),
    "missing config": (lambda d: (d / "adapter_config.json").unlink(), "no adapter_config.json"),
    "bad json": (lambda d: (d / "adapter_config.json").write_text("{ not json"), "not valid JSON"),
    "json list": (lambda d: (d / "adapter_config.json").write_text("[1, 2]"), "JSON object"),
    "wrong shape": (_reshape, "head.out_proj.weight has shape"),
    "missing tensor": (_drop_tensor, "prompt.encoder.fc2.bias"),
    "nan tensor": (_nan_tensor, "not a finite"),
    "ratio out of range": (_edit_config(encoder_ratio=3), "encoder_ratio"),
    "missing key": (_edit_config(num_virtual_tokens=None), "num_virtual_tokens"),
    "method mismatch": (_edit_config(encoder_ratio=0.0), "num_xpe_tokens 4 does not fit spt"),
    "other hidden size": (_edit_config(hidden_size=32), "shape"),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_adapters_are_one_line_errors(env, trained_adapter, capsys, tmp_path, case):
    import shutil

    corrupt, match = CORRUPT[case]
    d = tmp_path / "adapter"
    shutil.copytree(trained_adapter, d)
    corrupt(d)
    code = evaluate.main(eval_args(env, str(d)))
    cap = capsys.readouterr()
    assert code == 2 and "Traceback" not in cap.err, cap.err
    assert match in cap.err and cap.err.count("\n") == 1, cap.err


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--adapter", "/nonexistent/adapter"], "does not exist"),
        (["--backend", "foo"], "--backend"),
        (["--backend", "cuda"], "--backend cuda"),
        (["--device", "cuda:3"], "--device"),
        (["--languages", "xx_Yyyy"], "unknown language"),
        (["--batch-size", "0"], "--batch-size"),
        (["--max-length", "-3"], "--max-length"),
    ],
)
def test_evaluate_user_errors(env, trained_adapter, capsys, extra, match):
    args = [
        "--adapter",
        str(trained_adapter),
        "--backbone",
        env["backbone"],
        "--tokenizer",
        env["tokenizer"],
        "--data-dir",
        env["data"],
        "--languages",
        "amh_Ethi",
        "--no-progress",
        *extra,
    ]
    code = evaluate.main(args)
    cap = capsys.readouterr()
    assert code == 2 and match in cap.err and cap.err.count("\n") == 1, cap.err


def test_unsupported_encoder_is_refused_before_anything_is_written(env, capsys, tmp_path):
    import transformers as T

    cfg = T.DebertaV2Config(
        vocab_size=250002,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=220,
    )
    T.DebertaV2Model(cfg).save_pretrained(tmp_path / "deberta")
    capsys.readouterr()
    before = snapshot(tmp_path)
    args = base_args(env, tmp_path / "o") + ["--backbone", str(tmp_path / "deberta")]
    code, cap = run_train(args, capsys)
    assert code == 2 and "not supported" in cap.err and cap.err.count("\n") == 1, cap.err
    assert snapshot(tmp_path) == before


def test_export_import_and_continue_training(env, trained_adapter, capsys, tmp_path):
    from xpe_fast import export

    peft_dir = tmp_path / "peft"
    assert export.main(["--adapter", str(trained_adapter), "--out", str(peft_dir)]) == 0
    assert (peft_dir / "adapter_model.safetensors").is_file()
    code = export.main(["--adapter", str(trained_adapter), "--out", str(peft_dir)])
    cap = capsys.readouterr()
    assert code == 2 and "exists" in cap.err and cap.err.count("\n") == 1
    # evaluating the PEFT export gives the xpe_fast adapter's numbers
    args = [
        "--backbone",
        env["backbone"],
        "--tokenizer",
        env["tokenizer"],
        "--data-dir",
        env["data"],
        "--languages",
        "amh_Ethi,fra_Latn",
        "--no-progress",
        "--precision",
        "fp32",
    ]
    outs = {}
    for name, folder in (("ours", trained_adapter), ("peft", peft_dir)):
        assert (
            evaluate.main(
                ["--adapter", str(folder), *args, "--output", str(tmp_path / f"{name}.csv")]
            )
            == 0
        )
        outs[name] = (tmp_path / f"{name}.csv").read_text().splitlines()
    assert outs["ours"] == outs["peft"]
    capsys.readouterr()
    # continue training from an adapter: after one step at a negligible learning rate the
    # tensors are the imported ones
    out = tmp_path / "cont"
    code, cap = run_train(
        base_args(
            env,
            out,
            "--steps",
            "1",
            "--eval-every",
            "1",
            "--lr",
            "1e-12",
            "--lr-prompt",
            "1e-12",
            "--init-adapter",
            str(trained_adapter),
        ),
        capsys,
    )
    assert code == 0, cap.err
    a = load_file(str(trained_adapter / "adapter.safetensors"))
    b = load_file(str(out / "seed-0/adapter/adapter.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    # an adapter that does not fit the run: one line, nothing written
    code, cap = run_train(
        base_args(
            env,
            tmp_path / "bad",
            "--num-virtual-tokens",
            "5",
            "--init-adapter",
            str(trained_adapter),
        ),
        capsys,
    )
    assert code == 2 and "does not fit" in cap.err and cap.err.count("\n") == 1
    assert not (tmp_path / "bad").exists()


def own_data(root):
    """Three synthetic languages, one file format each; labels by keyword."""
    import csv
    import random

    rng = random.Random(0)
    words = {
        "sport": ["ball", "goal", "team"],
        "food": ["bread", "soup", "rice"],
        "music": ["song", "drum", "tune"],
    }

    def rows(lang, n):
        out = []
        for i in range(n):
            label = rng.choice(sorted(words))
            text = " ".join(rng.choice(words[label]) + lang[:2] for _ in range(5))
            out.append({"id": i, "sentence": text, "topic": label})
        return out

    for lang, ext in (("xx_Aaaa", "csv"), ("yy_Bbbb", "tsv"), ("zz_Cccc", "jsonl")):
        (root / lang).mkdir(parents=True)
        for split, n in (("train", 40), ("dev", 12), ("test", 15)):
            path = root / lang / f"{split}.{ext}"
            data = rows(lang, n)
            if ext == "jsonl":
                path.write_text("".join(json.dumps(r) + "\n" for r in data))
            else:
                with open(path, "w", newline="") as f:
                    w = csv.DictWriter(
                        f, ["id", "sentence", "topic"], delimiter="\t" if ext == "tsv" else ","
                    )
                    w.writeheader()
                    w.writerows(data)
    groups = root / "groups.csv"
    groups.write_text("code,group\nzz_Cccc,far\nyy_Bbbb,near\nzz_Cccc,all-targets\n")
    return root, groups


def test_train_and_evaluate_on_own_data(env, capsys, tmp_path):
    data, groups = own_data(tmp_path / "mydata")
    out = tmp_path / "run"
    args = [
        "--backbone",
        env["backbone"],
        "--tokenizer",
        env["tokenizer"],
        "--data",
        str(data),
        "--text-column",
        "sentence",
        "--label-column",
        "topic",
        "--groups",
        str(groups),
        "--source",
        "xx_Aaaa",
        "--targets",
        "far,near",
        "--steps",
        "3",
        "--eval-every",
        "3",
        "--batch-size",
        "8",
        "--num-virtual-tokens",
        "4",
        "--encoder-hidden-size",
        "8",
        "--threads",
        "1",
        "--precision",
        "fp32",
        "--no-progress",
        "--output-dir",
        str(out),
    ]
    code, cap = run_train(args, capsys)
    assert code == 0, cap.err
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["per_language"]["zero_shot"]) == {"zz_Cccc", "yy_Bbbb"}
    assert set(summary["groups"]["zero_shot"]) == {"far", "near", "all-targets"}
    cfg = json.loads((out / "seed-0/adapter/adapter_config.json").read_text())
    assert cfg["labels"] == ["food", "music", "sport"] and cfg["num_labels"] == 3
    code = evaluate.main(
        [
            "--adapter",
            str(out / "seed-0/adapter"),
            "--backbone",
            env["backbone"],
            "--tokenizer",
            env["tokenizer"],
            "--data",
            str(data),
            "--text-column",
            "sentence",
            "--label-column",
            "topic",
            "--languages",
            "zz_Cccc",
            "--no-progress",
            "--precision",
            "fp32",
        ]
    )
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert f"{100 * summary['per_language']['zero_shot']['zz_Cccc']:.1f}" in cap.out
    # a label unseen in training, in a target's test split: one line naming file and line
    with open(data / "zz_Cccc" / "test.jsonl", "a") as f:
        f.write(json.dumps({"id": 99, "sentence": "x", "topic": "weather"}) + "\n")
    code, cap = run_train([*args[:-1], str(tmp_path / "run2")], capsys)
    assert code == 2 and "test.jsonl, line 16" in cap.err and "weather" in cap.err
    code, cap = run_train([*args[:-1], str(tmp_path / "run3"), "--text-column", "txt"], capsys)
    assert code == 2 and "no column 'txt'" in cap.err and cap.err.count("\n") == 1


def test_hub_adapter_offline_says_what_to_download(env, capsys):
    code = evaluate.main(
        [
            "--adapter",
            "mikaberidze/xlmr-large-sib200-peft-xpe-joshi5",
            "--revision",
            "seed-01",
            "--data-dir",
            env["data"],
            "--languages",
            "amh_Ethi",
            "--no-progress",
        ]
    )
    cap = capsys.readouterr()
    assert code == 2 and cap.err.count("\n") == 1, cap.err
    assert (
        "huggingface-cli download mikaberidze/xlmr-large-sib200-peft-xpe-joshi5 "
        "--revision seed-01" in cap.err
    )


def test_own_data_from_the_hub_offline_is_one_line(env, capsys, tmp_path):
    args = base_args(
        env, tmp_path / "o", "--data", "someone/some-dataset", "--source", "en", "--targets", "de"
    )
    code, cap = run_train(args, capsys)
    assert code == 2 and "--data" in cap.err and cap.err.strip().count("\n") == 0, cap.err
    assert not (tmp_path / "o").exists()


def test_prompt_dropout_scope_defaults_to_batch_and_the_paper_preset_to_sample():
    from xpe_fast.config import build_parser, resolve_config

    parse = lambda *a: resolve_config(build_parser().parse_args(["--output-dir", "x", *a]))
    assert parse().prompt_dropout_scope == "batch"
    assert parse("--preset", "paper").prompt_dropout_scope == "sample"
    assert parse("--preset", "paper", "--prompt-dropout-scope", "batch").prompt_dropout_scope == (
        "batch"
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--prompt-dropout-scope", "token"])


def test_the_command_line_is_derived_from_the_settings():
    """One source for each setting: every TrainConfig field is a flag whose help shows the
    field's own default, and no flag given means the field's default."""
    from dataclasses import fields

    from xpe_fast.config import build_parser, resolve_config
    from xpe_fast.settings import TrainConfig

    ap = build_parser()
    dests = {a.dest: a for a in ap._actions}
    base = TrainConfig()
    for f in fields(TrainConfig):
        assert f.name in dests, f.name
        if f.metadata["kind"] in ("int", "float") and f.metadata["shown"] is None:
            assert f"[{getattr(base, f.name)}]" in dests[f.name].help, f.name
    cfg = resolve_config(ap.parse_args(["--output-dir", "x"]))
    for f in fields(TrainConfig):
        if f.name not in ("output_dir", "encoder_ratio", "precision"):
            assert getattr(cfg, f.name) == getattr(base, f.name), f.name
