"""The paper's Table 1 at CPU scale, on the embedded backbone (multilingual-e5-small).

    python experiments/table1.py curves     # learning curves that chose the schedule
    python experiments/table1.py run        # the grid; runs already in results/ are skipped;
                                            # start one per core to share it
    python experiments/table1.py report     # RESULTS.md and its plots, from results/ alone
    python experiments/table1.py status     # what is done, what is left
    python experiments/table1.py reproduce results/table1/joshi5/xpe/seed-0.json
                                            # re-run one result at its commit and compare

`run` and `curves` call `python -m xpe_fast.train` once per (source, method, seed) into
runs/table1/ (or runs/curves/), and copy each finished run's small result file (group means,
per-language accuracies, configuration, the command, machine, wall time) into results/,
which is committed; `report` reads nothing else. Each may be interrupted and restarted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"
RUNS = REPO / "runs"

# The schedule, chosen from the learning curves (RESULTS.md says why).
SCHEDULE = [
    "--steps",
    "600",
    "--eval-every",
    "50",
    "--schedule",
    "cosine",
    "--warmup",
    "0.1",
    "--lr-prompt",
    "3e-2",
    "--lr",
    "1e-2",
    "--batch-size",
    "32",
    "--patience",
    "20",
    "--max-length",
    "164",
    "--precision",
    "auto",
]
THREADS = ["--threads", "1"]

# (source, methods, seeds, targets)
PLAN = [
    ("joshi5", ["spt", "xpe", "dual-0.3", "dual-0.7"], [0, 1, 2, 3, 4], "all-wo-joshi5"),
    ("enarzho", ["spt", "xpe"], [0, 1, 2], "all-wo-joshi5"),
    ("seen-92", ["spt", "xpe"], [0, 1, 2], "unseen"),
]

# Learning curves: constant learning rate (no decay that would flatten any curve by itself),
# 1,000 steps, source dev accuracy and loss every 50 steps.
CURVE_STEPS = [
    "--steps",
    "1000",
    "--eval-every",
    "50",
    "--schedule",
    "constant",
    "--patience",
    "100000",
    "--targets",
    "yor_Latn",
]
# The curves at the grid's learning rates (the schedule's evidence); the others show why.
CHOSEN_CURVES = ("spt-lr3e-2", "xpe-lr3e-2")
CURVES = {
    "spt": ["--method", "spt"],
    "xpe": ["--method", "xpe"],
    "spt-lr3e-2": ["--method", "spt", "--lr-prompt", "3e-2"],
    "xpe-lr3e-2": ["--method", "xpe", "--lr-prompt", "3e-2"],
}


def method_args(tag: str) -> list[str]:
    if tag.startswith("dual-"):
        return ["--method", "dual", "--encoder-ratio", tag[5:]]
    return ["--method", tag]


def machine() -> dict:
    import torch

    flags = ""
    model = platform.processor()
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next(
            l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name")
        )
        flags = next(l.split(":", 1)[1] for l in info.splitlines() if l.startswith("flags"))
    except (OSError, StopIteration):
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f} " in f" {flags} "]
    return {
        "cpu": model,
        "cpu_count": os.cpu_count(),
        "isa": isa,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def commit() -> str:
    r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "xpe_fast", "csrc"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return r.stdout.strip() + ("-dirty" if dirty else "")


def atomic_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def train(args: list[str], out: Path) -> int:
    """One `python -m xpe_fast.train` run into `out` (continued if it was interrupted)."""
    cmd = [sys.executable, "-m", "xpe_fast.train", *args, "--output-dir", str(out), "--no-progress"]
    if (out / "run_config.json").is_file():
        cmd.append("--resume")
    print("+", " ".join(shlex.quote(c) for c in cmd[1:]), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f"{out.name}.log", "a") as log:
        return subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode


def export(out: Path, dest: Path, meta: dict) -> None:
    """The small result file of a finished run: what `report` needs, and how to redo it."""
    seed_dir = next(out.glob("seed-*"))
    res = (
        json.loads((seed_dir / "results.json").read_text())
        if (seed_dir / "results.json").is_file()
        else {}
    )
    phase = json.loads((seed_dir / "source_done.json").read_text())
    summary = (
        json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
    )
    cfg = json.loads((out / "run_config.json").read_text())
    atomic_json(
        dest,
        {
            **meta,
            "config": cfg,
            "machine": machine(),
            "commit": commit(),
            "precision": cfg["precision"],
            "groups": {
                g: r["mean"] for g, r in summary.get("groups", {}).get("zero_shot", {}).items()
            },
            "per_language": res.get("zero_shot", {}),
            "source_dev_accuracy": phase["best_acc"],
            "best_step": phase["best_step"],
            "history": phase["history"],
            "train_seconds": phase.get("train_seconds"),
            "eval_seconds": res.get("eval_seconds"),
            "wall_seconds_total": summary.get("wall_seconds_total"),
        },
    )


def plan_runs():
    for source, methods, seeds, targets in PLAN:
        for seed in seeds:  # seed-major: a partial grid holds every method equally often
            for tag in methods:
                yield source, tag, seed, targets


def result_path(source: str, tag: str, seed: int) -> Path:
    return RESULTS / "table1" / source / tag / f"seed-{seed}.json"


def claim(out: Path) -> bool:
    """Take a run for this process, so several `run` workers can share the grid (one per core).

    The claim is a lock file holding the worker's pid; a lock whose process is gone (a worker
    killed at the end of a session) is taken over and the run resumes from its checkpoint.
    """
    lock = out.parent / f"{out.name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid == os.getpid():
                return True
            if pid and _alive(pid):
                return False
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def _alive(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    return b"table1" in cmdline


def cmd_run(_args) -> int:
    failed = 0
    for source, tag, seed, targets in plan_runs():
        dest = result_path(source, tag, seed)
        if dest.is_file():
            continue
        out = RUNS / "table1" / source / f"{tag}-seed{seed}"
        if not claim(out):
            continue  # another worker has it
        args = [
            *method_args(tag),
            "--source",
            source,
            "--targets",
            targets,
            "--seeds",
            str(seed),
            *SCHEDULE,
            *THREADS,
        ]
        if train(args, out) != 0:
            print(f"! {source} {tag} seed {seed} failed; see {out}.log", flush=True)
            failed += 1
            continue
        export(
            out,
            dest,
            {
                "source": source,
                "method": tag,
                "seed": seed,
                "targets": targets,
                "command": "python -m xpe_fast.train " + " ".join(args) + " --output-dir OUT",
            },
        )
        print(f"= {dest.relative_to(REPO)}", flush=True)
        (out.parent / f"{out.name}.lock").unlink(missing_ok=True)
    return 1 if failed else 0


def cmd_curves(_args) -> int:
    for name, extra in CURVES.items():
        dest = RESULTS / "curves" / f"{name}.json"
        if dest.is_file():
            continue
        out = RUNS / "curves" / name
        args = [*extra, "--source", "joshi5", "--seeds", "0", *CURVE_STEPS, *THREADS]
        if train(args, out) != 0 and not (out / "seed-0" / "source_done.json").is_file():
            print(f"! curve {name} failed", flush=True)
            return 1
        export(
            out,
            dest,
            {
                "curve": name,
                "command": "python -m xpe_fast.train " + " ".join(args) + " --output-dir OUT",
            },
        )
    return 0


def cmd_status(_args) -> int:
    done = [r for r in plan_runs() if result_path(*r[:3]).is_file()]
    todo = [r for r in plan_runs() if not result_path(*r[:3]).is_file()]
    print(f"{len(done)} of {len(done) + len(todo)} runs in results/table1/")
    for source, tag, seed, _ in todo:
        print(f"  to do: {source} {tag} seed {seed}")
    return 0


# Code whose changes can change a run's numbers: a result reproduces at a commit whose copy of
# these equals the one it was made at.
CODE = ["xpe_fast", "csrc", "setup.py", "CMakeLists.txt", "pyproject.toml"]
TOLERANCE = 0.1  # points, per group mean (the "same group means")


def same_code(commit_a: str, commit_b: str) -> bool:
    r = subprocess.run(
        ["git", "diff", "--quiet", commit_a, commit_b, "--", *CODE],
        cwd=REPO,
        capture_output=True,
    )
    return r.returncode == 0


def compare_groups(recorded: dict, got: dict, tol: float = TOLERANCE) -> tuple[list[str], bool]:
    """Lines comparing group means (fractions in, points out) and whether all are within tol."""
    lines, ok = [], True
    for g in sorted(recorded):
        a = 100 * recorded[g]
        b = 100 * got[g] if g in got else float("nan")
        within = abs(a - b) <= tol + 1e-9
        ok &= within
        lines.append(
            f"  {g:<16} recorded {a:6.2f}  now {b:6.2f}  diff {b - a:+.2f}  "
            + ("met" if within else f"MISSED (more than {tol} points)")
        )
    return lines, ok


def cmd_reproduce(args) -> int:
    """Re-runs a result file's recorded command at its recorded commit (a git worktree built
    beside this checkout when the code differs) and compares the group means."""
    path = Path(args.result)
    try:
        rec = json.loads(path.read_text())
        command, rec_commit, groups = rec["command"], rec["commit"], rec["groups"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"table1.py reproduce: {path}: not a readable result file ({e})", file=sys.stderr)
        return 2
    argv = shlex.split(command)
    if argv[:3] != ["python", "-m", "xpe_fast.train"] or argv[-2:] != ["--output-dir", "OUT"]:
        print(f"table1.py reproduce: {path}: unexpected command {command!r}", file=sys.stderr)
        return 2
    if rec_commit.endswith("-dirty"):
        print(
            f"table1.py reproduce: {path}: made from uncommitted code ({rec_commit}); "
            "its commit does not pin it",
            file=sys.stderr,
        )
        return 2
    known = subprocess.run(
        ["git", "cat-file", "-e", f"{rec_commit}^{{commit}}"], cwd=REPO, capture_output=True
    )
    if known.returncode != 0:
        print(
            f"table1.py reproduce: {path}: commit {rec_commit} is not in this clone",
            file=sys.stderr,
        )
        return 2
    here = commit()
    tree = REPO
    if here.endswith("-dirty") or not same_code(rec_commit, here):
        tree = RUNS / "reproduce" / f"tree-{rec_commit[:12]}"
        if not (tree / "xpe_fast").is_dir():
            print(
                f"+ git worktree add {tree} {rec_commit[:12]} (its code differs from this checkout)"
            )
            subprocess.run(
                ["git", "worktree", "add", "--detach", "-f", str(tree), rec_commit],
                cwd=REPO,
                check=True,
            )
        if not list((tree / "xpe_fast").glob("_C*.so")):
            print(f"+ building its extension in {tree}", flush=True)
            subprocess.run(
                [sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tree, check=True
            )
    out = (
        RUNS / "reproduce" / f"{rec['source']}-{rec['method']}-seed{rec['seed']}-{rec_commit[:12]}"
    )
    cmd = [sys.executable, *argv[1:-1], str(out), "--no-progress"]
    if (out / "run_config.json").is_file():
        cmd.append("--resume")
    if not (out / "summary.json").is_file():  # else the re-run finished: only compare
        print("+", " ".join(shlex.quote(c) for c in cmd[1:]), f"(in {tree})", flush=True)
        env = {**os.environ, "PYTHONPATH": str(tree)}
        if subprocess.run(cmd, cwd=tree, env=env).returncode != 0:
            print(f"! the run failed; see {out}", file=sys.stderr)
            return 1
    summary = json.loads((out / "summary.json").read_text())
    got = {g: r["mean"] for g, r in summary["groups"]["zero_shot"].items()}
    lines, ok = compare_groups(groups, got)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from table1_report import machine_label

    now_machine = machine()
    then, now = machine_label(rec["machine"]), machine_label(now_machine)
    print(f"{path} at {rec_commit[:12]}: recorded on {then}, re-run on {now}")
    print("\n".join(lines))
    if then != now:
        print(f"(another kind of CPU: {then} then, {now} now; bf16 kernels may round differently)")
    print("reproduced" if ok else "NOT reproduced within the tolerance")
    if path.resolve().is_relative_to(RESULTS / "table1"):
        # kept beside the results, so RESULTS.md can say what re-running them gave
        slug = "".join(c if c.isalnum() else "-" for c in now.lower()).strip("-")
        dest = (
            RESULTS
            / "reruns"
            / rec["source"]
            / rec["method"]
            / f"seed-{rec['seed']}--{slug}--{rec_commit[:12]}.json"
        )
        phase = json.loads(next(out.glob("seed-*/source_done.json")).read_text())
        per_lang = json.loads(next(out.glob("seed-*/results.json")).read_text())["zero_shot"]
        rec_lang = rec.get("per_language", {})
        atomic_json(
            dest,
            {
                "result": str(path.resolve().relative_to(REPO)),
                "commit": rec_commit,
                "recorded_machine": rec["machine"],
                "rerun_machine": now_machine,
                "recorded": groups,
                "rerun": got,
                "recorded_best_step": rec.get("best_step"),
                "rerun_best_step": phase["best_step"],
                "languages_compared": len(rec_lang),
                "languages_differing": sum(per_lang.get(l) != a for l, a in rec_lang.items()),
                "tolerance_points": TOLERANCE,
                "reproduced": ok,
            },
        )
        print(f"= {dest.relative_to(REPO)}")
    return 0 if ok else 1


def cmd_report(_args) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from table1_report import write_report

    write_report(RESULTS, REPO / "RESULTS.md", PLAN, SCHEDULE, CHOSEN_CURVES)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("run", "curves", "report", "status"):
        sub.add_parser(name)
    rp = sub.add_parser(
        "reproduce",
        help="re-run one result file's command at its commit and compare its group means",
    )
    rp.add_argument("result", help="a result file, e.g. results/table1/joshi5/xpe/seed-0.json")
    args = ap.parse_args(argv)
    return {
        "run": cmd_run,
        "curves": cmd_curves,
        "report": cmd_report,
        "status": cmd_status,
        "reproduce": cmd_reproduce,
    }[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
