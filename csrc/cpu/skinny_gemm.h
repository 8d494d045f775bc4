// GEMMs for few rows: float32 (csrc/cpu/skinny_gemm.cpp) and bfloat16 with AVX512-BF16
// (csrc/cpu/skinny_gemm_bf16.cpp); contiguous 2-D CPU tensors of one dtype. Where the CPU
// lacks AVX512-BF16, bf16 inputs go to ATen's mm.
#pragma once

#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <utility>

#include "cpu/clones.h"

namespace xpe_cpu {

// A [M, K] W[N, K]^T (+ bias [N], may be undefined) -> [M, N]
at::Tensor skinny_gemm_nt(const at::Tensor& a, const at::Tensor& w,
                          const c10::optional<at::Tensor>& bias);
// A [M, K] B [K, N] -> [M, N]
at::Tensor skinny_gemm_nn(const at::Tensor& a, const at::Tensor& b);
// G [M, N1]^T H [M, N2] -> [N1, N2]
at::Tensor skinny_gemm_tn(const at::Tensor& g, const at::Tensor& h);

// The backward of one layer: {G^T H, G B} (G [M, N1], H [M, N2], B [N1, N]) in one parallel
// region, the two GEMMs' blocks split among the threads by FLOPs: one fork/join instead of
// two, and no thread waits at the end of the first GEMM for the others.
std::pair<at::Tensor, at::Tensor> skinny_gemm_tn_nn(const at::Tensor& g, const at::Tensor& h,
                                                    const at::Tensor& b);

// Rows of A per register block in nn (fp32 and bf16): 5 load (bf16: and interleave) B a fifth
// less often than 4 (faster at the paper's M = 20); 4 where that wastes fewer rows (M = 16).
inline int nn_rows_per_block(int64_t M) { return (M + 3) / 4 * 4 < (M + 4) / 5 * 5 ? 4 : 5; }

// Whether the bf16 loops are compiled in and this CPU (or XPE_FAST_CPU_ISA) allows them.
bool have_bf16_gemm_kernels();
at::Tensor skinny_gemm_nt_bf16(const at::Tensor& a, const at::Tensor& w, const at::Tensor& bias);
at::Tensor skinny_gemm_nn_bf16(const at::Tensor& a, const at::Tensor& b);
at::Tensor skinny_gemm_tn_bf16(const at::Tensor& g, const at::Tensor& h);
std::pair<at::Tensor, at::Tensor> skinny_gemm_tn_nn_bf16(const at::Tensor& g, const at::Tensor& h,
                                                         const at::Tensor& b);

// Runs two GEMMs given as ranges of blocks (units(), cost() FLOPs per block, run(begin, end))
// as one parallel_for of one task per thread, each an equal share of the FLOPs of both (a
// task may end in the first GEMM's blocks and go on in the second's).
template <typename P1, typename P2>
void parallel_two(const P1& p1, const P2& p2) {
  const int64_t u1 = p1.units(), c1 = std::max<int64_t>(1, p1.cost());
  const int64_t u2 = p2.units(), c2 = std::max<int64_t>(1, p2.cost());
  const int64_t total = u1 * c1 + u2 * c2;
  // about 2^20 FLOPs at least per task, as in the single GEMMs
  const int64_t tasks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), total >> 20));
  auto first = [&](int64_t x) {  // the first block that starts at or after x FLOPs
    return x <= u1 * c1 ? (x + c1 - 1) / c1 : u1 + (x - u1 * c1 + c2 - 1) / c2;
  };
  at::parallel_for(0, tasks, 1, [&](int64_t s, int64_t e) {
    for (int64_t t = s; t < e; ++t) {
      const int64_t a = first(total * t / tasks), b = first(total * (t + 1) / tasks);
      if (a < std::min(b, u1)) p1.run(a, std::min(b, u1));
      if (std::max(a, u1) < b) p2.run(std::max(a, u1) - u1, b - u1);
    }
  });
}

// Whether the MLP's GEMMs go to these loops: few rows, and AVX-512 for fp32 (measured there;
// with AVX2 alone the loops run half-width against MKL's own AVX2 kernels, so ATen's BLAS
// keeps those, and everything else), AVX512-BF16 for bf16.
inline bool use_skinny_gemm(const at::Tensor& x) {
  if (x.size(0) > 64) return false;
  if (x.scalar_type() == at::kFloat) return active_isa_level() >= 2;
  return x.scalar_type() == at::kBFloat16 && have_bf16_gemm_kernels();
}

}  // namespace xpe_cpu
