// The module xpe_fast._C. Its ops are dispatcher ops (csrc/schema.cpp, kernels registered in
// csrc/cpu/, autograd in csrc/autograd.cpp), called as torch.ops.xpe_fast.*; the few plain
// functions bound here are queries and the MLP's few-row GEMMs for tests and microbenchmarks.
#include <torch/extension.h>

#include "cpu/ops.h"
#include "cpu/skinny_gemm.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "xpe_fast C++ CPU kernels (the ops are torch.ops.xpe_fast.*)";
  m.def("packed_attention_supports_head_size", &xpe_cpu::packed_attention_supports_head_size,
        py::arg("head_size"));
  m.def("cpu_isa_level", &xpe_cpu::active_isa_level,
        "ISA level of the CPU kernels: 3 AVX-512 + AVX512-BF16, 2 AVX-512, 1 AVX2, 0 baseline");
  // fp32, and bf16 with AVX512-BF16.
  m.def("skinny_gemm_nt", &xpe_cpu::skinny_gemm_nt, py::arg("a"), py::arg("w"),
        py::arg("bias") = py::none());
  m.def("skinny_gemm_nn", &xpe_cpu::skinny_gemm_nn, py::arg("a"), py::arg("b"));
  m.def("skinny_gemm_tn", &xpe_cpu::skinny_gemm_tn, py::arg("g"), py::arg("h"));
  m.def("skinny_gemm_tn_nn", &xpe_cpu::skinny_gemm_tn_nn, py::arg("g"), py::arg("h"), py::arg("b"));
}
