"""One command for a CUDA machine: build the CUDA extension, test the CUDA and Triton backends
against the reference, benchmark the fused ops on the GPU against eager and torch.compile,
and train 50 steps with --device cuda on the embedded backbone; one summary file.

    python benchmarks/gpu_check.py [--out benchmarks/gpu_check.json] [--skip-build]

Without a CUDA device it says so and exits (code 0). Each stage has a time limit so the
whole check stays within about 8 minutes; a failed stage is recorded, the next still runs.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def stage(name: str, cmd: list[str], timeout: int, env: dict, summary: dict) -> str | None:
    """Runs one stage; its stdout if it succeeded, else None (recorded in `summary`)."""
    t0 = time.time()
    try:
        r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        ok, out, tail = r.returncode == 0, r.stdout, (r.stdout + r.stderr)[-3000:]
    except subprocess.TimeoutExpired:
        ok, out, tail = False, "", f"timed out after {timeout} s"
    summary["stages"][name] = {"ok": ok, "seconds": round(time.time() - t0, 1), "tail": tail}
    print(f"{name}: {'ok' if ok else 'FAILED'} ({time.time() - t0:.0f} s)", flush=True)
    return out if ok else None


def op_benchmarks() -> list[dict]:
    """The fused ops on the GPU: each available backend against eager and torch.compile,
    forward + backward at the paper's and the embedded backbone's shapes (CUDA events,
    medians of 20 interleaved calls)."""
    import torch

    from xpe_fast import ops
    from xpe_fast.reference import assemble_embeddings_reference, prompt_encoder_mlp_reference

    def timed(fns: dict, rounds: int = 20) -> dict:
        for f in fns.values():
            f()
        ts = {k: [] for k in fns}
        for _ in range(rounds):
            for k, f in fns.items():
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                f()
                b.record()
                torch.cuda.synchronize()
                ts[k].append(a.elapsed_time(b))
        return {k: sorted(v)[len(v) // 2] for k, v in ts.items()}

    rows = []
    dev = "cuda"
    for shape, (d, V, P) in {
        "paper-d1024": (1024, 250002, 514),
        "e5-d384": (384, 250037, 512),
    }.items():
        for dt in (torch.float32, torch.bfloat16):
            B, L, N, h = 32, 128, 20, 256
            ids = torch.randint(3, V, (B, L), device=dev)
            word = torch.randn(V, d, device=dev, dtype=dt)
            pos = torch.randn(P, d, device=dev, dtype=dt)
            typ, w, b = (torch.randn(d, device=dev, dtype=dt) for _ in range(3))
            prompt = torch.randn(N, d, device=dev, dtype=dt, requires_grad=True)
            go = torch.randn(B, N + L, d, device=dev, dtype=dt)
            rest = (word, pos, typ, w, b, 1e-5, 2)
            comp = torch.compile(assemble_embeddings_reference)
            fns = {
                "eager": lambda: torch.autograd.grad(
                    assemble_embeddings_reference(ids, prompt, *rest), prompt, go
                ),
                "compile": lambda: torch.autograd.grad(comp(ids, prompt, *rest), prompt, go),
            }
            for be in [b_ for b_ in ("cuda", "triton") if b_ in ops.available_backends(dev)]:
                fns[be] = lambda be=be: torch.autograd.grad(
                    ops.assemble_embeddings(ids, prompt, *rest, backend=be), prompt, go
                )
            rows.append(
                {
                    "op": "assemble_embeddings fwd+bwd",
                    "shape": shape,
                    "dtype": str(dt)[6:],
                    "ms": timed(fns),
                }
            )
            mlp = [
                t.requires_grad_()
                for t in (
                    torch.randn(N, d, device=dev, dtype=dt),
                    torch.randn(h, d, device=dev, dtype=dt) / 32,
                    torch.zeros(h, device=dev, dtype=dt),
                    torch.randn(h, h, device=dev, dtype=dt) / 16,
                    torch.zeros(h, device=dev, dtype=dt),
                    torch.randn(d, h, device=dev, dtype=dt) / 16,
                    torch.zeros(d, device=dev, dtype=dt),
                )
            ]
            gm = torch.randn(N, d, device=dev, dtype=dt)
            mcomp = torch.compile(prompt_encoder_mlp_reference)
            fns = {
                "eager": lambda: torch.autograd.grad(prompt_encoder_mlp_reference(*mlp), mlp, gm),
                "compile": lambda: torch.autograd.grad(mcomp(*mlp), mlp, gm),
            }
            for be in [b_ for b_ in ("cuda", "triton") if b_ in ops.available_backends(dev)]:
                fns[be] = lambda be=be: torch.autograd.grad(
                    ops.prompt_encoder_mlp(*mlp, backend=be), mlp, gm
                )
            rows.append(
                {
                    "op": "prompt_encoder_mlp fwd+bwd",
                    "shape": shape,
                    "dtype": str(dt)[6:],
                    "ms": timed(fns),
                }
            )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(HERE / "gpu_check.json"))
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--benchmarks-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    if args.benchmarks_only:
        print(json.dumps(op_benchmarks()))
        return 0
    if not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device here (torch.cuda.is_available() is False, torch "
            f"{torch.__version__}); nothing to check."
        )
        return 0
    env = dict(os.environ, TRITON_INTERPRET="0", XPE_FAST_FORCE_CUDA="1")
    summary = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "stages": {},
    }
    py = sys.executable
    if not args.skip_build:
        stage(
            "build (XPE_FAST_FORCE_CUDA=1)",
            [py, "setup.py", "build_ext", "--inplace"],
            240,
            env,
            summary,
        )
    stage(
        "tests: CUDA and Triton backends vs reference",
        [py, "-m", "pytest", "-q", "tests/test_ops_cuda.py", "-p", "no:cacheprovider"],
        120,
        env,
        summary,
    )
    bench = stage("op benchmarks on CUDA", [py, __file__, "--benchmarks-only"], 120, env, summary)
    if bench:
        summary["op_benchmarks"] = json.loads(bench.strip().splitlines()[-1])
    out = REPO / "runs" / f"gpu-check-{int(time.time())}"
    stage(
        "train 50 steps --device cuda",
        [
            py,
            "-m",
            "xpe_fast.train",
            "--device",
            "cuda",
            "--steps",
            "50",
            "--eval-every",
            "25",
            "--targets",
            "low-performing",
            "--no-progress",
            "--output-dir",
            str(out),
        ],
        150,
        env,
        summary,
    )
    Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    failed = [k for k, v in summary["stages"].items() if not v["ok"]]
    print(f"wrote {args.out}; " + (f"failed: {', '.join(failed)}" if failed else "all stages ok"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
