// Float32 GEMMs for few rows (csrc/cpu/skinny_gemm.cpp); contiguous 2-D CPU tensors.
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

// Whether the MLP's fp32 GEMMs go to these loops: few rows, and AVX-512 (measured there; with
// AVX2 alone the loops run half-width against MKL's own AVX2 kernels, so ATen's BLAS keeps
// those, and everything else).
inline bool use_skinny_gemm(const at::Tensor& x) {
  return x.scalar_type() == at::kFloat && x.size(0) <= 64 && active_isa_level() == 2;
}

}  // namespace xpe_cpu
