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


KILLS = 10


def run_to_end(args, resume=False):
    p = launch(args, resume)
    _, err = p.communicate(timeout=900)
    assert p.returncode == 0, err


def working(p, folder: Path, deadline: float) -> bool:
    """Waits until process `p` holds the run folder's lock (its start-up is over and its
    work begins); False if it ended first."""
    lock = folder / ".lock"
    while time.time() < deadline:
        if p.poll() is not None:
            return False
        try:
            if f"pid {p.pid} " in lock.read_text():
                return True
        except OSError:
            pass
        time.sleep(0.005)
    raise AssertionError("the run never started its work")


def killed_runs(env, part, extra, work, rng) -> int:
    """The run killed at KILLS moments drawn from `rng` over half its real working time
    `work` (timed from the moment each segment holds the run folder, so that start-ups,
    however long, do not count), resumed after each. Returns how many segments were killed:
    fewer only if the machine became over twice as fast as when `work` was measured."""
    moments = sorted(rng.uniform(0.02, 0.5) * work for _ in range(KILLS))
    kills = 0
    for gap in (b - a for a, b in zip([0.0, *moments], moments)):
        p = launch(base_args(env, part, *extra), (part / "run_config.json").is_file())
        if working(p, part, time.time() + 600):
            try:
                p.wait(timeout=gap)
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGKILL)
                p.communicate()
                kills += 1
                continue
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err
        return kills  # it finished before its kill
    run_to_end(base_args(env, part, *extra), resume=True)
    return kills


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
    p = launch(base_args(env, full, *extra), resume=False)
    assert working(p, full, time.time() + 600)
    t0 = time.time()
    _, err = p.communicate(timeout=900)
    assert p.returncode == 0, err
    work = time.time() - t0

    rng = random.Random(1234)
    for _ in range(4):
        part = tmp_path / "part"
        kills = killed_runs(env, part, extra, work, rng)
        if kills == KILLS:
            break
        # The machine got much faster than during the first run (a shared machine): over
        # again, the moments drawn over a shorter working time.
        shutil.rmtree(part)
        work /= 2
    assert kills == KILLS, f"only {kills} of {KILLS} kills landed before the run ended"
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
