// BFloat16 GEMMs with few rows (the prompt-encoder MLP under bf16), CPU with AVX512-BF16.
//
// torch's bf16 GEMMs here are oneDNN's, well below the machine's bf16 rate on these skinny
// shapes (microbench.py's skinny GEMM rows). These loops run vdpbf16ps directly: each instruction
// multiplies 16 pairs of bf16 and adds both products to 16 float32 accumulators, so the operands
// must come in pairs along the contraction index:
//   nt: C[M, N] = A[M, K] W[N, K]^T (+ bias) -- both rows run along K: pairs as stored;
//       4 x 4 blocks of dot products, reduced by reduce16 (vec16.h).
//   nn: C[M, N] = A[M, K] B[K, N]            -- A's pairs as stored (one 32-bit broadcast);
//       B's rows k and k+1 interleaved in registers (unpacklo/hi, which leaves the columns
//       permuted within 128-bit lanes; undone once per block at the end). Copying blocks of
//       B into paired panels first measured slower.
//   tn: C[N1, N2] = G[M, N1]^T H[M, N2]      -- contraction over the few rows: G and H are
//       first copied with rows 2p and 2p + 1 interleaved (M x (N1 + N2) values, small).
// Accumulation is float32 (as oneDNN's); each output is rounded to bf16 once, bias
// included.
// Rows past the end of a block repeat the last row (computed, not stored); column and K
// tails use masked loads and stores.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/clones.h"
#include "cpu/skinny_gemm.h"
#include "cpu/vec16.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define XPE_HAVE_BF16_KERNELS 1
#define XPE_TARGET_BF16 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")))
#endif

namespace xpe_cpu {

#ifdef XPE_HAVE_BF16_KERNELS
namespace {

using u16 = uint16_t;

XPE_TARGET_BF16 XPE_INLINE v16 dp(v16 acc, __m512i a, __m512i b) {
  return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b);
}

// Mask of the first n (0..32) of 32 lanes.
XPE_INLINE __mmask32 first32(int64_t n) {
  return n >= 32 ? ~__mmask32(0) : n <= 0 ? __mmask32(0) : __mmask32((1u << n) - 1);
}
XPE_INLINE __mmask16 first16(int64_t n) {
  return n >= 16 ? __mmask16(0xffff) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1);
}

XPE_INLINE uint32_t load_pair(const u16* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

XPE_INLINE float from_bf16(u16 h) {
  const uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

XPE_TARGET_BF16 void nt_range(const u16* A, const u16* Wt, const u16* bias, u16* C, int64_t M,
                              int64_t N, int64_t K, int64_t n0, int64_t n1) {
  const int64_t K32 = K / 32 * 32;
  const __mmask32 tail = first32(K - K32);
  for (int64_t nb = n0; nb < n1; nb += 4) {
    const u16* w[4];
    float b4[4];
    for (int j = 0; j < 4; ++j) {
      w[j] = Wt + std::min(nb + j, n1 - 1) * K;
      b4[j] = bias ? from_bf16(bias[std::min(nb + j, n1 - 1)]) : 0.0f;
    }
    const v16 bv = v16{b4[0], b4[1], b4[2], b4[3], b4[0], b4[1], b4[2], b4[3],
                       b4[0], b4[1], b4[2], b4[3], b4[0], b4[1], b4[2], b4[3]};
    const int64_t cols = std::min<int64_t>(4, n1 - nb);
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
      const u16* a[4];
      for (int i = 0; i < 4; ++i) a[i] = A + std::min(m0 + i, M - 1) * K;
      v16 acc[16];
      for (int i = 0; i < 16; ++i) acc[i] = v16{};
      for (int64_t k = 0; k < K32; k += 32) {
        __m512i wv[4];
        for (int j = 0; j < 4; ++j) wv[j] = _mm512_loadu_si512(w[j] + k);
        for (int i = 0; i < 4; ++i) {
          const __m512i av = _mm512_loadu_si512(a[i] + k);
          for (int j = 0; j < 4; ++j) acc[4 * i + j] = dp(acc[4 * i + j], av, wv[j]);
        }
      }
      if (tail) {
        __m512i wv[4];
        for (int j = 0; j < 4; ++j) wv[j] = _mm512_maskz_loadu_epi16(tail, w[j] + K32);
        for (int i = 0; i < 4; ++i) {
          const __m512i av = _mm512_maskz_loadu_epi16(tail, a[i] + K32);
          for (int j = 0; j < 4; ++j) acc[4 * i + j] = dp(acc[4 * i + j], av, wv[j]);
        }
      }
      // lane 4 i + j: C[m0 + i, nb + j]; rounded all at once, stored four columns per row
      u16 out[16];
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out),
                          (__m256i)_mm512_cvtneps_pbh(reduce16(acc) + bv));
      for (int i = 0; i < 4 && m0 + i < M; ++i) {
        if (cols == 4)  // a fixed size: an 8-byte move, not a call to memcpy
          std::memcpy(C + (m0 + i) * N + nb, out + 4 * i, 4 * sizeof(u16));
        else
          for (int64_t j = 0; j < cols; ++j) C[(m0 + i) * N + nb + j] = out[4 * i + j];
      }
    }
  }
}

