// Residual add + LayerNorm of an encoder layer's output, CPU, for inference:
//
//   y = LayerNorm(x + residual),  and optionally y rounded to bf16 as well,
//
// in one pass over the rows. Eager PyTorch under bf16 autocast makes three (the add of the
// bf16 projection to the fp32 residual, the fp32 LayerNorm, and the bf16 cast of its output
// by the next linear layer); here the sum stays in registers/L1 and both copies of y are
// written together. The sum is rounded to the promoted dtype first (bf16 + bf16 rounds to
// bf16, as eager's add does); the statistics are fp32 with the same two passes as the
// embedding LayerNorm.
#include <ATen/Parallel.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <vector>

#include "xpe_fast/checks.h"
#include "xpe_fast/kernel_math.h"
#include "cpu/clones.h"
#include "cpu/vec16.h"

namespace xpe_cpu {
namespace {

using xpe::bf16_t;

XPE_HD float round_as(float v, const float*) { return v; }
XPE_HD float round_as(float v, const bf16_t*) {
  return xpe::bf16_bits_to_float(xpe::float_to_bf16_bits(v));
}

// Rows [begin, end): x in TX, residual and y in TY, y16 (may be null) in bf16; the row
// statistics with L-float registers (vec16.h).
template <typename TX, typename TY, int L>
XPE_HD void rows(const TX* x, const TY* res, const float* w, const float* b, TY* y, bf16_t* y16,
                 float* buf, int64_t d, float eps, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const TX* xr = x + r * d;
    const TY* rr = res + r * d;
#pragma omp simd
    for (int64_t k = 0; k < d; ++k) buf[k] = round_as(xpe::load(xr, k) + xpe::load(rr, k), rr);
    // vector accumulators (vec16.h), not an omp simd reduction's scalar epilogue
    const float mean = row_sum_regs<L>(buf, d) / float(d);
    const float rstd = xpe::rsqrt_acc(row_sq_dev_regs<L>(buf, mean, d) / float(d) + eps);
    TY* yr = y + r * d;
    if (y16) {
      bf16_t* y16r = y16 + r * d;
#pragma omp simd
      for (int64_t k = 0; k < d; ++k) {
        const float v = xpe::ln_apply<float>(buf[k], mean, rstd, w[k], b[k]);
        xpe::store(yr, k, v);
        xpe::store(y16r, k, v);
      }
    } else {
#pragma omp simd
      for (int64_t k = 0; k < d; ++k)
        xpe::store(yr, k, xpe::ln_apply<float>(buf[k], mean, rstd, w[k], b[k]));
    }
  }
}

// Each ISA variant with its register width (16, 8, 4 floats).
XPE_MULTIVERSION_EACH(rows_bf16_f32,
                      (const bf16_t* x, const float* r, const float* w, const float* b, float* y,
                       bf16_t* y16, float* buf, int64_t d, float eps, int64_t s, int64_t e),
                      (x, r, w, b, y, y16, buf, d, eps, s, e), (rows<bf16_t, float, 16>),
                      (rows<bf16_t, float, 8>), (rows<bf16_t, float, 4>))
XPE_MULTIVERSION_EACH(rows_f32_f32,
                      (const float* x, const float* r, const float* w, const float* b, float* y,
                       bf16_t* y16, float* buf, int64_t d, float eps, int64_t s, int64_t e),
                      (x, r, w, b, y, y16, buf, d, eps, s, e), (rows<float, float, 16>),
                      (rows<float, float, 8>), (rows<float, float, 4>))
XPE_MULTIVERSION_EACH(rows_bf16_bf16,
                      (const bf16_t* x, const bf16_t* r, const float* w, const float* b, bf16_t* y,
                       bf16_t* y16, float* buf, int64_t d, float eps, int64_t s, int64_t e),
                      (x, r, w, b, y, y16, buf, d, eps, s, e), (rows<bf16_t, bf16_t, 16>),
                      (rows<bf16_t, bf16_t, 8>), (rows<bf16_t, bf16_t, 4>))

template <typename T>
T* raw(const at::Tensor& t) {
  return t.defined() ? reinterpret_cast<T*>(t.data_ptr()) : nullptr;
}

}  // namespace

