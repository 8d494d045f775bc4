"""Test setup: Triton kernels run on the CPU through the interpreter, one thread for torch.

TRITON_INTERPRET is read when @triton.jit decorates a function, so it is set here, before any
xpe_fast module that defines Triton kernels can be imported.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# The decoded embedded backbone is cached per test session (and shared with the commands the
# tests start), never in the user's own cache folder.
os.environ.setdefault("XPE_FAST_CACHE", __import__("tempfile").mkdtemp(prefix="xpe-fast-cache-"))

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("XPE_FAST_SHARED", REPO.parent / "shared"))


def _has_triton():
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


HAS_TRITON = _has_triton()
requires_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(
            f"../shared/ is absent ({SHARED}): the SIB-200 copy and the reference "
            "tokenizer live there"
        )
    return SHARED


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
