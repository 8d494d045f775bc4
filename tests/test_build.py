"""Build checks: the compiled extension, the CMake build, nvcc compiles of the CUDA kernels,
and the pure-PyTorch fallback when the extension cannot be imported."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_extension_is_built_and_loaded():
    import torch

    import xpe_fast
    import xpe_fast._C as C

    assert xpe_fast.has_compiled_extension()
    for name in (
        "assemble_embeddings",
        "assemble_embeddings_backward",
        "prompt_encoder_mlp",
        "prompt_encoder_mlp_backward",
        "dropout",
        "packed_attention",
        "residual_layer_norm",
    ):
        op = getattr(torch.ops.xpe_fast, name).default
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CPU"), name
    for name in ("cpu_isa_level", "packed_attention_supports_head_size", "skinny_gemm_nt"):
        assert hasattr(C, name)


def _nvcc():
    for cand in (shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc", "/usr/local/bin/nvcc"):
        if cand and os.path.exists(cand):
            return cand
    return None


CU_FILES = sorted((REPO / "csrc" / "cuda").glob("*.cu"))


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("cu", CU_FILES, ids=lambda p: p.name)
def test_cuda_kernels_compile_with_nvcc(cu, arch, tmp_path):
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc is not installed: the CUDA kernels cannot be compile-checked here")
    env = dict(os.environ)
    env.setdefault("CUDA_HOME", "/usr/local/cuda")
    cmd = [
        nvcc,
        f"-arch={arch}",
        "-std=c++17",
        "-O3",
        f"-I{REPO / 'csrc' / 'include'}",
        "-Werror",
        "all-warnings",
        "-c",
        str(cu),
        "-o",
        str(tmp_path / (cu.stem + ".o")),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / (cu.stem + ".o")).stat().st_size > 0


# The CUDA binding includes ATen's CUDA context, which names the handle types of cuBLAS,
# cuSPARSE and cuSOLVER; a toolkit without those libraries gets one-line stand-ins (the
# binding itself uses none of them), so its torch-facing code is still type-checked here.
_HANDLE_STUBS = {
    "cusparse.h": "typedef struct cusparseContext* cusparseHandle_t; typedef int cusparseStatus_t;",
    "cublas_v2.h": "typedef struct cublasContext* cublasHandle_t; typedef int cublasStatus_t;",
    "cublasLt.h": "typedef struct cublasLtContext* cublasLtHandle_t;",
    "cusolverDn.h": "typedef struct cusolverDnContext* cusolverDnHandle_t; "
    "typedef int cusolverStatus_t;",
    "cusolver_common.h": "",
    "c10/cuda/impl/cuda_cmake_macros.h": "",
}


def test_cuda_binding_type_checks_against_torch(tmp_path):
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    cuda_include = next(
        (
            d
            for d in (
                Path(home) / "include",
                Path(_nvcc() or "/").resolve().parent.parent / "include",
            )
            if (d / "cuda_runtime.h").is_file()
        ),
        None,
    )
    if cuda_include is None:
        pytest.skip("no CUDA toolkit headers (cuda_runtime.h): the binding cannot be checked")
    import sysconfig

    import torch.utils.cpp_extension as ce

    stubs = tmp_path / "stubs"
    for name, text in _HANDLE_STUBS.items():
        if not (cuda_include / name).is_file():
            (stubs / name).parent.mkdir(parents=True, exist_ok=True)
            (stubs / name).write_text(f"#pragma once\n{text}\n")
    cmd = [
        os.environ.get("CXX", "c++"),
        "-std=c++20",
        "-fsyntax-only",
        *[f"-I{d}" for d in ce.include_paths()],
        f"-I{cuda_include}",
        f"-I{stubs}",
        f"-I{REPO / 'csrc'}",
        f"-I{REPO / 'csrc' / 'include'}",
        f"-I{sysconfig.get_paths()['include']}",
        "-DTORCH_EXTENSION_NAME=_cuda",
        str(REPO / "csrc" / "cuda" / "bindings_cuda.cpp"),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-4000:]


def test_cuda_sources_are_torch_free():
    for cu in CU_FILES + [
        REPO / "csrc" / "cuda" / "launchers.h",
        REPO / "csrc" / "include" / "xpe_fast" / "kernel_math.h",
    ]:
        text = cu.read_text()
        assert "torch/" not in text and "ATen/" not in text and "c10/" not in text, cu


def _cuda_runtime_found() -> bool:
    """Whether torch's CMake config (FindCUDA: CUDA_HOME/lib64) finds the libraries a CUDA
    build of torch links: the runtime and NVRTC."""
    from torch.utils.cpp_extension import CUDA_HOME

    lib = Path(CUDA_HOME or "/nonexistent") / "lib64"
    return all(list(lib.glob(f"{name}.so*")) for name in ("libcudart", "libnvrtc"))


@pytest.mark.slow
def test_cmake_builds_an_importable_module(tmp_path):
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed")
    import torch

    if torch.version.cuda is not None and not _cuda_runtime_found():
        pytest.skip(
            "torch is a CUDA build, and this machine's CUDA toolkit has no lib64/libcudart and "
            "libnvrtc, which torch's CMake config links; setup.py builds _C here"
        )
    build = tmp_path / "build"
    cfg = subprocess.run(
        [
            cmake,
            "-S",
            str(REPO),
            "-B",
            str(build),
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DPython3_EXECUTABLE={sys.executable}",
        ],
        capture_output=True,
        text=True,
    )
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    bld = subprocess.run([cmake, "--build", str(build), "-j2"], capture_output=True, text=True)
    assert bld.returncode == 0, bld.stdout[-4000:] + bld.stderr[-4000:]
    (so,) = list((build / "xpe_fast").glob("_C*.so"))
    code = textwrap.dedent(f"""
        import importlib.util, torch
        spec = importlib.util.spec_from_file_location("xpe_fast._C", {str(so)!r})
        m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
        x = torch.randn(3, 4); w = torch.randn(5, 4); b = torch.zeros(5)
        w2 = torch.randn(5, 5); w3 = torch.randn(2, 5); b3 = torch.zeros(2)
        out, h1, h2 = torch.ops.xpe_fast.prompt_encoder_mlp(x, w, b, w2, b, w3, b3)
        ref = torch.relu(torch.relu(x @ w.T) @ w2.T) @ w3.T
        assert torch.allclose(out, ref, atol=1e-5), (out, ref)
        print("ok")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


def test_import_without_the_extension_falls_back_with_one_warning():
    code = textwrap.dedent("""
        import sys, warnings
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "xpe_fast._C":
                    raise ImportError("simulated failed build")
        sys.meta_path.insert(0, Block())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import xpe_fast
            import xpe_fast.ops
        msgs = [str(w.message) for w in caught if "xpe_fast._C" in str(w.message)]
        assert len(msgs) == 1, msgs
        import torch
        assert not xpe_fast.has_compiled_extension()
        assert xpe_fast.ops.resolve_backend(None, torch.device("cpu")) == "reference"
        x = torch.randn(2, 3)
        w = [torch.randn(4, 3), torch.randn(4), torch.randn(4, 4), torch.randn(4),
             torch.randn(3, 4), torch.randn(3)]
        y = xpe_fast.ops.prompt_encoder_mlp(x, *w)
        assert y.shape == (2, 3)
        try:
            xpe_fast.ops.prompt_encoder_mlp(x, *w, backend="cpu")
        except RuntimeError as e:
            assert "xpe_fast._C" in str(e)
        else:
            raise AssertionError("backend='cpu' should fail without the extension")
        print("ok")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and "ok" in res.stdout, res.stdout + res.stderr