std::vector<at::Tensor> residual_layer_norm_forward(const at::Tensor& x_,
                                                    const at::Tensor& residual_,
                                                    const at::Tensor& weight_,
                                                    const at::Tensor& bias_, double eps,
                                                    bool bf16_copy) {
  for (const auto* t : {&x_, &residual_, &weight_, &bias_}) {
    TORCH_CHECK_VALUE(t->defined(), "residual_layer_norm: an argument is undefined");
    check_device(*t, "residual_layer_norm's arguments", "cpu");
  }
  const auto tx = x_.scalar_type(), ty = residual_.scalar_type();
  TORCH_CHECK_TYPE(
      (tx == at::kFloat || tx == at::kBFloat16) && (ty == at::kFloat || ty == at::kBFloat16),
      "residual_layer_norm: x and residual must be float32 or bfloat16, got ", tx, " and ", ty);
  TORCH_CHECK_TYPE(
      !(tx == at::kFloat && ty == at::kBFloat16),
      "residual_layer_norm: a float32 x needs a float32 residual (the sum is float32)");
  TORCH_CHECK_VALUE(x_.dim() >= 1 && x_.sizes() == residual_.sizes(),
                    "residual_layer_norm: x and residual must have the same shape, got ",
                    x_.sizes(), " and ", residual_.sizes());
  const int64_t d = x_.size(-1);
  TORCH_CHECK_VALUE(d > 0, "residual_layer_norm: rows of width 0");
  TORCH_CHECK_VALUE(
      weight_.dim() == 1 && weight_.size(0) == d && bias_.dim() == 1 && bias_.size(0) == d,
      "residual_layer_norm: weight and bias must be [", d, "], got ", weight_.sizes(), " and ",
      bias_.sizes());
  TORCH_CHECK_TYPE(weight_.is_floating_point() && bias_.is_floating_point(),
                   "residual_layer_norm: weight and bias must be floating point");
  TORCH_CHECK_VALUE(eps > 0, "residual_layer_norm: eps must be > 0, got ", eps);
  const at::Tensor x = x_.contiguous(), res = residual_.contiguous();
  const at::Tensor w = weight_.to(at::kFloat).contiguous(), b = bias_.to(at::kFloat).contiguous();
  at::Tensor y = at::empty_like(res, at::MemoryFormat::Contiguous);
  at::Tensor y16;
  if (bf16_copy && ty == at::kFloat) y16 = at::empty_like(res, res.options().dtype(at::kBFloat16));
  const int64_t rows_n = x.numel() / d;
  const float e = static_cast<float>(eps);
  const int64_t grain = std::max<int64_t>(1, 32768 / d);
  at::parallel_for(0, rows_n, grain, [&](int64_t s, int64_t t) {
    std::vector<float> buf(d);
    const float* wp = w.data_ptr<float>();
    const float* bp = b.data_ptr<float>();
    if (tx == at::kBFloat16 && ty == at::kFloat)
      rows_bf16_f32(raw<bf16_t>(x), raw<float>(res), wp, bp, raw<float>(y), raw<bf16_t>(y16),
                    buf.data(), d, e, s, t);
    else if (tx == at::kFloat)
      rows_f32_f32(raw<float>(x), raw<float>(res), wp, bp, raw<float>(y), raw<bf16_t>(y16),
                   buf.data(), d, e, s, t);
    else
      rows_bf16_bf16(raw<bf16_t>(x), raw<bf16_t>(res), wp, bp, raw<bf16_t>(y), nullptr, buf.data(),
                     d, e, s, t);
  });
  // A bf16 y is its own copy: the caller reuses it rather than an aliased second output.
  if (y16.defined()) return {y, y16};
  return {y};
}

}  // namespace xpe_cpu

TORCH_LIBRARY_IMPL(xpe_fast, CPU, m) {
  m.impl("residual_layer_norm", &xpe_cpu::residual_layer_norm_forward);
}
