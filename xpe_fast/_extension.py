"""Loading of the compiled extensions, with a pure-PyTorch fallback.

A failed or missing build never makes the package unusable: `import xpe_fast` still works on
the reference path and warns once.
"""

from __future__ import annotations

import importlib
import warnings

import torch  # noqa: F401  (loads libc10/libtorch, which the extension links against)

_C = None
_cuda = None
C_IMPORT_ERROR: str | None = None


def _load():
    global _C, _cuda, C_IMPORT_ERROR
    try:
        _C = importlib.import_module("xpe_fast._C")
    except ImportError as e:  # build failed or running from a source tree without a build
        C_IMPORT_ERROR = str(e)
        warnings.warn(
            "xpe_fast: the compiled extension xpe_fast._C could not be imported "
            f"({e}); using the pure PyTorch reference path (slower). Reinstall with "
            "`pip install .` to build it.",
            RuntimeWarning,
            stacklevel=3,
        )
    try:
        _cuda = importlib.import_module("xpe_fast._cuda")
    except ImportError:
        _cuda = None  # only built where torch is a CUDA build and a toolkit exists


_load()


def has_cpu_kernels() -> bool:
    return _C is not None


def has_cuda_kernels() -> bool:
    return _cuda is not None
