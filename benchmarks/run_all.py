"""One command for BENCHMARKS.md: machine ceilings, all benchmarks, the report, a profile.

    python benchmarks/run_all.py
"""
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def main():
    py = sys.executable
    subprocess.run([py, str(HERE / "machine_peaks.py"), "--out", str(HERE / "machine_peaks.json")],
                   check=True, cwd=REPO)
    code = subprocess.run([py, "-m", "pytest", str(HERE), "--benchmark-only", "-p", "no:cacheprovider",
                           f"--benchmark-json={HERE / 'results.json'}", "-q"], cwd=HERE).returncode
    with open(REPO / "BENCHMARKS.md", "w") as f:
        subprocess.run([py, str(HERE / "report.py"), str(HERE / "results.json"),
                        str(HERE / "machine_peaks.json")], stdout=f, check=True, cwd=HERE)
        f.write("\n## Where the time goes\n\n`python benchmarks/profile_model.py --threads 1` "
                "(torch.profiler, self CPU time per op; the batches of test_bench_model.py):\n")
        f.flush()
        prof = subprocess.run([py, str(HERE / "profile_model.py"), "--threads", "1"],
                              capture_output=True, text=True, cwd=REPO)
        f.write(prof.stdout if prof.returncode == 0 else
                f"\n(profile_model.py failed: {prof.stderr[-500:]})\n")
        f.write("\n## Micro-measurements behind the design\n\n`python benchmarks/microbench.py "
                "--threads 1` (standalone medians, not interleaved; not asserted):\n\n")
        f.flush()
        micro = subprocess.run([py, str(HERE / "microbench.py"), "--threads", "1"],
                               capture_output=True, text=True, cwd=REPO)
        f.write(micro.stdout if micro.returncode == 0 else
                f"(microbench.py failed: {micro.stderr[-500:]})\n")
    print(f"wrote {REPO / 'BENCHMARKS.md'}; pytest exit code {code} (non-zero: a target missed)")
    return code


if __name__ == "__main__":
    sys.exit(main())
