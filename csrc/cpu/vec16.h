// 16 floats as one GCC vector: one AVX-512 register, two AVX2 or four SSE registers,
// depending on the target the XPE_MULTIVERSION variant is compiled for. Every function here
// is always_inline, so it takes the target of the kernel it is inlined into.
#pragma once

#include <cstdint>

#pragma GCC diagnostic ignored "-Wpsabi"  // vectors never cross a non-inlined call

namespace xpe_cpu {

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
constexpr int64_t kLanes = 16;

#define XPE_INLINE inline __attribute__((always_inline))
// A lambda's body is its own function, compiled for the baseline ISA unless inlined.
#define XPE_LAMBDA_INLINE __attribute__((always_inline))

// Lane shuffle of two vectors (indices 0-31 into their concatenation): GCC before 12 has
// only __builtin_shuffle with a mask vector.
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#define XPE_SHUFFLE(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define XPE_SHUFFLE(a, b, ...) __builtin_shuffle(a, b, ::xpe_cpu::v16i{__VA_ARGS__})
#endif

XPE_INLINE v16 vload(const float* p) {
  v16 v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
XPE_INLINE void vstore(float* p, v16 v) { __builtin_memcpy(p, &v, sizeof(v)); }
XPE_INLINE v16 vsplat(float x) { return v16{} + x; }
XPE_INLINE v16 vmax(v16 a, v16 b) { return a > b ? a : b; }

// Sum of the 16 lanes by halving (log-depth shuffles, not 15 dependent scalar adds).
XPE_INLINE float hsum(v16 v) {
  const v16 a = v + XPE_SHUFFLE(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
  const v16 b = a + XPE_SHUFFLE(a, a, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3);
  const v16 c = b + XPE_SHUFFLE(b, b, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1);
  return c[0] + c[1];
}

// The 16 lane-sums of v[0..15] as one vector (lane l = sum of v[l]): four levels of
// shuffle + add (45 operations instead of 16 horizontal sums of 15 adds each).
XPE_INLINE v16 reduce16(const v16* v) {
  v16 s[8], t[4], u[2];
  for (int p = 0; p < 8; ++p)
    s[p] = XPE_SHUFFLE(v[2 * p], v[2 * p + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22,
                       23) +
           XPE_SHUFFLE(v[2 * p], v[2 * p + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29,
                       30, 31);
  for (int q = 0; q < 4; ++q)
    t[q] = XPE_SHUFFLE(s[2 * q], s[2 * q + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26,
                       27) +
           XPE_SHUFFLE(s[2 * q], s[2 * q + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29,
                       30, 31);
  for (int r = 0; r < 2; ++r)
    u[r] = XPE_SHUFFLE(t[2 * r], t[2 * r + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28,
                       29) +
           XPE_SHUFFLE(t[2 * r], t[2 * r + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27,
                       30, 31);
  return XPE_SHUFFLE(u[0], u[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
         XPE_SHUFFLE(u[0], u[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}

// sum_k x[k] and sum_k (x[k] - mean)^2 over a row: four independent vector accumulators.
XPE_INLINE float row_sum(const float* x, int64_t n) {
  v16 acc[4] = {};
  int64_t k = 0;
  for (; k + 4 * kLanes <= n; k += 4 * kLanes)
    for (int j = 0; j < 4; ++j) acc[j] += vload(x + k + j * kLanes);
  for (; k + kLanes <= n; k += kLanes) acc[0] += vload(x + k);
  float s = hsum((acc[0] + acc[1]) + (acc[2] + acc[3]));
  for (; k < n; ++k) s += x[k];
  return s;
}
XPE_INLINE float row_sq_dev(const float* x, float mean, int64_t n) {
  v16 acc[4] = {};
  const v16 m = vsplat(mean);
  int64_t k = 0;
  for (; k + 4 * kLanes <= n; k += 4 * kLanes)
    for (int j = 0; j < 4; ++j) {
      const v16 c = vload(x + k + j * kLanes) - m;
      acc[j] += c * c;
    }
  for (; k + kLanes <= n; k += kLanes) {
    const v16 c = vload(x + k) - m;
    acc[0] += c * c;
  }
  float s = hsum((acc[0] + acc[1]) + (acc[2] + acc[3]));
  for (; k < n; ++k) s += (x[k] - mean) * (x[k] - mean);
  return s;
}

// The same two row statistics with each 16-float vector held as K = 16 / L registers of L
// floats (L = 8 for AVX2, 4 for SSE): a 64-byte GCC vector wider than the registers has no
// machine mode and lives on the stack. Same partial sums and the same reduction tree as
// row_sum / row_sq_dev (hsum's: lanes i + 8, i + 4, i + 2), so the same bits at every width.
template <int L>
struct Lanes {
  typedef float v __attribute__((vector_size(4 * L)));
};
template <int L, bool Sq>
XPE_INLINE float row_stat_lanes(const float* x, float mean, int64_t n) {
  using V = typename Lanes<L>::v;
  constexpr int K = 16 / L;
  V acc[4 * K] = {};  // acc[j * K + q]: lanes q * L .. of row_sum's accumulator j
  int64_t k = 0;
  auto term = [mean](const float* p) XPE_LAMBDA_INLINE {
    V v;
    __builtin_memcpy(&v, p, sizeof(v));
    if constexpr (Sq) {
      v -= mean;
      v *= v;
    }
    return v;
  };
  for (; k + 4 * kLanes <= n; k += 4 * kLanes)
    for (int j = 0; j < 4; ++j)
      for (int q = 0; q < K; ++q) acc[j * K + q] += term(x + k + j * kLanes + q * L);
  for (; k + kLanes <= n; k += kLanes)
    for (int q = 0; q < K; ++q) acc[q] += term(x + k + q * L);
  float t[16];
  for (int q = 0; q < K; ++q) {
    const V v = (acc[q] + acc[K + q]) + (acc[2 * K + q] + acc[3 * K + q]);
    __builtin_memcpy(t + q * L, &v, sizeof(v));
  }
  for (int i = 0; i < 8; ++i) t[i] = t[i] + t[i + 8];
  for (int i = 0; i < 4; ++i) t[i] = t[i] + t[i + 4];
  for (int i = 0; i < 2; ++i) t[i] = t[i] + t[i + 2];
  float s = t[0] + t[1];
  if constexpr (Sq) {
    for (; k < n; ++k) s += (x[k] - mean) * (x[k] - mean);
  } else {
    for (; k < n; ++k) s += x[k];
  }
  return s;
}
template <int L>
XPE_INLINE float row_sum_regs(const float* x, int64_t n) {
  if constexpr (L == 16) return row_sum(x, n);
  return row_stat_lanes<L, false>(x, 0.0f, n);
}
template <int L>
XPE_INLINE float row_sq_dev_regs(const float* x, float mean, int64_t n) {
  if constexpr (L == 16) return row_sq_dev(x, mean, n);
  return row_stat_lanes<L, true>(x, mean, n);
}

}  // namespace xpe_cpu
