// Prompt-encoder MLP, CPU: Linear -> ReLU -> Dropout -> Linear -> ReLU -> Dropout -> Linear.
//
// The GEMMs are all the FLOPs. With few rows (the N virtual tokens) they run in hand-written
// loops: float32 in skinny_gemm.cpp's AVX-512 code (MKL takes its AVX2 path on AMD); bf16 in
// skinny_gemm_bf16.cpp's AVX512-BF16 code (both faster than torch's GEMMs at these shapes:
// BENCHMARKS.md, micro-measurements); in backward each layer's two GEMMs share one parallel region.
// Otherwise ATen's BLAS (MKL, or oneDNN for bf16). What is fused here is everything between them:
// bias + ReLU + dropout in one in-place pass after each GEMM, and in backward the
// ReLU/dropout gradient together with the bias gradient (a column sum in the accumulation
// type) in one pass, with the whole forward or backward a single call from Python (no
// autograd graph of ten nodes, no intermediate tensors beyond the two saved activations).
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/extension.h>

#include <vector>

#include "xpe_fast/checks.h"
#include "xpe_fast/kernel_math.h"
#include "cpu/clones.h"
#include "cpu/skinny_gemm.h"

namespace xpe_cpu {
namespace {

using xpe::bf16_t;

// h[i, :] = relu(h[i, :]) * m[i, :] in place (m may be null: no dropout).
template <typename T, typename A = typename xpe::acc_of<T>::type>
XPE_HD void relu_dropout_rows(T* h, const T* m, int64_t cols, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    T* row = h + i * cols;
    const T* mrow = m ? m + i * cols : nullptr;
#pragma omp simd
    for (int64_t k = 0; k < cols; ++k)
      xpe::store(row, k,
                 xpe::relu_dropout<A>(xpe::load(row, k), mrow ? A(xpe::load(mrow, k)) : A(1)));
  }
}

// g = relu_dropout_grad(g, h, m) in place over all rows (h may be null: g is only summed), and
// gb[k] = sum_i g[i, k]: one pass. Columns are split across threads so the bias sums need no
// reduction between threads; they accumulate in A, 64 columns at a time, and are stored in T.
template <typename T, typename A = typename xpe::acc_of<T>::type>
XPE_HD void relu_dropout_grad_cols(T* g, const T* h, const T* m, T* gb, int64_t rows, int64_t cols,
                                   int64_t cbegin, int64_t cend) {
  constexpr int64_t kBlock = 64;
  for (int64_t c0 = cbegin; c0 < cend; c0 += kBlock) {
    const int64_t n = cend - c0 < kBlock ? cend - c0 : kBlock;
    A acc[kBlock];
    for (int64_t k = 0; k < kBlock; ++k) acc[k] = 0;
    for (int64_t i = 0; i < rows; ++i) {
      T* grow = g + i * cols + c0;
      if (h) {
        const T* hrow = h + i * cols + c0;
        const T* mrow = m ? m + i * cols + c0 : nullptr;
#pragma omp simd
        for (int64_t k = 0; k < n; ++k)
          xpe::store(grow, k,
                     xpe::relu_dropout_grad<A>(xpe::load(grow, k), xpe::load(hrow, k),
                                               mrow ? A(xpe::load(mrow, k)) : A(1)));
      }
#pragma omp simd
      for (int64_t k = 0; k < n; ++k)
        acc[k] += A(xpe::load(grow, k));  // what was stored, as autograd sums
    }
    for (int64_t k = 0; k < n; ++k) xpe::store(gb + c0, k, acc[k]);
  }
}

XPE_MULTIVERSION(relu_dropout_f32, (float* h, const float* m, int64_t c, int64_t s, int64_t e),
                 (h, m, c, s, e), relu_dropout_rows<float>)
XPE_MULTIVERSION(relu_dropout_f64, (double* h, const double* m, int64_t c, int64_t s, int64_t e),
                 (h, m, c, s, e), relu_dropout_rows<double>)
XPE_MULTIVERSION(relu_dropout_bf16, (bf16_t * h, const bf16_t* m, int64_t c, int64_t s, int64_t e),
                 (h, m, c, s, e), relu_dropout_rows<bf16_t>)
XPE_MULTIVERSION(grad_f32,
                 (float* g, const float* h, const float* m, float* gb, int64_t r, int64_t c,
                  int64_t s, int64_t e),
                 (g, h, m, gb, r, c, s, e), relu_dropout_grad_cols<float>)
XPE_MULTIVERSION(grad_f64,
                 (double* g, const double* h, const double* m, double* gb, int64_t r, int64_t c,
                  int64_t s, int64_t e),
                 (g, h, m, gb, r, c, s, e), relu_dropout_grad_cols<double>)
XPE_MULTIVERSION(grad_bf16,
                 (bf16_t * g, const bf16_t* h, const bf16_t* m, bf16_t* gb, int64_t r, int64_t c,
                  int64_t s, int64_t e),
                 (g, h, m, gb, r, c, s, e), relu_dropout_grad_cols<bf16_t>)

template <typename T>
T* raw(const at::Tensor& t) {
  return t.defined() ? reinterpret_cast<T*>(t.data_ptr()) : nullptr;
}

void relu_dropout_(at::Tensor& h, const at::Tensor& m) {
  const int64_t rows = h.size(0), cols = h.size(1);
  const int64_t grain = std::max<int64_t>(1, 16384 / cols);
  const auto st = h.scalar_type();
  at::parallel_for(0, rows, grain, [&](int64_t s, int64_t e) {
    if (st == at::kFloat)
      relu_dropout_f32(raw<float>(h), raw<float>(m), cols, s, e);
    else if (st == at::kDouble)
      relu_dropout_f64(raw<double>(h), raw<double>(m), cols, s, e);
    else
      relu_dropout_bf16(raw<bf16_t>(h), raw<bf16_t>(m), cols, s, e);
  });
}

// In place on g (when h is defined; otherwise g is only summed); returns the bias gradient,
// the column sums of the result, in g's dtype.
at::Tensor relu_dropout_grad_(const at::Tensor& g, const at::Tensor& h, const at::Tensor& m) {
  const int64_t rows = g.size(0), cols = g.size(1);
  const auto st = g.scalar_type();
  auto gb = at::empty({cols}, g.options());
  // up to 64K elements (microseconds of work) on one thread: not worth a fork/join
  const int64_t grain = std::max<int64_t>(64, 65536 / std::max<int64_t>(1, rows));
  at::parallel_for(0, cols, grain, [&](int64_t s, int64_t e) {
    if (st == at::kFloat)
      grad_f32(raw<float>(g), raw<float>(h), raw<float>(m), raw<float>(gb), rows, cols, s, e);
    else if (st == at::kDouble)
      grad_f64(raw<double>(g), raw<double>(h), raw<double>(m), raw<double>(gb), rows, cols, s, e);
    else
      grad_bf16(raw<bf16_t>(g), raw<bf16_t>(h), raw<bf16_t>(m), raw<bf16_t>(gb), rows, cols, s, e);
  });
  return gb;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> prompt_encoder_mlp_forward(
    const at::Tensor& x_, const at::Tensor& w1_, const at::Tensor& b1_, const at::Tensor& w2_,
    const at::Tensor& b2_, const at::Tensor& w3_, const at::Tensor& b3_,
    const c10::optional<at::Tensor>& mask1, const c10::optional<at::Tensor>& mask2) {
  const MlpArgs a = check_mlp_args(x_, w1_, b1_, w2_, b2_, w3_, b3_, "cpu");
  const auto dt = a.x.scalar_type();
  const at::Tensor m1 = check_mask(mask1, "mask1", a.N, a.h, dt, "cpu");
  const at::Tensor m2 = check_mask(mask2, "mask2", a.N, a.h, dt, "cpu");
  const bool skinny = use_skinny_gemm(a.x);
  auto linear = [skinny](const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
    return skinny ? skinny_gemm_nt(x, w, b) : at::addmm(b, x, w.t());
  };
  at::Tensor h1 = linear(a.x, a.w1, a.b1);
  relu_dropout_(h1, m1);
  at::Tensor h2 = linear(h1, a.w2, a.b2);
  relu_dropout_(h2, m2);
  at::Tensor out = linear(h2, a.w3, a.b3);
  return {out, h1, h2};
}

// Returns {grad_x, grad_w1, grad_b1, grad_w2, grad_b2, grad_w3, grad_b3}.
std::vector<at::Tensor> prompt_encoder_mlp_backward(const at::Tensor& grad_out_,
                                                    const at::Tensor& x_, const at::Tensor& w1_,
                                                    const at::Tensor& w2_, const at::Tensor& w3_,
                                                    const at::Tensor& h1_, const at::Tensor& h2_,
                                                    const c10::optional<at::Tensor>& mask1,
                                                    const c10::optional<at::Tensor>& mask2) {
  const MlpBackwardArgs a =
      check_mlp_backward_args(grad_out_, x_, w1_, w2_, w3_, h1_, h2_, mask1, mask2, "cpu");
  const at::Tensor &g = a.g, &x = a.x, &w1 = a.w1, &w2 = a.w2, &w3 = a.w3, &h1 = a.h1, &h2 = a.h2,
                   &m1 = a.m1, &m2 = a.m2;

  const bool skinny = use_skinny_gemm(x);
  // One layer's weight gradient a^T h and input gradient a w, together.
  auto tn_nn = [skinny](const at::Tensor& a, const at::Tensor& h, const at::Tensor& w) {
    return skinny ? skinny_gemm_tn_nn(a, h, w) : std::make_pair(a.t().mm(h), a.mm(w));
  };
  at::Tensor gb3 = relu_dropout_grad_(g, at::Tensor(), at::Tensor());  // column sums only
  auto [gw3, g2] = tn_nn(g, h2, w3);
  at::Tensor gb2 = relu_dropout_grad_(g2, h2, m2);
  auto [gw2, g1] = tn_nn(g2, h1, w2);
  at::Tensor gb1 = relu_dropout_grad_(g1, h1, m1);
  auto [gw1, gx] = tn_nn(g1, x, w1);
  return {gx, gw1, gb1, gw2, gb2, gw3, gb3};
}

}  // namespace xpe_cpu

TORCH_LIBRARY_IMPL(xpe_fast, CPU, m) {
  m.impl("prompt_encoder_mlp", &xpe_cpu::prompt_encoder_mlp_forward);
  m.impl("prompt_encoder_mlp_backward", &xpe_cpu::prompt_encoder_mlp_backward);
}
