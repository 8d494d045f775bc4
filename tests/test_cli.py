"""The command-line tools end to end on a tiny random XLM-R and three SIB-200 languages."""
import json

import pytest
import torch
from safetensors.torch import load_file

from xpe_fast import data as D
from xpe_fast import evaluate, train


def tiny_xlmr(folder, hidden=16, seed=0):
    import transformers as T

    torch.manual_seed(seed)
    cfg = T.XLMRobertaConfig(vocab_size=250002, hidden_size=hidden, num_hidden_layers=2,
                             num_attention_heads=2, intermediate_size=32,
                             max_position_embeddings=220, pad_token_id=1)
    T.XLMRobertaModel(cfg).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def env(shared_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    return {"backbone": tiny_xlmr(root / "tiny"), "other": tiny_xlmr(root / "other", hidden=8),
            "tokenizer": str(shared_dir / "xlmr-tokenizer" / "tokenizer.json"),
            "data": str(shared_dir / "sib200"), "root": root}


def base_args(env, out, *extra):
    return ["--backbone", env["backbone"], "--tokenizer", env["tokenizer"], "--data-dir",
            env["data"], "--source", "eng_Latn", "--targets", "amh_Ethi,fra_Latn",
            "--steps", "4", "--eval-every", "2", "--batch-size", "8", "--eval-batch-size", "64",
            "--num-virtual-tokens", "4", "--encoder-hidden-size", "8", "--threads", "1",
            "--precision", "fp32", "--no-progress", "--output-dir", str(out), *extra]


def run_train(args, capsys):
    code = train.main(args)
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err
    return code, cap


def test_train_writes_every_output(env, capsys):
    out = env["root"] / "run"
    code, cap = run_train(base_args(env, out), capsys)
    assert code == 0, cap.err
    for name in ("summary.json", "accuracy.csv", "accuracy.png", "train.log", "run_config.json",
                 "seed-0/adapter/adapter.safetensors", "seed-0/adapter/adapter_config.json",
                 "seed-0/zero_shot_accuracy.csv", "seed-0/results.json"):
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
    code = evaluate.main(["--adapter", str(out / "seed-0/adapter"), "--backbone", env["backbone"],
                          "--tokenizer", env["tokenizer"], "--data-dir", env["data"],
                          "--languages", "amh_Ethi", "--no-progress", "--precision", "fp32"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    code = evaluate.main(["--adapter", str(out / "seed-0/adapter"), "--backbone", env["other"],
                          "--tokenizer", env["tokenizer"], "--data-dir", env["data"],
                          "--languages", "amh_Ethi", "--no-progress"])
    cap = capsys.readouterr()
    assert code == 2 and "saved for backbone" in cap.err and "Traceback" not in cap.err


def test_interrupted_run_resumes_exactly(env, capsys, monkeypatch):
    full = env["root"] / "full"
    assert run_train(base_args(env, full, "--steps", "6"), capsys)[0] == 0
    part = env["root"] / "part"
    calls = {"n": 0}
    real = D.collate

    def interrupt_after_4(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:  # steps 1-4 (and the dev evaluation at 2 and 4) went through
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(D, "collate", interrupt_after_4)
    code, cap = run_train(base_args(env, part, "--steps", "6"), capsys)
    assert code == 130 and "--resume" in cap.err
    monkeypatch.setattr(D, "collate", real)
    code, cap = run_train(base_args(env, part, "--steps", "6", "--resume"), capsys)
    assert code == 0, cap.err
    a = load_file(str(full / "seed-0/adapter/adapter.safetensors"))
    b = load_file(str(part / "seed-0/adapter/adapter.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("extra,match", [
    (["--targets", "xx_Latn"], "unknown language or group"),
    (["--source", "joshi6"], "unknown language or group"),
    (["--data-dir", "/nonexistent/sib200"], "does not exist"),
    (["--method", "spt", "--encoder-ratio", "0.5"], "does not match"),
    (["--seeds", "a,b"], "--seeds"),
])
def test_user_errors_are_one_line(env, capsys, extra, match, tmp_path):
    code, cap = run_train(base_args(env, tmp_path / "o", *extra), capsys)
    assert code == 2
    assert match in cap.err and cap.err.count("\n") == 1


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
    args = base_args(env, out, "--regime", "supervised", "--targets", "amh_Ethi",
                     "--steps", "2", "--target-steps", "2", "--eval-every", "1",
                     "--method", "dual", "--encoder-ratio", "0.5")
    code, cap = run_train(args, capsys)
    assert code == 0, cap.err
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["per_language"]) == {"zero_shot", "supervised"}
    assert (out / "seed-0/supervised_accuracy.csv").is_file()
    assert (out / "seed-0/supervised/amh_Ethi/result.json").is_file()
    assert "supervised" in cap.out
