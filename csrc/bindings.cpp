// pybind11 binding of the CPU kernels: the module xpe_fast._C. Only argument plumbing here;
// the kernels and their validation live in csrc/cpu/.
#include <torch/extension.h>

#include "cpu/ops.h"
#include "cpu/skinny_gemm.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "xpe_fast C++ CPU kernels";
  m.def("assemble_embeddings_forward", &xpe_cpu::assemble_embeddings_forward, py::arg("input_ids"),
        py::arg("prompt"), py::arg("word_embeddings"), py::arg("position_embeddings"),
        py::arg("token_type_embedding"), py::arg("ln_weight"), py::arg("ln_bias"), py::arg("eps"),
        py::arg("position_offset"));
  m.def("assemble_embeddings_backward", &xpe_cpu::assemble_embeddings_backward, py::arg("grad_out"),
        py::arg("prompt"), py::arg("position_embeddings"), py::arg("token_type_embedding"),
        py::arg("ln_weight"), py::arg("eps"), py::arg("position_offset"), py::arg("seq_len"));
  m.def("assemble_embeddings_autograd", &xpe_cpu::assemble_embeddings_autograd,
        py::arg("input_ids"), py::arg("prompt"), py::arg("word_embeddings"),
        py::arg("position_embeddings"), py::arg("token_type_embedding"), py::arg("ln_weight"),
        py::arg("ln_bias"), py::arg("eps"), py::arg("position_offset"));
  m.def("prompt_encoder_mlp_forward", &xpe_cpu::prompt_encoder_mlp_forward, py::arg("x"),
        py::arg("w1"), py::arg("b1"), py::arg("w2"), py::arg("b2"), py::arg("w3"), py::arg("b3"),
        py::arg("mask1") = py::none(), py::arg("mask2") = py::none());
  m.def("prompt_encoder_mlp_backward", &xpe_cpu::prompt_encoder_mlp_backward, py::arg("grad_out"),
        py::arg("x"), py::arg("w1"), py::arg("w2"), py::arg("w3"), py::arg("h1"), py::arg("h2"),
        py::arg("mask1") = py::none(), py::arg("mask2") = py::none());
  m.def("prompt_encoder_mlp_autograd", &xpe_cpu::prompt_encoder_mlp_autograd, py::arg("x"),
        py::arg("w1"), py::arg("b1"), py::arg("w2"), py::arg("b2"), py::arg("w3"), py::arg("b3"),
        py::arg("mask1") = py::none(), py::arg("mask2") = py::none());
  m.def("dropout_apply", &xpe_cpu::dropout_apply, py::arg("x"), py::arg("p"), py::arg("seed"),
        py::arg("offset") = 0);
  m.def("packed_attention_forward", &xpe_cpu::packed_attention_forward, py::arg("qkv"),
        py::arg("key_mask") = py::none(), py::arg("num_heads"), py::arg("scale"));
  m.def("packed_attention_supports_head_size", &xpe_cpu::packed_attention_supports_head_size,
        py::arg("head_size"));
  // The MLP's few-row GEMMs (fp32, and bf16 with AVX512-BF16), bound for tests and
  // microbenchmarks.
  m.def("skinny_gemm_nt", &xpe_cpu::skinny_gemm_nt, py::arg("a"), py::arg("w"),
        py::arg("bias") = py::none());
  m.def("skinny_gemm_nn", &xpe_cpu::skinny_gemm_nn, py::arg("a"), py::arg("b"));
  m.def("skinny_gemm_tn", &xpe_cpu::skinny_gemm_tn, py::arg("g"), py::arg("h"));
  m.def("skinny_gemm_tn_nn", &xpe_cpu::skinny_gemm_tn_nn, py::arg("g"), py::arg("h"), py::arg("b"));
  m.def("cpu_isa_level", &xpe_cpu::active_isa_level,
        "ISA level of the CPU kernels: 3 AVX-512 + AVX512-BF16, 2 AVX-512, 1 AVX2, 0 baseline");
  m.def("residual_layer_norm_forward", &xpe_cpu::residual_layer_norm_forward, py::arg("x"),
        py::arg("residual"), py::arg("weight"), py::arg("bias"), py::arg("eps"),
        py::arg("bf16_copy") = false);
}
