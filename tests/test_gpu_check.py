"""benchmarks/gpu_check.py as far as a CPU allows: the bundle's size and content, the one-line
answer without CUDA, and the parts a GPU machine will run, on the CPU and a tiny model: the
paper-scale comparison script and the CLI stages on the bundle's data and a saved backbone."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check  # noqa: E402
import gpu_paper_scale  # noqa: E402


@pytest.fixture(scope="module")
def bundle(shared_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu") / "bundle"
    gpu_check.write_bundle(folder, shared_dir)
    return folder


def test_the_bundle_holds_what_the_check_reads_within_48_mib(bundle):
    size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    assert size <= 48 * 2**20
    manifest = json.loads((bundle / "manifest.json").read_text())
    for lang in gpu_check.JOSHI5:
        assert {p.name for p in (bundle / "sib200" / lang).iterdir()} == {"train.tsv", "dev.tsv"}
    for group in gpu_check.TARGETS.values():
        for lang in group:
            assert (bundle / "sib200" / lang / "test.tsv").is_file()
    assert (bundle / "xlmr-tokenizer" / "tokenizer.json").is_file()
    wheels = manifest["wheels"]
    assert all(w.endswith("-py3-none-any.whl") for w in wheels), wheels  # pure Python only
    assert {w.split("-")[0] for w in wheels} == set(gpu_check.WHEELS.values())
    # the subset is a SIB-200 folder the package reads
    from xpe_fast.data import SIB200

    data = SIB200(bundle / "sib200")
    assert len(data.split("eng_Latn", "train")) == 701


def test_an_existing_bundle_folder_is_refused(bundle):
    with pytest.raises(SystemExit, match="exists"):
        gpu_check.write_bundle(bundle)


def test_without_cuda_it_says_so_in_one_line(bundle):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: the check would run")
    r = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--from-bundle", str(bundle)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )  # fmt: skip
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.count("\n") == 1 and "no CUDA device" in r.stdout


@pytest.mark.slow
def test_paper_scale_comparison_runs_on_a_tiny_model(bundle, capsys):
    tok = bundle / "xlmr-tokenizer" / "tokenizer.json"
    args = ["--data-dir", str(bundle / "sib200"), "--tokenizer", str(tok), "--device", "cpu",
            "--size", "tiny", "--rounds", "1"]  # fmt: skip
    assert gpu_paper_scale.main(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out["train_step_s"]) == {"xpe_fast", "eager", "peft"}
    assert out["eval_sentences"] == 9 * 64 and out["train_batch"][0] == 32
    for key in ("train_speedup_vs_peft", "eval_speedup_vs_eager", "train_fraction_of_peak"):
        assert out[key] > 0


def test_the_paper_scale_configuration_is_xlmr_large():
    cfg = gpu_paper_scale.xlmr_large_config("large")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (1024, 24, 16)
    assert (cfg.intermediate_size, cfg.vocab_size, cfg.max_position_embeddings) == (
        4096,
        250002,
        514,
    )


@pytest.mark.slow
def test_the_cli_stages_run_on_the_bundle(bundle, tmp_path):
    """The commands the check runs through the CLI, here on the CPU with a tiny backbone
    saved the way the check saves XLM-R large."""
    tok = bundle / "xlmr-tokenizer" / "tokenizer.json"
    backbone = tmp_path / "backbone"
    gpu_check.save_random_xlmr_large(backbone, tok, size="tiny")
    assert (backbone / "model.safetensors").is_file() and (backbone / "tokenizer.json").is_file()
    cmds = gpu_check.cli_commands(str(backbone), str(tok), str(bundle / "sib200"), tmp_path, "cpu")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    for name, cmd in cmds.items():
        r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"{name}: {r.stderr[-2000:]}"
    assert (tmp_path / "train" / "summary.json").is_file()
    rows = (tmp_path / "evaluate.csv").read_text().splitlines()
    assert len(rows) == 1 + 9
    assert (tmp_path / "torchrun" / "summary.json").is_file()
