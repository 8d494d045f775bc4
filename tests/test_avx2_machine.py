"""The suite's CPU-dependent tests once more as on an AVX2-only CPU: this package's kernels
forced to their AVX2 variants (XPE_FAST_CPU_ISA=avx2) and oneDNN capped at AVX2
(ONEDNN_MAX_CPU_ISA=AVX2), where oneDNN has no bf16 kernels, so every bf16 path must take its
fallback. One machine proves both branches."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from xpe_fast.frozen_linear import onednn_available

REPO = Path(__file__).resolve().parents[1]
FILES = [
    "test_frozen_linear.py",
    "test_model_fused.py",
    "test_model.py",
    "test_fast_dropout.py",
    "test_acceleration.py",
    "test_ops_packed_attention.py",
    "test_ops_residual_layer_norm.py",
    "test_peft_equality.py",
    "test_cli.py",
]
CAPPED = dict(ONEDNN_MAX_CPU_ISA="AVX2", XPE_FAST_CPU_ISA="avx2", XPE_FAST_AVX2_RUN="1")


def capped_python(code: str) -> str:
    env = dict(os.environ, **CAPPED)
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.mark.skipif(not onednn_available(), reason="this torch has no oneDNN to cap")
def test_the_cap_takes_the_no_bf16_branch():
    out = capped_python(
        "from xpe_fast.frozen_linear import onednn_bf16_available as a; "
        "from xpe_fast.device import resolve_precision as r; "
        "from xpe_fast import _extension as e; "
        "print(a(), r('auto'), e._C.cpu_isa_level())"
    )
    assert out.split() == ["False", "fp32", "1"], out


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("XPE_FAST_AVX2_RUN") == "1", reason="already the AVX2 run")
@pytest.mark.skipif(not onednn_available(), reason="this torch has no oneDNN to cap")
def test_suite_passes_as_on_an_avx2_only_cpu():
    env = dict(os.environ, **CAPPED)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:cacheprovider",
            *[f"tests/{f}" for f in FILES],
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    tail = "\n".join(r.stdout.splitlines()[-15:])
    assert r.returncode == 0, tail + r.stderr[-2000:]
    assert " passed" in tail
