// Dropout for the frozen backbone's activations, CPU: y = x * keep(seed, offset + i) / (1 - p).
// `offset` numbers the elements as in a larger tensor that x is the tail of (a rank's share
// of a global batch), so the masks do not depend on how the batch was split.
//
// torch's bernoulli_ draws one element at a time from a stateful generator (a large share of a
// training step: microbench.py's dropout rows); the counter-based hash of
// kernel_math.h draws 16 per AVX-512 instruction and needs no stored mask, since the same
// call on the incoming gradient with the same seed is the backward.
#include <ATen/Parallel.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <algorithm>

#include "xpe_fast/checks.h"
#include "xpe_fast/kernel_math.h"
#include "cpu/clones.h"

namespace xpe_cpu {
namespace {

using xpe::bf16_t;

// The hash of kernel_math.h (dropout_bits), evaluated in 32-bit lanes: within a run of
// elements whose 64-bit index has one high word, the low word is a 32-bit counter, and the
// 24 hash bits compare with the threshold as signed ints. The plain 64-bit form vectorizes
// only with AVX-512 (its 64 -> 32-bit truncations and unsigned compares); this one also with
// AVX2, to the same bits (tests compare it with dropout_bits).
template <typename T>
XPE_HD void dropout_range(const T* x, T* y, uint64_t seed, uint64_t offset, uint32_t threshold,
                          float scale, int64_t begin, int64_t end) {
  using A = typename xpe::acc_of<T>::type;
  const uint32_t seed_lo = static_cast<uint32_t>(seed), seed_hi = static_cast<uint32_t>(seed >> 32);
  const int32_t thr = static_cast<int32_t>(threshold);
  for (int64_t i = begin; i < end;) {
    const uint64_t first = offset + static_cast<uint64_t>(i);
    const uint32_t lo0 = static_cast<uint32_t>(first);
    const uint64_t until_wrap = (uint64_t{1} << 32) - lo0;
    const int32_t n = static_cast<int32_t>(
        std::min<uint64_t>({until_wrap, static_cast<uint64_t>(end - i), uint64_t{1} << 30}));
    const uint32_t add = static_cast<uint32_t>(first >> 32) * 0x9e3779b9u + seed_hi;
    const T* xs = x + i;
    T* ys = y + i;
#pragma omp simd
    for (int32_t j = 0; j < n; ++j) {
      const uint32_t lo = lo0 + static_cast<uint32_t>(j);
      const int32_t bits = static_cast<int32_t>(xpe::mix32(xpe::mix32(lo ^ seed_lo) + add) >> 8);
      const float k = bits >= thr ? scale : 0.0f;
      xpe::store(ys, j, static_cast<A>(xpe::load(xs, j)) * k);
    }
    i += n;
  }
}

XPE_MULTIVERSION(dropout_f32,
                 (const float* x, float* y, uint64_t s, uint64_t o, uint32_t t, float c, int64_t b,
                  int64_t e),
                 (x, y, s, o, t, c, b, e), dropout_range<float>)
XPE_MULTIVERSION(dropout_f64,
                 (const double* x, double* y, uint64_t s, uint64_t o, uint32_t t, float c,
                  int64_t b, int64_t e),
                 (x, y, s, o, t, c, b, e), dropout_range<double>)
XPE_MULTIVERSION(dropout_bf16,
                 (const bf16_t* x, bf16_t* y, uint64_t s, uint64_t o, uint32_t t, float c,
                  int64_t b, int64_t e),
                 (x, y, s, o, t, c, b, e), dropout_range<bf16_t>)

}  // namespace

at::Tensor dropout_apply(const at::Tensor& x_, double p, int64_t seed, int64_t offset) {
  TORCH_CHECK_VALUE(x_.device().is_cpu(), "dropout: x must be a CPU tensor, got ", x_.device());
  TORCH_CHECK_TYPE(is_supported_float(x_.scalar_type()),
                   "dropout: x must be float32, float64 or bfloat16, got ", x_.scalar_type());
  TORCH_CHECK_VALUE(p >= 0.0 && p < 1.0, "dropout: p must be in [0, 1), got ", p);
  TORCH_CHECK_VALUE(offset >= 0, "dropout: offset must be >= 0, got ", offset);
  const at::Tensor x = x_.contiguous();
  auto y = at::empty_like(x);
  const int64_t n = x.numel();
  const uint32_t threshold = static_cast<uint32_t>(p * 16777216.0 + 0.5);
  const float scale = static_cast<float>(1.0 / (1.0 - p));
  const uint64_t s = static_cast<uint64_t>(seed);
  const auto st = x.scalar_type();
  const uint64_t o = static_cast<uint64_t>(offset);
  at::parallel_for(0, n, 1 << 15, [&](int64_t b, int64_t e) {
    if (st == at::kFloat)
      dropout_f32(x.data_ptr<float>(), y.data_ptr<float>(), s, o, threshold, scale, b, e);
    else if (st == at::kDouble)
      dropout_f64(x.data_ptr<double>(), y.data_ptr<double>(), s, o, threshold, scale, b, e);
    else
      dropout_bf16(reinterpret_cast<const bf16_t*>(x.data_ptr()),
                   reinterpret_cast<bf16_t*>(y.data_ptr()), s, o, threshold, scale, b, e);
  });
  return y;
}

}  // namespace xpe_cpu

TORCH_LIBRARY_IMPL(xpe_fast, CPU, m) { m.impl("dropout", &xpe_cpu::dropout_apply); }
