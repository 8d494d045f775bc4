"""A run killed (SIGKILL) at random moments, many times, and resumed each time ends with the
same adapter and the same accuracies as the uninterrupted run: every file it writes is
replaced atomically, so a kill leaves the previous checkpoint or the next, never a mix."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_cli import base_args, tiny_xlmr

REPO = Path(__file__).resolve().parents[1]


def launch(args, resume):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "xpe_fast.train", *args] + (["--resume"] if resume else [])
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.slow
def test_killed_at_random_moments_resumes_to_the_same_result(shared_dir, tmp_path):
    backbone = tiny_xlmr(tmp_path / "tiny")
    env = {
        "backbone": backbone,
        "tokenizer": str(shared_dir / "xlmr-tokenizer/tokenizer.json"),
        "data": str(shared_dir / "sib200"),
    }
    extra = ["--steps", "240", "--eval-every", "2", "--method", "dual", "--encoder-ratio", "0.5"]
    full = tmp_path / "full"
    t_full = time.time()
    p = launch(base_args(env, full, *extra), resume=False)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    t_full = time.time() - t_full

    part = tmp_path / "part"
    rng = random.Random(1234)
    kills = 0
    t_run = t_full  # how long a whole run takes, as far as we know
    for _ in range(60):
        resume = (part / "run_config.json").is_file()
        p = launch(base_args(env, part, *extra), resume)
        if kills < 8:
            # a moment anywhere in a run's life: start-up, training, saving, evaluating
            try:
                p.wait(timeout=rng.uniform(0.2, 0.9) * t_run)
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGKILL)
                p.communicate()
                kills += 1
                continue
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        if (part / "summary.json").is_file():
            if kills >= 3:
                break
            # It finished before being killed often enough: the machine got faster than
            # during the first run (a shared machine). Start the interrupted run over with
            # shorter kill times.
            shutil.rmtree(part)
            kills, t_run = 0, t_run / 2
    assert kills >= 3, f"only {kills} runs were killed; the test proves little"
    a = load_file(str(full / "seed-0/adapter/adapter.safetensors"))
    b = load_file(str(part / "seed-0/adapter/adapter.safetensors"))
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    sa = json.loads((full / "summary.json").read_text())
    sb = json.loads((part / "summary.json").read_text())
    assert sa["per_language"] == sb["per_language"]
    assert sb["wall_seconds_total"] > sb["wall_seconds"]
    leftovers = [p.name for p in part.rglob(".*")]
    assert not [n for n in leftovers if ".new." in n or n.endswith(".old")], leftovers