// unpacklo/hi_epi16 of rows k, k+1 hold, per 128-bit lane L, columns 8L..8L+3 (lo) and
// 8L+4..8L+7 (hi). These put 32 columns of (lo, hi) back in order, 16 at a time.
XPE_TARGET_BF16 XPE_INLINE void store_unpermuted(u16* dst, __mmask32 mask, v16 lo, v16 hi) {
  const __m512i i0 = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i i1 =
      _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  const __m512 c0 = _mm512_permutex2var_ps(lo, i0, hi);
  const __m512 c1 = _mm512_permutex2var_ps(lo, i1, hi);
  _mm512_mask_storeu_epi16(dst, mask, (__m512i)_mm512_cvtne2ps_pbh(c1, c0));
}

// C[:, n0:n1] = A B[:, n0:n1] in blocks of 64 columns, R rows x 4 vectors of C in registers,
// K in chunks so that the chunk of B (kKc x 64 bf16) stays in L1 for every block of rows;
// `acc` (M x 64 floats, the block in lane order) carries the sums between chunks.
constexpr int64_t kKc = 128;  // even: pairs never straddle chunks

template <int R>
XPE_TARGET_BF16 void nn_range(const u16* A, const u16* B, u16* C, int64_t M, int64_t N, int64_t K,
                              int64_t n0, int64_t n1, float* acc) {
  for (int64_t n = n0; n < n1; n += 64) {
    const __mmask32 cm[2] = {first32(n1 - n), first32(n1 - n - 32)};
    for (int64_t k0 = 0; k0 < K; k0 += kKc) {
      const int64_t k1 = std::min(k0 + kKc, K);
      for (int64_t m0 = 0; m0 < M; m0 += R) {
        const u16* a[R];
        float* s[R];
        for (int i = 0; i < R; ++i) {
          a[i] = A + std::min(m0 + i, M - 1) * K;
          s[i] = acc + std::min(m0 + i, M - 1) * 64;
        }
        v16 c[R][4];
        for (int i = 0; i < R; ++i)
          for (int q = 0; q < 4; ++q) c[i][q] = k0 == 0 ? v16{} : vload(s[i] + q * 16);
        int64_t k = k0;
        for (; k + 1 < k1; k += 2) {
          __m512i p[4];
          for (int h = 0; h < 2; ++h) {
            const __m512i r0 = _mm512_maskz_loadu_epi16(cm[h], B + k * N + n + 32 * h);
            const __m512i r1 = _mm512_maskz_loadu_epi16(cm[h], B + (k + 1) * N + n + 32 * h);
            p[2 * h] = _mm512_unpacklo_epi16(r0, r1);
            p[2 * h + 1] = _mm512_unpackhi_epi16(r0, r1);
          }
          for (int i = 0; i < R; ++i) {
            const __m512i av = _mm512_set1_epi32(int(load_pair(a[i] + k)));
            for (int q = 0; q < 4; ++q) c[i][q] = dp(c[i][q], av, p[q]);
          }
        }
        if (k < k1) {  // odd K: the last row of B pairs with zeros
          __m512i p[4];
          for (int h = 0; h < 2; ++h) {
            const __m512i r0 = _mm512_maskz_loadu_epi16(cm[h], B + k * N + n + 32 * h);
            p[2 * h] = _mm512_unpacklo_epi16(r0, _mm512_setzero_si512());
            p[2 * h + 1] = _mm512_unpackhi_epi16(r0, _mm512_setzero_si512());
          }
          for (int i = 0; i < R; ++i) {
            const __m512i av = _mm512_set1_epi32(int(a[i][k]));
            for (int q = 0; q < 4; ++q) c[i][q] = dp(c[i][q], av, p[q]);
          }
        }
        for (int i = 0; i < R && m0 + i < M; ++i)
          for (int q = 0; q < 4; ++q) vstore(s[i] + q * 16, c[i][q]);
      }
    }
    for (int64_t m = 0; m < M; ++m)
      for (int h = 0; h < 2; ++h)
        store_unpermuted(C + m * N + n + 32 * h, cm[h], vload(acc + m * 64 + 32 * h),
                         vload(acc + m * 64 + 32 * h + 16));
  }
}

