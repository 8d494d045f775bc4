"""Writes BENCHMARKS.md from a pytest-benchmark JSON and machine_peaks.json.

python benchmarks/report.py benchmarks/results.json benchmarks/machine_peaks.json > BENCHMARKS.md
"""

import json
import sys

from test_bench_ops import SHAPES

ES = {"fp32": 4, "bf16": 2}


def op_cost(op, pas, shape, dtype):
    """(bytes that must move, FLOPs that must be done) for one call."""
    s, es = SHAPES[shape], ES[dtype]
    B, L, N, d, h = s["B"], s["L"], s["N"], s["d"], s["h"]
    if op == "assemble":
        fwd_bytes = (B * L * d + (N + L) * d + N * d + 3 * d + B * (N + L) * d) * es + B * L * 8
        fwd_flops = 8 * B * (N + L) * d
        bwd_bytes = (B * N * d + N * d + N * d + 2 * d + N * d) * es
        bwd_flops = (2 * B + 12) * N * d
    else:
        w = d * h + h * h + h * d
        fwd_bytes = (w + N * d + N * d + 2 * N * h) * es
        fwd_flops = 2 * N * w
        bwd_bytes = (2 * w + 4 * N * h + 2 * N * d) * es
        bwd_flops = 4 * N * w
    if pas == "fwd":
        return fwd_bytes, fwd_flops
    return fwd_bytes + bwd_bytes, fwd_flops + bwd_flops


def targets(e: dict) -> str:
    """'vs compile >= 2x: met; ...' from what benchmarks/conftest.record_targets stored."""
    parts = []
    for k, t in e.get("targets", {}).items():
        what = (
            f"<= {1 / t['target']:g}x lower bound"
            if k == "lower_bound"
            else f"vs {k} >= {t['target']:.3g}x"
        )
        parts.append(f"{what}: {'met' if t['met'] else '**missed**'}")
    return "; ".join(parts) or "-"


def lower_bound(e: dict) -> str:
    if "median_lower_bound_ms" not in e:
        return "-"
    return f"{e['median_xpe_fast_ms'] / e['median_lower_bound_ms']:.2f}x"


