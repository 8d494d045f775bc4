// Math shared by the C++ CPU kernels and the CUDA kernels.
//
// Everything here is __host__ __device__ under nvcc and plain inline C++ otherwise, and it
// includes no torch header, so the CPU tests exercise exactly the arithmetic that the CUDA
// kernels run, and the .cu files compile with nvcc alone.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define XPE_HD __host__ __device__ __forceinline__
#else
#define XPE_HD inline __attribute__((always_inline))
#endif

namespace xpe {

// bfloat16 travels as its raw 16 bits, so these kernels need no torch or cuda_bf16 types.
struct bf16_t {
  uint16_t bits;
};

XPE_HD float bf16_bits_to_float(uint16_t h) {
  union {
    uint32_t u;
    float f;
  } v;
  v.u = static_cast<uint32_t>(h) << 16;
  return v.f;
}

// Round to nearest even, NaN kept quiet: the same rounding torch uses.
XPE_HD uint16_t float_to_bf16_bits(float f) {
  union {
    uint32_t u;
    float f;
  } v;
  v.f = f;
  // Both results computed, then selected: no branch, so loops over it vectorize.
  const uint32_t nan = (v.u >> 16) | 0x40u;
  const uint32_t rounded = (v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>((v.u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

// Loads to / stores from the accumulation type: float for float and bf16, double for double.
template <typename T>
struct acc_of {
  using type = float;
};
template <>
struct acc_of<double> {
  using type = double;
};

XPE_HD float load(const float* p, int64_t i) { return p[i]; }
XPE_HD double load(const double* p, int64_t i) { return p[i]; }
XPE_HD float load(const bf16_t* p, int64_t i) { return bf16_bits_to_float(p[i].bits); }

XPE_HD void store(float* p, int64_t i, float v) { p[i] = v; }
XPE_HD void store(double* p, int64_t i, double v) { p[i] = v; }
XPE_HD void store(bf16_t* p, int64_t i, float v) { p[i].bits = float_to_bf16_bits(v); }

// ---- embedding-stream assembly -------------------------------------------------------
// Slot j of sample b reads prompt row j (j < N) or the word row of input_ids[b, j - N],
// and always position row offset + j.

// Index of the prompt row of slot j (j < N) of sample b: shared prompts have one copy.
XPE_HD int64_t prompt_row(int64_t b, int64_t j, int64_t n_prompt, bool shared) {
  return shared ? j : b * n_prompt + j;
}

// x = source + position + token type, summed in the same order as the eager reference.
template <typename A>
XPE_HD A embed_sum(A src, A pos, A typ) {
  return (src + pos) + typ;
}

XPE_HD float rsqrt_acc(float v) {
#if defined(__CUDA_ARCH__)
  return rsqrtf(v);
#else
  return 1.0f / __builtin_sqrtf(v);
#endif
}
XPE_HD double rsqrt_acc(double v) { return 1.0 / __builtin_sqrt(v); }

// LayerNorm of one element once the row's mean and 1/std are known.
template <typename A>
XPE_HD A ln_apply(A x, A mean, A rstd, A w, A b) {
  return (x - mean) * rstd * w + b;
}

// Gradient of LayerNorm's input for one element:
//   dx = rstd * (g*w - mean(g*w) - xhat * mean(g*w*xhat)),
// given g*w, xhat and the two row means.
template <typename A>
XPE_HD A ln_grad_input(A gw, A xhat, A rstd, A mean_gw, A mean_gwxhat) {
  return rstd * (gw - mean_gw - xhat * mean_gwxhat);
}

// ---- prompt-encoder MLP epilogues ----------------------------------------------------
// Forward: h = relu(z) * m, where m is the scaled dropout keep-mask (1 without dropout).
template <typename A>
XPE_HD A relu_dropout(A z, A m) {
  return z > A(0) ? z * m : A(0);
}

// Backward through relu and dropout, from the saved output h = relu(z) * m: where the unit
// was kept (m > 0), h > 0 exactly when z > 0, and a dropped unit passes no gradient.
template <typename A>
XPE_HD A relu_dropout_grad(A g, A h, A m) {
  return h > A(0) ? g * m : A(0);
}

// ---- counter-based dropout --------------------------------------------------------
// Element i of a dropout call with seed s is kept when a hash of (s, i) clears a threshold:
// no RNG state, so a kernel can draw any element independently (vectorized, in parallel),
// and backward recomputes the forward's mask from the seed instead of storing it.
XPE_HD uint32_t mix32(uint32_t x) {  // an invertible 32-bit avalanche (lowbias32)
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

// 24 uniform bits for element i; two rounds so that every bit of seed and index matters.
XPE_HD uint32_t dropout_bits(uint64_t seed, uint64_t i) {
  const uint32_t a = mix32(static_cast<uint32_t>(i) ^ static_cast<uint32_t>(seed));
  return mix32(a + static_cast<uint32_t>(i >> 32) * 0x9e3779b9u +
               static_cast<uint32_t>(seed >> 32)) >>
         8;
}

// Drop probability p is threshold / 2^24: keep when the bits are at or above the threshold.
XPE_HD float dropout_scale_keep(uint64_t seed, uint64_t i, uint32_t threshold, float scale) {
  return static_cast<float>(dropout_bits(seed, i) >= threshold) * scale;  // branch-free
}

}  // namespace xpe