// dst[p, x] = (src[2p, x], src[2p + 1, x]) as one 32-bit pair, the second zero past row M.
XPE_TARGET_BF16 void pair_rows(const u16* src, int64_t M, int64_t X, uint32_t* dst) {
  const __m512i i0 = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
                                      39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
  const __m512i i1 = _mm512_add_epi16(i0, _mm512_set1_epi16(16));
  for (int64_t p = 0; 2 * p < M; ++p) {
    const u16* r0 = src + 2 * p * X;
    const u16* r1 = 2 * p + 1 < M ? r0 + X : nullptr;
    for (int64_t x = 0; x < X; x += 32) {
      const __mmask32 m = first32(X - x);
      const __m512i a = _mm512_maskz_loadu_epi16(m, r0 + x);
      const __m512i b = r1 ? _mm512_maskz_loadu_epi16(m, r1 + x) : _mm512_setzero_si512();
      _mm512_mask_storeu_epi32(dst + p * X + x, first16(X - x),
                               _mm512_permutex2var_epi16(a, i0, b));
      _mm512_mask_storeu_epi32(dst + p * X + x + 16, first16(X - x - 16),
                               _mm512_permutex2var_epi16(a, i1, b));
    }
  }
}

// C[r, :] for r in [r0, r1) from the paired G (Gp [Mh, N1]) and H (Hp [Mh, N2]): R rows x 64
// columns in registers, summed over all Mh pairs, then rounded and stored.
template <int R>
XPE_TARGET_BF16 void tn_range(const uint32_t* Gp, const uint32_t* Hp, u16* C, int64_t Mh,
                              int64_t N1, int64_t N2, int64_t r0, int64_t r1) {
  for (int64_t rb = r0; rb < r1; rb += R) {
    int64_t r[R];
    for (int i = 0; i < R; ++i) r[i] = std::min(rb + i, r1 - 1);
    for (int64_t n = 0; n < N2; n += 64) {
      __mmask16 cm[4];
      for (int q = 0; q < 4; ++q) cm[q] = first16(N2 - n - 16 * q);
      v16 c[R][4];
      for (int i = 0; i < R; ++i)
        for (int q = 0; q < 4; ++q) c[i][q] = v16{};
      for (int64_t p = 0; p < Mh; ++p) {
        __m512i hv[4];
        for (int q = 0; q < 4; ++q)
          hv[q] = _mm512_maskz_loadu_epi32(cm[q], Hp + p * N2 + n + 16 * q);
        for (int i = 0; i < R; ++i) {
          const __m512i gv = _mm512_set1_epi32(int(Gp[p * N1 + r[i]]));
          for (int q = 0; q < 4; ++q) c[i][q] = dp(c[i][q], gv, hv[q]);
        }
      }
      for (int i = 0; i < R && rb + i < r1; ++i)
        for (int h = 0; h < 2; ++h)
          _mm512_mask_storeu_epi16(C + r[i] * N2 + n + 32 * h, first32(N2 - n - 32 * h),
                                   (__m512i)_mm512_cvtne2ps_pbh(c[i][2 * h + 1], c[i][2 * h]));
    }
  }
}

constexpr int kTnRows = 4;  // 5 or 6 rows measured no faster

int64_t grain(int64_t flops_per_unit) {  // about 2^20 FLOPs per thread task
  return std::max<int64_t>(1, (1 << 20) / std::max<int64_t>(1, flops_per_unit));
}

const u16* bits(const at::Tensor& t) { return reinterpret_cast<const u16*>(t.data_ptr()); }
u16* bits_mut(at::Tensor& t) { return reinterpret_cast<u16*>(t.data_ptr()); }

}  // namespace
#endif  // XPE_HAVE_BF16_KERNELS

bool have_bf16_gemm_kernels() {
#ifdef XPE_HAVE_BF16_KERNELS
  return active_isa_level() == 3;
#else
  return false;
#endif
}

