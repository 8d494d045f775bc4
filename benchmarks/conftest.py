"""Benchmark setup. Variants of one comparison are timed interleaved (round robin) inside one
test, so a slow phase of the machine hits all of them alike; medians and ratios go into each
benchmark's extra_info (and so into --benchmark-json). Targets are recorded there as met or
missed (`record_targets`), never asserted: a slower machine is not a failure."""

import os
import statistics
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("XPE_FAST_SHARED", REPO.parent / "shared"))


@pytest.fixture
def threads(request):
    n = request.param
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    yield n
    torch.set_num_threads(old)


def interleaved(fns: dict, rounds: int, warmup: int = 2) -> dict:
    """Runs each callable `rounds` times, round robin; returns per-variant statistics (s)."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    out = {}
    for k, ts in times.items():
        ts = sorted(ts)
        q1, q3 = ts[len(ts) // 4], ts[(3 * len(ts)) // 4]
        out[k] = {"median": statistics.median(ts), "q1": q1, "q3": q3, "min": ts[0]}
    return out


def ratio_info(stats: dict, fast: str) -> dict:
    """Speed-ups of `fast` over every other variant: median ratio and a spread from the
    interquartile ranges (slow q1 / fast q3 .. slow q3 / fast q1)."""
    f = stats[fast]
    info = {}
    for k, s in stats.items():
        if k == fast:
            continue
        info[f"speedup_vs_{k}"] = s["median"] / f["median"]
        info[f"speedup_vs_{k}_range"] = [s["q1"] / f["q3"], s["q3"] / f["q1"]]
    return info


def record_targets(benchmark, targets: dict[str, tuple[float, float]], what: str) -> None:
    """targets: name -> (measured speed-up, target speed-up). Recorded in extra_info["targets"]
    with met / missed, and printed; not asserted."""
    rec = {name: {"value": v, "target": t, "met": bool(v >= t)} for name, (v, t) in targets.items()}
    benchmark.extra_info["targets"] = rec
    for name, r in rec.items():
        print(
            f"\n{what}: {name} {r['value']:.2f}x (target {r['target']}x): "
            f"{'met' if r['met'] else 'MISSED'}"
        )


def require_shared():
    if not SHARED.is_dir():
        pytest.skip(f"../shared/ is absent ({SHARED}): real SIB-200 batches are needed")
    return SHARED
