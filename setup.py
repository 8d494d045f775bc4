"""Build of the xpe_fast extensions.

- xpe_fast._C: the C++ CPU kernels, always built.
- xpe_fast._cuda: the CUDA kernels, built only when torch is a CUDA build and a CUDA toolkit
  is found (never requires a GPU at build time). XPE_FAST_FORCE_CUDA=1 builds it or fails
  loudly; XPE_FAST_SKIP_CUDA=1 never builds it.
"""

import glob
import os

from setuptools import setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _want_cuda():
    import torch

    if _flag("XPE_FAST_SKIP_CUDA"):
        return False
    found = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if _flag("XPE_FAST_FORCE_CUDA"):
        if not found:
            raise RuntimeError(
                "XPE_FAST_FORCE_CUDA=1 but torch is not a CUDA build "
                f"(torch.version.cuda={torch.version.cuda}) or no CUDA toolkit was found "
                f"(CUDA_HOME={cpp_extension.CUDA_HOME})"
            )
        return True
    return found


# -g0: Python's own -g makes each file compile ~11 s longer and the .so 50x larger.
# No FP contraction: a fused multiply-add rounds differently from the eager reference, which
# LayerNorm backward amplifies by 1/std (the C++ standard is the one torch asks for).
CXX_FLAGS = ["-O3", "-g0", "-fopenmp", "-ffp-contract=off"]
include_dirs = [os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc")]

ext_modules = [
    cpp_extension.CppExtension(
        "xpe_fast._C",
        sources=["csrc/bindings.cpp", "csrc/schema.cpp", "csrc/autograd.cpp"]
        + sorted(glob.glob("csrc/cpu/*.cpp")),
        include_dirs=include_dirs,
        extra_compile_args={"cxx": CXX_FLAGS},
        extra_link_args=["-fopenmp"],
    )
]


def _pip_cuda_includes():
    """Header folders of pip's CUDA wheels (nvidia/<lib>/include), which a CUDA build of torch
    installs beside itself and which the system toolkit may lack."""
    import torch

    site = os.path.dirname(os.path.dirname(torch.__file__))
    return sorted(glob.glob(os.path.join(site, "nvidia", "*", "include")))


if _want_cuda():
    ext_modules.append(
        cpp_extension.CUDAExtension(
            "xpe_fast._cuda",
            sources=["csrc/cuda/bindings_cuda.cpp"] + sorted(glob.glob("csrc/cuda/*.cu")),
            include_dirs=include_dirs + _pip_cuda_includes(),
            extra_compile_args={"cxx": CXX_FLAGS, "nvcc": ["-O3"]},
        )
    )


class BuildExtension(cpp_extension.BuildExtension):
    """Also places the built modules beside the sources (as an editable install would), so
    that `python -m xpe_fast.train` or `python -c "import xpe_fast._C"` run from the
    repository root, where the source folder shadows the installed package, still find them."""

    def run(self):
        super().run()
        if self.inplace:
            return
        for ext in self.extensions:
            built = self.get_ext_fullpath(ext.name)
            rel = os.path.relpath(built, os.path.abspath(self.build_lib))
            target = os.path.join(ROOT, rel)
            if os.path.isdir(os.path.dirname(target)) and os.access(
                os.path.dirname(target), os.W_OK
            ):
                self.copy_file(built, target)


setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildExtension})