// The entry points (skinny_gemm.cpp) have checked shapes and dtypes: contiguous 2-D bf16.
at::Tensor skinny_gemm_nt_bf16(const at::Tensor& a, const at::Tensor& w, const at::Tensor& bias) {
  const int64_t M = a.size(0), K = a.size(1), N = w.size(0);
  auto c = at::empty({M, N}, a.options());
#ifdef XPE_HAVE_BF16_KERNELS
  if (M == 0 || N == 0) return c;
  const u16* b = bias.defined() ? bits(bias) : nullptr;
  at::parallel_for(0, (N + 3) / 4, grain(8 * M * K), [&](int64_t s, int64_t e) {
    nt_range(bits(a), bits(w), b, bits_mut(c), M, N, K, s * 4, std::min(e * 4, N));
  });
#endif
  return c;
}

#ifdef XPE_HAVE_BF16_KERNELS
namespace {

// Each GEMM as a range of blocks [0, units()) of about cost() FLOPs each, any part of which
// a thread can run: alone (parallel_for) or beside another GEMM (parallel_two).
struct NnBf16 {
  const u16* a;
  const u16* b;
  u16* c;
  int64_t M, K, N;
  int64_t units() const { return (N + 63) / 64; }
  int64_t cost() const { return 2 * 64 * M * K; }
  void run(int64_t s, int64_t e) const {
    std::vector<float> acc(M * 64);
    if (nn_rows_per_block(M) == 4)
      nn_range<4>(a, b, c, M, N, K, s * 64, std::min(e * 64, N), acc.data());
    else
      nn_range<5>(a, b, c, M, N, K, s * 64, std::min(e * 64, N), acc.data());
  }
};

struct TnBf16 {
  u16* c;
  int64_t M, N1, N2, Mh;
  std::vector<uint32_t> gp, hp;  // g and h with rows paired (pair_rows)
  TnBf16(const u16* g, const u16* h, u16* c_, int64_t M_, int64_t N1_, int64_t N2_)
      : c(c_), M(M_), N1(N1_), N2(N2_), Mh((M_ + 1) / 2), gp(Mh * N1_), hp(Mh * N2_) {
    pair_rows(g, M, N1, gp.data());
    pair_rows(h, M, N2, hp.data());
  }
  int64_t units() const { return (N1 + kTnRows - 1) / kTnRows; }
  int64_t cost() const { return 2 * kTnRows * M * N2; }
  void run(int64_t s, int64_t e) const {
    tn_range<kTnRows>(gp.data(), hp.data(), c, Mh, N1, N2, s * kTnRows, std::min(e * kTnRows, N1));
  }
};

}  // namespace
#endif

at::Tensor skinny_gemm_nn_bf16(const at::Tensor& a, const at::Tensor& b) {
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  auto c = at::empty({M, N}, a.options());
#ifdef XPE_HAVE_BF16_KERNELS
  if (M == 0 || N == 0) return c;
  if (K == 0) return c.zero_();
  const NnBf16 nn{bits(a), bits(b), bits_mut(c), M, K, N};
  at::parallel_for(0, nn.units(), grain(nn.cost()), [&](int64_t s, int64_t e) { nn.run(s, e); });
#endif
  return c;
}

at::Tensor skinny_gemm_tn_bf16(const at::Tensor& g, const at::Tensor& h) {
  const int64_t M = g.size(0), N1 = g.size(1), N2 = h.size(1);
  auto c = at::empty({N1, N2}, g.options());
#ifdef XPE_HAVE_BF16_KERNELS
  if (N1 == 0 || N2 == 0) return c;
  if (M == 0) return c.zero_();
  const TnBf16 tn(bits(g), bits(h), bits_mut(c), M, N1, N2);
  at::parallel_for(0, tn.units(), grain(tn.cost()), [&](int64_t s, int64_t e) { tn.run(s, e); });
#endif
  return c;
}

std::pair<at::Tensor, at::Tensor> skinny_gemm_tn_nn_bf16(const at::Tensor& g, const at::Tensor& h,
                                                         const at::Tensor& w) {
  // (skinny_gemm_tn_nn has sent empty sizes to the single GEMMs)
  const int64_t M = g.size(0), N1 = g.size(1), N2 = h.size(1), N = w.size(1);
  auto c1 = at::empty({N1, N2}, g.options());
  auto c2 = at::empty({M, N}, g.options());
#ifdef XPE_HAVE_BF16_KERNELS
  const TnBf16 tn(bits(g), bits(h), bits_mut(c1), M, N1, N2);
  const NnBf16 nn{bits(g), bits(w), bits_mut(c2), M, N1, N};
  parallel_two(tn, nn);
#endif
  return {c1, c2};
}

}  // namespace xpe_cpu
