"""One command for BENCHMARKS.md: machine ceilings, all benchmarks, the report, a profile;
then benchmarks/hand_measured.md (figures taken by hand with the commands it names).

python benchmarks/run_all.py
"""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def append_output(f, title: str, script: str, intro: str) -> None:
    """Appends a section holding what `benchmarks/<script> --threads 1` prints."""
    f.write(f"\n## {title}\n\n`python benchmarks/{script} --threads 1` {intro}")
    f.flush()
    r = subprocess.run(
        [sys.executable, str(HERE / script), "--threads", "1"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    f.write(r.stdout if r.returncode == 0 else f"\n({script} failed: {r.stderr[-500:]})\n")


SECTIONS = [
    (
        "Each fast path against its plain path, per ISA level",
        "isa_paths.py",
        "(1 thread; the levels below this CPU's emulated with XPE_FAST_CPU_ISA and "
        "ONEDNN_MAX_CPU_ISA; `package takes` is xpe_fast/cpu_paths.py's choice at that level):",
    ),
    ("Processes against threads", "processes.py", "(the same run under torchrun or not):"),
]


def main():
    py = sys.executable
    subprocess.run(
        [py, str(HERE / "machine_peaks.py"), "--out", str(HERE / "machine_peaks.json")],
        check=True,
        cwd=REPO,
    )
    code = subprocess.run(
        [
            py,
            "-m",
            "pytest",
            str(HERE),
            "--benchmark-only",
            "-p",
            "no:cacheprovider",
            f"--benchmark-json={HERE / 'results.json'}",
            "-q",
        ],
        cwd=HERE,
    ).returncode
    with open(REPO / "BENCHMARKS.md", "w") as f:
        subprocess.run(
            [
                py,
                str(HERE / "report.py"),
                str(HERE / "results.json"),
                str(HERE / "machine_peaks.json"),
            ],
            stdout=f,
            check=True,
            cwd=HERE,
        )
        append_output(
            f,
            "Where the time goes",
            "profile_model.py",
            "(torch.profiler, self CPU time per op; the batches of test_bench_model.py):\n",
        )
        append_output(
            f,
            "Micro-measurements behind the design",
            "microbench.py",
            "(standalone medians, not interleaved; not asserted):\n\n",
        )
        for title, script, intro in SECTIONS:
            f.write(f"\n## {title}\n\n`python benchmarks/{script}` {intro}\n\n")
            f.flush()
            r = subprocess.run([py, str(HERE / script)], capture_output=True, text=True, cwd=REPO)
            f.write(r.stdout if r.returncode == 0 else f"\n(failed: {r.stderr[-500:]})\n")
        # Measurements that need a capped or otherwise special machine state, each with its
        # command: kept in their own file so that regenerating the rest keeps them.
        f.write("\n" + (HERE / "hand_measured.md").read_text())
    print(f"wrote {REPO / 'BENCHMARKS.md'}; pytest exit code {code} (non-zero: a target missed)")
    return code


if __name__ == "__main__":
    sys.exit(main())
