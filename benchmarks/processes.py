"""One process with 2 threads against 2 processes (torchrun) with 1 thread each, on this
machine: training samples/s and zero-shot evaluation sentences/s of the same run (embedded
backbone, XPE, batch 32), each configuration run `--repeats` times alternately, medians.

    python benchmarks/processes.py [--steps 30] [--repeats 2]
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGETS = "amh_Ethi,yor_Latn,fin_Latn,nqo_Nkoo,hin_Deva,tam_Taml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(nproc: int, threads: int, steps: int, out: Path) -> dict:
    args = [
        "-m",
        "xpe_fast.train",
        "--steps",
        str(steps),
        "--eval-every",
        str(steps),
        "--targets",
        TARGETS,
        "--threads",
        str(threads),
        "--no-progress",
        "--output-dir",
        str(out),
    ]
    if nproc > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={nproc}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{free_port()}",
            *args,
        ]
    else:
        cmd = [sys.executable, *args]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, text=True)
    r = json.loads((out / "seed-0" / "results.json").read_text())
    n_eval = sum(1 for _ in r["zero_shot"]) * 204
    return {
        "train_samples_per_s": steps * 32 / r["train_seconds"],
        "eval_sentences_per_s": n_eval / r["eval_seconds"],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    res = {"1 process x 2 threads": [], "2 processes x 1 thread": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for name, (n, t) in (
                ("1 process x 2 threads", (1, 2)),
                ("2 processes x 1 thread", (2, 1)),
            ):
                res[name].append(run(n, t, args.steps, Path(tmp) / f"{n}x{t}-{i}"))
    print("| configuration | training samples/s | evaluation sentences/s |\n|---|---|---|")
    for name, rows in res.items():
        tr = statistics.median(r["train_samples_per_s"] for r in rows)
        ev = statistics.median(r["eval_sentences_per_s"] for r in rows)
        print(f"| {name} | {tr:.1f} | {ev:.1f} |")
    print(
        f"\n(median of {args.repeats} alternating runs; {args.steps} training steps of 32 "
        f"including one source dev evaluation; evaluation: {TARGETS.count(',') + 1} target "
        "languages x 204 test sentences)"
    )


if __name__ == "__main__":
    main()
