"""This machine's ceilings for the rooflines of BENCHMARKS.md: copy bandwidth (bytes read +
written per second by a large tensor copy) and matmul rate (fp32 and bf16, the better of torch.mm
and oneDNN), at 1 and 2 threads.

    python benchmarks/machine_peaks.py [--out benchmarks/machine_peaks.json]
"""

import argparse
import json
import platform
import statistics
import time

import torch


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def timed(f, rounds=7):
    f()
    ts = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def measure() -> dict:
    from xpe_fast.device import cpu_has_fast_bf16
    from xpe_fast.frozen_linear import onednn_available, onednn_bf16_available

    out = {
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "fast_bf16": cpu_has_fast_bf16(),
        "copy_GBps": {},
        "matmul_GFLOPs": {},
    }
    src = torch.empty(64 * 2**20, dtype=torch.float32).uniform_()  # 256 MiB
    dst = torch.empty_like(src)
    for n in (1, 2):
        torch.set_num_threads(n)
        t = timed(lambda: dst.copy_(src))
        out["copy_GBps"][str(n)] = 2 * src.numel() * 4 / t / 1e9
        for name, dt, size in (("fp32", torch.float32, 2048), ("bf16", torch.bfloat16, 1024)):
            a = torch.randn(size, size).to(dt)
            b = torch.randn(size, size).to(dt)
            # The better of torch.mm (MKL for fp32) and oneDNN (what FrozenLinear uses): on
            # AMD processors MKL runs AVX2 code, oneDNN AVX-512.
            rates = {"torch.mm": 2 * size**3 / timed(lambda: torch.mm(a, b), rounds=5) / 1e9}
            if onednn_available() and (dt == torch.float32 or onednn_bf16_available()):
                rates["oneDNN"] = (
                    2
                    * size**3
                    / timed(
                        lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], ""),
                        rounds=5,
                    )
                    / 1e9
                )
            out["matmul_GFLOPs"][f"{name}/{n}"] = max(rates.values())
            out.setdefault("matmul_by_library", {})[f"{name}/{n}"] = rates
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/machine_peaks.json")
    args = ap.parse_args()
    res = measure()
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))
