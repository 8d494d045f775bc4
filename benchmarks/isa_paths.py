"""Every CPU fast path against the plain PyTorch path it replaces, at each ISA level this
machine can emulate: this package's kernels forced down with XPE_FAST_CPU_ISA, oneDNN with
ONEDNN_MAX_CPU_ISA (one subprocess per level; the level is fixed when a process starts).
Each pair is timed interleaved (medians of round-robin calls, 1 thread); `chosen` is what the
package takes on its own at that level (xpe_fast/cpu_paths.py), which must be the faster of
the two or within noise.

    python benchmarks/isa_paths.py [--json benchmarks/isa_paths.json] [--markdown]
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LEVELS = {  # name -> environment
    "avx512-bf16": {},
    "avx512": {"XPE_FAST_CPU_ISA": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "avx2": {"XPE_FAST_CPU_ISA": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "baseline": {"XPE_FAST_CPU_ISA": "baseline", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}


def interleaved(fns: dict, rounds: int = 15) -> dict:
    for _ in range(2):
        for f in fns.values():
            f()
    ts = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            ts[k].append(time.perf_counter() - t0)
    return {k: 1e3 * sorted(v)[len(v) // 2] for k, v in ts.items()}


def pairs():
    """(name, dtype, fast, plain, chosen) for every fast path, at the shapes of the model's
    evaluation and training on the embedded backbone."""
    import torch
    import torch.nn.functional as F

    from xpe_fast import cpu_paths, fast_dropout, ops
    from xpe_fast.device import cpu_has_fast_bf16
    from xpe_fast.frozen_linear import FrozenLinear, onednn_bf16_available
    from xpe_fast.reference import (
        assemble_embeddings_reference,
        prompt_encoder_mlp_reference,
        residual_layer_norm_reference,
    )

    g = torch.Generator().manual_seed(0)
    dtypes = [torch.float32] + ([torch.bfloat16] if cpu_has_fast_bf16() else [])
    for dt in dtypes:
        name = str(dt)[6:]
        # attention from the packed QKV projection, B=64, S=70, 12 heads of 32
        B, S, H, hd = 64, 70, 12, 32
        qkv = torch.randn(B, S, 3 * H * hd, generator=g).to(dt)
        km = torch.zeros(B, S)
        km[1::2, S // 2 :] = float("-inf")

        def plain_attention():
            x = qkv.view(B, S, 3, H, hd).permute(2, 0, 3, 1, 4)
            ctx = fast_dropout.attend(x[0], x[1], x[2], km[:, None, None, :].to(dt), hd**-0.5, 0.0)
            return ctx.transpose(1, 2).reshape(B, S, H * hd)

        yield (
            "packed_attention",
            name,
            lambda: ops.packed_attention(qkv, km, H, hd**-0.5, backend="cpu"),
            plain_attention,
            cpu_paths.use_packed_attention(),
        )
        # residual add + LayerNorm (+ the bf16 copy under autocast)
        x = torch.randn(64, 70, 384, generator=g).to(dt)
        res = torch.randn(64, 70, 384, generator=g)
        w, b = torch.randn(384, generator=g), torch.randn(384, generator=g)
        bf = dt == torch.bfloat16
        yield (
            "residual_layer_norm",
            name,
            lambda: ops.residual_layer_norm(x, res, w, b, 1e-12, bf16_copy=bf, backend="cpu"),
            lambda: residual_layer_norm_reference(x, res, w, b, 1e-12, bf),
            cpu_paths.use_residual_layer_norm(),
        )
        # a frozen linear layer (FFN up-projection), forward + input gradient
        lin = torch.nn.Linear(384, 1536).requires_grad_(False)
        fl = torch.nn.Linear(384, 1536).requires_grad_(False)
        fl.load_state_dict(lin.state_dict())
        fl.__class__ = FrozenLinear
        xin = torch.randn(32, 90, 384, generator=g).requires_grad_()
        gy = torch.randn(32, 90, 1536, generator=g)

        def lin_step(m):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf):
                y = m(xin)
            torch.autograd.grad(y, xin, gy.to(y.dtype))

        yield (
            "frozen_linear (oneDNN)",
            name,
            lambda: lin_step(fl),
            lambda: lin_step(lin),
            cpu_paths.use_onednn_linear() and (not bf or onednn_bf16_available()),
        )
        # the backbone's dropout
        xd = torch.randn(32, 12, 90, 90, generator=g).to(dt)
        yield (
            "dropout",
            name,
            lambda: torch.ops.xpe_fast.dropout(xd, 0.1, 7),
            lambda: F.dropout(xd, 0.1),
            cpu_paths.use_dropout_kernel(),
        )
        # the two fused ops, forward + backward, on the embedded backbone's shapes
        V, d, N, L = 250037, 384, 20, 128
        word = torch.randn(V, d, generator=g).to(dt)
        pos = torch.randn(512, d, generator=g).to(dt)
        typ, lw, lb = (torch.randn(d, generator=g).to(dt) for _ in range(3))
        ids = torch.randint(3, V, (32, L), generator=g)
        prompt = torch.randn(N, d, generator=g).to(dt).requires_grad_()
        go = torch.randn(32, N + L, d, generator=g).to(dt)
        args = (word, pos, typ, lw, lb, 1e-12, 0)
        yield (
            "assemble_embeddings fwd+bwd",
            name,
            lambda: torch.autograd.grad(
                ops.assemble_embeddings(ids, prompt, *args, backend="cpu"), prompt, go
            ),
            lambda: torch.autograd.grad(
                assemble_embeddings_reference(ids, prompt, *args), prompt, go
            ),
            True,
        )
        h = 256
        mlp = [
            t.to(dt).requires_grad_()
            for t in (
                torch.randn(N, d, generator=g),
                torch.randn(h, d, generator=g) / 20,
                torch.zeros(h),
                torch.randn(h, h, generator=g) / 16,
                torch.zeros(h),
                torch.randn(d, h, generator=g) / 16,
                torch.zeros(d),
            )
        ]
        gm = torch.randn(N, d, generator=g).to(dt)
        yield (
            "prompt_encoder_mlp fwd+bwd",
            name,
            lambda: torch.autograd.grad(ops.prompt_encoder_mlp(*mlp, backend="cpu"), mlp, gm),
            lambda: torch.autograd.grad(prompt_encoder_mlp_reference(*mlp), mlp, gm),
            True,
        )


def measure_here() -> list[dict]:
    import torch

    from xpe_fast import _extension

    torch.set_num_threads(1)
    rows = []
    for name, dt, fast, plain, chosen in pairs():
        t = interleaved({"fast": fast, "plain": plain})
        rows.append(
            {
                "path": name,
                "dtype": dt,
                "fast_ms": t["fast"],
                "plain_ms": t["plain"],
                "speedup": t["plain"] / t["fast"],
                "chosen": "fast" if chosen else "plain",
                "isa_level": _extension._C.cpu_isa_level(),
            }
        )
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--here", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", default=str(HERE / "isa_paths.json"))
    args = ap.parse_args()
    if args.here:
        print(json.dumps(measure_here()))
        return 0
    out = {}
    for level, env in LEVELS.items():
        r = subprocess.run(
            [sys.executable, __file__, "--here"],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            cwd=HERE.parent,
        )
        if r.returncode != 0:
            out[level] = {"error": r.stderr[-400:]}
            continue
        out[level] = json.loads(r.stdout.strip().splitlines()[-1])
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    print(report(out))
    return 0


def report(out: dict) -> str:
    lines = []
    for level, rows in out.items():
        lines += [
            "",
            f"### {level}"
            + (
                f" (XPE_FAST_CPU_ISA / ONEDNN_MAX_CPU_ISA: {', '.join(LEVELS[level].values())})"
                if LEVELS.get(level)
                else " (this CPU, no caps)"
            ),
            "",
        ]
        if isinstance(rows, dict):
            lines.append(f"failed: {rows['error']}")
            continue
        lines += [
            "| path | dtype | fast ms | plain ms | plain / fast | package takes | right choice |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            best = "fast" if r["speedup"] >= 1.0 else "plain"
            ok = r["chosen"] == best or 0.9 <= r["speedup"] <= 1.1
            lines.append(
                f"| {r['path']} | {r['dtype']} | {r['fast_ms']:.3f} | "
                f"{r['plain_ms']:.3f} | {r['speedup']:.2f}x | {r['chosen']} | "
                f"{'yes' if ok else '**no**'} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