def main(results_path, peaks_path):
    res = json.load(open(results_path))
    peaks = json.load(open(peaks_path))
    mi = res.get("machine_info", {})
    out = [
        "# Benchmarks",
        "",
        "Produced by `python benchmarks/run_all.py` (which runs `pytest benchmarks/ "
        "--benchmark-only --benchmark-json=benchmarks/results.json`, "
        "`benchmarks/machine_peaks.py` and this report).",
        "",
        f"Machine: {peaks['cpu']}, {mi.get('cpu', {}).get('count', '?')} logical CPUs, "
        f"torch {peaks['torch']}, Python {mi.get('python_version', '?')}; "
        f"fast bf16 (AMX / AVX-512 bf16): {'yes' if peaks['fast_bf16'] else 'no'}.",
        f"Measured ceilings: copy {peaks['copy_GBps']['1']:.1f} GB/s (1 thread), "
        f"{peaks['copy_GBps']['2']:.1f} GB/s (2 threads), read + write; matmul fp32 "
        f"{peaks['matmul_GFLOPs']['fp32/1']:.0f} / {peaks['matmul_GFLOPs']['fp32/2']:.0f} "
        f"GFLOP/s, bf16 {peaks['matmul_GFLOPs']['bf16/1']:.0f} / "
        f"{peaks['matmul_GFLOPs']['bf16/2']:.0f} GFLOP/s (1 / 2 threads; the better of torch.mm "
        "and oneDNN).",
        "",
        "Every ratio is a median over interleaved runs (the variants of one comparison run "
        "round robin in one test); the range is [slow q1 / fast q3, slow q3 / fast q1].",
        "",
        "## Fused ops (C++ CPU backend)",
        "",
        "| op | pass | shape | dtype | threads | xpe_fast ms | eager ms | compile ms | "
        "vs eager | vs compile | time / lower bound | bytes / time | of copy peak | FLOP/s | "
        "targets |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    model_rows = []
    for b in res["benchmarks"]:
        e = b["extra_info"]
        if "op" in e:
            nbytes, flops = op_cost(e["op"], e["pass"], e["shape"], e["dtype"])
            t = e["median_xpe_fast_ms"] / 1e3
            bw = nbytes / t / 1e9
            peak = peaks["copy_GBps"][str(e["threads"])]
            r1, r2 = e["speedup_vs_eager_range"], e["speedup_vs_compile_range"]
            out.append(
                f"| {e['op']} | {e['pass']} | {e['shape']} | {e['dtype']} | {e['threads']} | "
                f"{e['median_xpe_fast_ms']:.3f} | {e['median_eager_ms']:.3f} | "
                f"{e['median_compile_ms']:.3f} | {e['speedup_vs_eager']:.2f}x "
                f"[{r1[0]:.2f}, {r1[1]:.2f}] | {e['speedup_vs_compile']:.2f}x "
                f"[{r2[0]:.2f}, {r2[1]:.2f}] | {lower_bound(e)} | {bw:.1f} GB/s | "
                f"{100 * bw / peak:.0f} % | {flops / t / 1e9:.1f} G | {targets(e)} |"
            )
        else:
            model_rows.append((b["name"], e))
    out += [
        "",
        "`time / lower bound`: the op's time over that of torch's gather of one row per "
        "output slot into a new [B, N+L, d] tensor (what any implementation must read and "
        "write; target: within 2x).",
        "",
        "Roofline: `bytes / time` counts the bytes each call must move at least (inputs "
        "read once, outputs written once; for the MLP the weights and activations), against "
        "the copy peak of the same thread count; FLOP/s counts the arithmetic it must do.",
        "",
        "## Model: training step and evaluation against Hugging Face PEFT",
        "",
    ]
    for name, e in model_rows:
        if "sample_over_batch" in e:
            out.append(
                f"- `{name}`: per-sample prompt dropout (`--prompt-dropout-scope sample`) "
                f"{1e3 * e['step_s_sample']:.0f} ms against {1e3 * e['step_s_batch']:.0f} ms "
                f"per batch, {e['sample_over_batch']:.3f}x the step time, {e['precision']}, "
                f"{e['threads']} thread(s), batch {e['batch_tokens']} ({targets(e)})"
            )
            continue
        rng = e.get("speedup_vs_peft_range", [0, 0])
        line = (
            f"- `{name}`: {e['speedup_vs_peft']:.2f}x PEFT [{rng[0]:.2f}, {rng[1]:.2f}] "
            f"({targets(e)})"
        )
        if "samples_per_s_xpe_fast" in e:
            line += (
                f"; {e['samples_per_s_xpe_fast']:.1f} vs {e['samples_per_s_peft']:.1f} "
                f"samples/s (batch {e['batch_tokens']}); about {e['step_gflop']:.0f} GFLOP "
                f"per step, {e['achieved_gflops_xpe_fast']:.0f} GFLOP/s achieved"
            )
            mm = peaks["matmul_GFLOPs"].get(f"{e['precision']}/{e['threads']}")
            if mm:
                share = 100 * e["achieved_gflops_xpe_fast"] / mm
                line += f" ({share:.0f} % of the {mm:.0f} GFLOP/s {e['precision']} matmul peak)"
        if "eval_gflop" in e:
            mm = peaks["matmul_GFLOPs"].get(f"{e['precision']}/{e['threads']}")
            line += (
                f"; {e['eval_gflop']:.0f} GFLOP per pass, {e['achieved_gflops_xpe_fast']:.0f} "
                f"GFLOP/s achieved"
                + (
                    f" ({100 * e['achieved_gflops_xpe_fast'] / mm:.0f} % of the matmul peak)"
                    if mm
                    else ""
                )
            )
        if "sentences_per_s_xpe_fast" in e:
            line += (
                f"; {e['sentences_per_s_xpe_fast']:.1f} vs {e['sentences_per_s_peft']:.1f} "
                f"sentences/s over {e['sentences']} test sentences of "
                f"{len(e['languages'])} languages, precision {e['precision']}"
            )
        out.append(line)
    print("\n".join(out))


if __name__ == "__main__":
    main(*sys.argv[1:3])
