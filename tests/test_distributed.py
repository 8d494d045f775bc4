"""Training and evaluation under torchrun (2 gloo processes on the CPU, tiny random XLM-R):
the same trained tensors as one process, sharded evaluation with the same numbers, written
by rank 0 only, and a worker killed mid-run restarted by torchrun to the same result."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_cli import base_args, tiny_xlmr

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="this torch has no torch.distributed"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env1():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


def torchrun(nproc, module, args, max_restarts=0):
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        f"--max-restarts={max_restarts}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{free_port()}",
        "-m",
        module,
        *args,
    ]


def run(cmd, timeout=900):
    r = subprocess.run(cmd, cwd=REPO, env=env1(), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def setup(shared_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    env = {
        "backbone": tiny_xlmr(root / "tiny"),
        "data": str(shared_dir / "sib200"),
        "tokenizer": str(shared_dir / "xlmr-tokenizer/tokenizer.json"),
    }
    # Every dropout on: the backbone's (0.1, hidden and attention), the head's, the MLP's.
    extra = [
        "--steps",
        "20",
        "--eval-every",
        "5",
        "--method",
        "dual",
        "--encoder-ratio",
        "0.5",
        "--batch-size",
        "9",
        "--targets",
        "amh_Ethi,fra_Latn,yor_Latn",
    ]
    one = root / "one"
    run([sys.executable, "-m", "xpe_fast.train", *base_args(env, one, *extra)])
    return {"root": root, "env": env, "extra": extra, "one": one}


def final_tensors(out: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(out / "seed-0" / "checkpoint.safetensors"), "pt") as f:
        return {k[6:]: f.get_tensor(k) for k in f.keys() if k.startswith("model.")}


def max_rel_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-12)).item() for k in a)


@pytest.mark.slow
def test_two_processes_train_what_one_does_and_evaluate_the_same(setup):
    two = setup["root"] / "two"
    r = run(torchrun(2, "xpe_fast.train", base_args(setup["env"], two, *setup["extra"])))
    # the trained tensors after 20 steps, and the adapter of the best step
    assert max_rel_diff(final_tensors(setup["one"]), final_tensors(two)) <= 1e-5
    a = load_file(str(setup["one"] / "seed-0/adapter/adapter.safetensors"))
    b = load_file(str(two / "seed-0/adapter/adapter.safetensors"))
    assert max_rel_diff(a, b) <= 1e-5
    s1 = json.loads((setup["one"] / "summary.json").read_text())
    s2 = json.loads((two / "summary.json").read_text())
    assert s1["per_language"] == s2["per_language"]  # evaluation dealt out, same numbers
    assert s1["source_dev_accuracy"] == s2["source_dev_accuracy"]
    # rank 0 alone writes: one table printed, one log line per evaluation
    assert r.stdout.count("target group") == 1
    log = (two / "train.log").read_text()
    assert log.count("train step 5:") == 1 and "rank 1" not in log
    # torchrun -m xpe_fast.evaluate: the same numbers as the run's own evaluation
    out_csv = setup["root"] / "eval2.csv"
    run(
        torchrun(
            2,
            "xpe_fast.evaluate",
            [
                "--adapter",
                str(two / "seed-0/adapter"),
                "--backbone",
                setup["env"]["backbone"],
                "--tokenizer",
                setup["env"]["tokenizer"],
                "--data-dir",
                setup["env"]["data"],
                "--languages",
                "amh_Ethi,fra_Latn,yor_Latn",
                "--precision",
                "fp32",
                "--no-progress",
                "--output",
                str(out_csv),
            ],
        )
    )
    rows = out_csv.read_text().splitlines()[1:]
    got = {row.split(",")[0]: float(row.split(",")[2]) for row in rows}
    for lang, acc in s2["per_language"]["zero_shot"].items():
        assert got[lang] == pytest.approx(acc, abs=1e-4)


@pytest.mark.slow
def test_killed_worker_is_restarted_and_the_run_ends_as_uninterrupted(setup):
    import psutil

    out = setup["root"] / "killed"
    cmd = torchrun(
        2, "xpe_fast.train", base_args(setup["env"], out, *setup["extra"]), max_restarts=1
    )
    p = subprocess.Popen(
        cmd, cwd=REPO, env=env1(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    ckpt = out / "seed-0" / "checkpoint.safetensors"
    deadline = time.time() + 600
    while not ckpt.is_file() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    assert ckpt.is_file(), "no checkpoint was written"
    workers = [
        c
        for c in psutil.Process(p.pid).children(recursive=True)
        if "xpe_fast.train" in " ".join(c.cmdline())
    ]
    assert len(workers) == 2, workers
    os.kill(workers[-1].pid, signal.SIGKILL)
    outs, errs = p.communicate(timeout=900)
    assert p.returncode == 0, outs[-2000:] + errs[-3000:]
    assert "resumed" in errs  # the restarted group continued from what was saved
    s1 = json.loads((setup["one"] / "summary.json").read_text())
    s2 = json.loads((out / "summary.json").read_text())
    assert s1["per_language"] == s2["per_language"]
    assert s1["source_dev_accuracy"] == s2["source_dev_accuracy"]


def test_output_dir_is_required_under_torchrun(setup, tmp_path):
    env = dict(env1(), WORLD_SIZE="2", RANK="0")
    args = [a for a in base_args(setup["env"], tmp_path / "x") if True]
    i = args.index("--output-dir")
    del args[i : i + 2]
    r = subprocess.run(
        [sys.executable, "-m", "xpe_fast.train", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "--output-dir is required" in r.stderr


def test_world_slices_and_deals_like_one_process():
    from xpe_fast.distributed import World

    for n in (1, 5, 32):
        for k in (1, 2, 3):
            parts = [World(r, k).slice(n) for r in range(k)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    w = [5.0, 1.0, 3.0, 3.0, 2.0]
    dealt = [World(r, 2).deal(w) for r in range(2)]
    assert sorted(dealt[0] + dealt[1]) == list(range(5))
    assert abs(sum(w[i] for i in dealt[0]) - sum(w[i] for i in dealt[1])) <= 1.0


@pytest.mark.slow
def test_grid_with_whole_runs_on_separate_processes_matches_single_runs(setup):
    def args(out):
        a = base_args(setup["env"], out, *setup["extra"][:-2], "--targets", "amh_Ethi")
        i = a.index("--method")
        del a[i : i + 4]  # --method dual --encoder-ratio 0.5
        return a

    out, alone = setup["root"] / "placed", setup["root"] / "alone"
    run(
        torchrun(
            2, "xpe_fast.train", [*args(out), "--methods", "spt,dual-0.5", "--placement", "process"]
        )
    )
    run([sys.executable, "-m", "xpe_fast.train", *args(alone), "--methods", "dual-0.5"])
    a = load_file(str(out / "dual-0.5/seed-0/adapter/adapter.safetensors"))
    b = load_file(str(alone / "dual-0.5/seed-0/adapter/adapter.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == {"spt", "dual-0.5"}


@pytest.mark.slow
def test_per_sample_prompt_dropout_two_processes_train_what_one_does(setup):
    """--prompt-dropout-scope sample (the paper's per-sample MLP masks) numbers its masks by
    global sample index: two processes train what one does."""
    extra = [*setup["extra"][:-2], "--targets", "amh_Ethi", "--steps", "8", "--eval-every", "4"]
    extra += ["--prompt-dropout-scope", "sample"]
    one, two = setup["root"] / "sample-one", setup["root"] / "sample-two"
    run([sys.executable, "-m", "xpe_fast.train", *base_args(setup["env"], one, *extra)])
    run(torchrun(2, "xpe_fast.train", base_args(setup["env"], two, *extra)))
    assert max_rel_diff(final_tensors(one), final_tensors(two)) <= 1e-5
