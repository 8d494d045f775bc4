// GEMMs for few rows: float32 (csrc/cpu/skinny_gemm.cpp) and bfloat16 with AVX512-BF16
// (csrc/cpu/skinny_gemm_bf16.cpp); contiguous 2-D CPU tensors of one dtype. Where the CPU
// lacks AVX512-BF16, bf16 inputs go to ATen's mm.
#pragma once

#include <torch/extension.h>

#include "cpu/clones.h"

namespace xpe_cpu {

// A [M, K] W[N, K]^T (+ bias [N], may be undefined) -> [M, N]
at::Tensor skinny_gemm_nt(const at::Tensor& a, const at::Tensor& w,
                          const c10::optional<at::Tensor>& bias);
// A [M, K] B [K, N] -> [M, N]
at::Tensor skinny_gemm_nn(const at::Tensor& a, const at::Tensor& b);
// G [M, N1]^T H [M, N2] -> [N1, N2]
at::Tensor skinny_gemm_tn(const at::Tensor& g, const at::Tensor& h);

// Whether the bf16 loops are compiled in and this CPU (or XPE_FAST_CPU_ISA) allows them.
bool have_bf16_gemm_kernels();
at::Tensor skinny_gemm_nt_bf16(const at::Tensor& a, const at::Tensor& w, const at::Tensor& bias);
at::Tensor skinny_gemm_nn_bf16(const at::Tensor& a, const at::Tensor& b);
at::Tensor skinny_gemm_tn_bf16(const at::Tensor& g, const at::Tensor& h);

// Whether the MLP's GEMMs go to these loops: few rows, and AVX-512 for fp32 (measured there;
// with AVX2 alone the loops run half-width against MKL's own AVX2 kernels, so ATen's BLAS
// keeps those, and everything else), AVX512-BF16 for bf16.
inline bool use_skinny_gemm(const at::Tensor& x) {
  if (x.size(0) > 64) return false;
  if (x.scalar_type() == at::kFloat) return active_isa_level() >= 2;
  return x.scalar_type() == at::kBFloat16 && have_bf16_gemm_kernels();
}

}  // namespace xpe_cpu
