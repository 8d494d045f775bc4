// Float32 GEMMs with few rows (the prompt-encoder MLP's M = N virtual tokens, about 20), CPU.
//
// torch's fp32 GEMM is MKL, which runs its AVX2 code on AMD processors, and oneDNN pays a primitive
// setup per call for weights that change every step. These three register-blocked loops run the
// AVX-512 FMA units directly (GCC vector extensions, compiled per ISA level by XPE_MULTIVERSION):
//   nt: C[M, N] = A[M, K] W[N, K]^T (+ bias)  -- dot products along K, 4 x 4 blocks
//   nn: C[M, N] = A[M, K] B[K, N]              -- 4 rows x 64 columns of C in registers
//   tn: C[N1, N2] = G[M, N1]^T H[M, N2]        -- 4 x 64 block of C, summed over the M rows
// Rows past the end of a block repeat the last row (computed, not stored), so the blocks
// keep a fixed size; columns past the last multiple of 16 run a scalar loop.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <vector>

#include "cpu/clones.h"
#include "cpu/skinny_gemm.h"
#include "cpu/vec16.h"

#pragma GCC optimize("fp-contract=fast")  // multiply-adds as FMAs (tests use tolerances)

namespace xpe_cpu {
namespace {

constexpr int64_t W = kLanes;

// C[m, n] for n in [n0, n1): 4 x 4 blocks of dot products along K. Blocks of W rows outer:
// four rows of W stay in L1 while all of A (M rows, in L2) passes them.
XPE_INLINE void nt_range(const float* A, const float* Wt, const float* bias, float* C, int64_t M,
                         int64_t N, int64_t K, int64_t n0, int64_t n1) {
  const int64_t K16 = K / W * W;
  for (int64_t nb = n0; nb < n1; nb += 4) {
    const float* w[4];
    for (int j = 0; j < 4; ++j) w[j] = Wt + std::min(nb + j, n1 - 1) * K;
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
      const float* a[4];
      for (int i = 0; i < 4; ++i) a[i] = A + std::min(m0 + i, M - 1) * K;
      v16 acc[16];
      for (int i = 0; i < 16; ++i) acc[i] = v16{};
      for (int64_t k = 0; k < K16; k += W) {
        v16 wv[4];
        for (int j = 0; j < 4; ++j) wv[j] = vload(w[j] + k);
        for (int i = 0; i < 4; ++i) {
          const v16 av = vload(a[i] + k);
          for (int j = 0; j < 4; ++j) acc[4 * i + j] += av * wv[j];
        }
      }
      const v16 sums = reduce16(acc);  // lane 4 i + j: C[m0 + i, nb + j]
      for (int i = 0; i < 4 && m0 + i < M; ++i)
        for (int j = 0; j < 4 && nb + j < n1; ++j) {
          float s = sums[4 * i + j];
          for (int64_t k = K16; k < K; ++k) s += a[i][k] * w[j][k];
          C[(m0 + i) * N + nb + j] = bias ? s + bias[nb + j] : s;
        }
    }
  }
}

// C[:, n0:n1] = A B[:, n0:n1]: R rows x 4 vectors of C in registers. K runs in chunks so
// that the chunk of B (kKc x 64 floats) stays in L1 for every block of rows; C is the
// accumulator between chunks.
constexpr int64_t kKc = 64;

template <int R>
XPE_INLINE void nn_range(const float* A, const float* B, float* C, int64_t M, int64_t N, int64_t K,
                         int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 4 * W <= n1; n += 4 * W) {
    for (int64_t k0 = 0; k0 < K || k0 == 0; k0 += kKc) {
      const int64_t k1 = std::min(k0 + kKc, K);
      for (int64_t m0 = 0; m0 < M; m0 += R) {
        const float* a[R];
        for (int i = 0; i < R; ++i) a[i] = A + std::min(m0 + i, M - 1) * K;
        v16 acc[R][4];
        for (int i = 0; i < R; ++i)
          for (int j = 0; j < 4; ++j)
            acc[i][j] = k0 == 0 ? v16{} : vload(C + std::min(m0 + i, M - 1) * N + n + j * W);
        for (int64_t k = k0; k < k1; ++k) {
          v16 bv[4];
          for (int j = 0; j < 4; ++j) bv[j] = vload(B + k * N + n + j * W);
          for (int i = 0; i < R; ++i) {
            const float s = a[i][k];
            for (int j = 0; j < 4; ++j) acc[i][j] += s * bv[j];
          }
        }
        for (int i = 0; i < R && m0 + i < M; ++i)
          for (int j = 0; j < 4; ++j) vstore(C + (m0 + i) * N + n + j * W, acc[i][j]);
      }
      if (K == 0) break;
    }
  }
  for (int64_t m0 = 0; m0 < M; m0 += 4) {
    const float* a[4];
    for (int i = 0; i < 4; ++i) a[i] = A + std::min(m0 + i, M - 1) * K;
    int64_t nt = n;
    for (; nt + W <= n1; nt += W) {
      v16 acc[4] = {};
      for (int64_t k = 0; k < K; ++k) {
        const v16 bv = vload(B + k * N + nt);
        for (int i = 0; i < 4; ++i) acc[i] += a[i][k] * bv;
      }
      for (int i = 0; i < 4 && m0 + i < M; ++i) vstore(C + (m0 + i) * N + nt, acc[i]);
    }
    for (; nt < n1; ++nt)
      for (int i = 0; i < 4 && m0 + i < M; ++i) {
        float s = 0.0f;
        for (int64_t k = 0; k < K; ++k) s += a[i][k] * B[k * N + nt];
        C[(m0 + i) * N + nt] = s;
      }
  }
}

// Rows rb..rb+3 (clamped to r1 - 1) x 64 columns from n of C = G^T H, where Hs points at
// H[0, n] with rows hstride floats apart: 4 x 4 vectors summed over the M rows.
XPE_INLINE void tn_block(const float* G, const float* Hs, int64_t hstride, float* C, int64_t M,
                         int64_t N1, int64_t N2, int64_t rb, int64_t r1, int64_t n) {
  int64_t r[4];
  for (int i = 0; i < 4; ++i) r[i] = std::min(rb + i, r1 - 1);
  v16 acc[4][4];
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) acc[i][j] = v16{};
  for (int64_t m = 0; m < M; ++m) {
    v16 hv[4];
    for (int j = 0; j < 4; ++j) hv[j] = vload(Hs + m * hstride + j * W);
    for (int i = 0; i < 4; ++i) {
      const float s = G[m * N1 + r[i]];
      for (int j = 0; j < 4; ++j) acc[i][j] += s * hv[j];
    }
  }
  for (int i = 0; i < 4 && rb + i < r1; ++i)
    for (int j = 0; j < 4; ++j) vstore(C + r[i] * N2 + n + j * W, acc[i][j]);
}

// C[r, :] = sum_m G[m, r] H[m, :] for r in [r0, r1), in 4 x 64 blocks (tn_block), then the
// columns past the last multiple of 64. With `pack` (M x 64 floats), column blocks go outer
// and each block of H is first copied there: for rows of H a multiple of 4 KB apart, which
// all map to the same L1 sets (at other widths the copy costs more than it saves).
XPE_INLINE void tn_range(const float* G, const float* H, float* C, int64_t M, int64_t N1,
                         int64_t N2, int64_t r0, int64_t r1, float* pack) {
  const int64_t nfull = N2 / (4 * W) * (4 * W);
  if (pack) {
    for (int64_t n = 0; n < nfull; n += 4 * W) {
      for (int64_t m = 0; m < M; ++m)
        for (int j = 0; j < 4; ++j) vstore(pack + m * 4 * W + j * W, vload(H + m * N2 + n + j * W));
      for (int64_t rb = r0; rb < r1; rb += 4) tn_block(G, pack, 4 * W, C, M, N1, N2, rb, r1, n);
    }
  } else {
    for (int64_t rb = r0; rb < r1; rb += 4)
      for (int64_t n = 0; n < nfull; n += 4 * W) tn_block(G, H + n, N2, C, M, N1, N2, rb, r1, n);
  }
  for (int64_t rb = r0; rb < r1; rb += 4) {
    int64_t r[4];
    for (int i = 0; i < 4; ++i) r[i] = std::min(rb + i, r1 - 1);
    int64_t nt = nfull;
    for (; nt + W <= N2; nt += W) {
      v16 acc[4] = {};
      for (int64_t m = 0; m < M; ++m) {
        const v16 hv = vload(H + m * N2 + nt);
        for (int i = 0; i < 4; ++i) acc[i] += G[m * N1 + r[i]] * hv;
      }
      for (int i = 0; i < 4 && rb + i < r1; ++i) vstore(C + r[i] * N2 + nt, acc[i]);
    }
    for (; nt < N2; ++nt)
      for (int i = 0; i < 4 && rb + i < r1; ++i) {
        float s = 0.0f;
        for (int64_t m = 0; m < M; ++m) s += G[m * N1 + r[i]] * H[m * N2 + nt];
        C[r[i] * N2 + nt] = s;
      }
  }
}

XPE_MULTIVERSION(nt_f32,
                 (const float* a, const float* w, const float* b, float* c, int64_t M, int64_t N,
                  int64_t K, int64_t n0, int64_t n1),
                 (a, w, b, c, M, N, K, n0, n1), nt_range)
XPE_MULTIVERSION(nn4_f32,
                 (const float* a, const float* b, float* c, int64_t M, int64_t N, int64_t K,
                  int64_t n0, int64_t n1),
                 (a, b, c, M, N, K, n0, n1), nn_range<4>)
XPE_MULTIVERSION(nn5_f32,
                 (const float* a, const float* b, float* c, int64_t M, int64_t N, int64_t K,
                  int64_t n0, int64_t n1),
                 (a, b, c, M, N, K, n0, n1), nn_range<5>)
XPE_MULTIVERSION(tn_f32,
                 (const float* g, const float* h, float* c, int64_t M, int64_t N1, int64_t N2,
                  int64_t r0, int64_t r1, float* p),
                 (g, h, c, M, N1, N2, r0, r1, p), tn_range)

// Work units (blocks of C) per thread task: about 2^19 FLOPs, so small GEMMs stay on one
// thread.
int64_t grain(int64_t flops_per_unit) {
  return std::max<int64_t>(1, (1 << 19) / std::max<int64_t>(1, flops_per_unit));
}

void check2d(const at::Tensor& t, const char* name, at::ScalarType dt) {
  TORCH_CHECK_VALUE(t.dim() == 2 && t.is_contiguous() && t.device().is_cpu() &&
                        (t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16),
                    "skinny_gemm: ", name,
                    " must be a contiguous 2-D float32 or bfloat16 CPU tensor");
  TORCH_CHECK_TYPE(t.scalar_type() == dt, "skinny_gemm: ", name, " is ", t.scalar_type(),
                   " but the first operand is ", dt);
}

}  // namespace

at::Tensor skinny_gemm_nt(const at::Tensor& a, const at::Tensor& w,
                          const c10::optional<at::Tensor>& bias_) {
  const at::Tensor bias = bias_.has_value() ? *bias_ : at::Tensor();
  check2d(a, "A", a.scalar_type());
  check2d(w, "W", a.scalar_type());
  const int64_t M = a.size(0), K = a.size(1), N = w.size(0);
  TORCH_CHECK_VALUE(w.size(1) == K, "skinny_gemm: inner sizes differ");
  TORCH_CHECK_VALUE(
      !bias.defined() || (bias.dim() == 1 && bias.numel() == N && bias.is_contiguous() &&
                          bias.device().is_cpu() && bias.scalar_type() == a.scalar_type()),
      "skinny_gemm: bias must be [N] of A's dtype");
  if (a.scalar_type() == at::kBFloat16) {
    if (have_bf16_gemm_kernels()) return skinny_gemm_nt_bf16(a, w, bias);
    return bias.defined() ? at::addmm(bias, a, w.t()) : a.mm(w.t());
  }
  auto c = at::empty({M, N}, a.options());
  if (M == 0 || N == 0) return c;
  const float* b = bias.defined() ? bias.data_ptr<float>() : nullptr;
  at::parallel_for(0, (N + 3) / 4, grain(8 * M * K), [&](int64_t s, int64_t e) {
    nt_f32(a.data_ptr<float>(), w.data_ptr<float>(), b, c.data_ptr<float>(), M, N, K, s * 4,
           std::min(e * 4, N));
  });
  return c;
}

namespace {

// Each GEMM as a range of blocks (see parallel_two in skinny_gemm.h).
struct NnF32 {
  const float* a;
  const float* b;
  float* c;
  int64_t M, K, N;
  int64_t units() const { return (N + 4 * W - 1) / (4 * W); }  // 64-column blocks
  int64_t cost() const { return 2 * 4 * W * M * K; }
  void run(int64_t s, int64_t e) const {
    if (nn_rows_per_block(M) == 4)
      nn4_f32(a, b, c, M, N, K, s * 4 * W, std::min(e * 4 * W, N));
    else
      nn5_f32(a, b, c, M, N, K, s * 4 * W, std::min(e * 4 * W, N));
  }
};

struct TnF32 {
  const float* g;
  const float* h;
  float* c;
  int64_t M, N1, N2;
  int64_t units() const { return (N1 + 3) / 4; }
  int64_t cost() const { return 8 * M * N2; }
  void run(int64_t s, int64_t e) const {
    std::vector<float> pack(N2 % 1024 == 0 ? M * 4 * W : 0);  // rows 4 KB apart: copy
    tn_f32(g, h, c, M, N1, N2, s * 4, std::min(e * 4, N1), pack.empty() ? nullptr : pack.data());
  }
};

}  // namespace

at::Tensor skinny_gemm_nn(const at::Tensor& a, const at::Tensor& b) {
  check2d(a, "A", a.scalar_type());
  check2d(b, "B", a.scalar_type());
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  TORCH_CHECK_VALUE(b.size(0) == K, "skinny_gemm: inner sizes differ");
  if (a.scalar_type() == at::kBFloat16)
    return have_bf16_gemm_kernels() ? skinny_gemm_nn_bf16(a, b) : a.mm(b);
  auto c = at::empty({M, N}, a.options());
  if (M == 0 || N == 0) return c;
  const NnF32 nn{a.data_ptr<float>(), b.data_ptr<float>(), c.data_ptr<float>(), M, K, N};
  at::parallel_for(0, nn.units(), grain(nn.cost()), [&](int64_t s, int64_t e) { nn.run(s, e); });
  return c;
}

at::Tensor skinny_gemm_tn(const at::Tensor& g, const at::Tensor& h) {
  check2d(g, "G", g.scalar_type());
  check2d(h, "H", g.scalar_type());
  const int64_t M = g.size(0), N1 = g.size(1), N2 = h.size(1);
  TORCH_CHECK_VALUE(h.size(0) == M, "skinny_gemm: inner sizes differ");
  if (g.scalar_type() == at::kBFloat16)
    return have_bf16_gemm_kernels() ? skinny_gemm_tn_bf16(g, h) : g.t().mm(h);
  auto c = at::empty({N1, N2}, g.options());
  if (N1 == 0 || N2 == 0) return c;
  if (M == 0) return c.zero_();
  const TnF32 tn{g.data_ptr<float>(), h.data_ptr<float>(), c.data_ptr<float>(), M, N1, N2};
  at::parallel_for(0, tn.units(), grain(tn.cost()), [&](int64_t s, int64_t e) { tn.run(s, e); });
  return c;
}

std::pair<at::Tensor, at::Tensor> skinny_gemm_tn_nn(const at::Tensor& g, const at::Tensor& h,
                                                    const at::Tensor& b) {
  check2d(g, "G", g.scalar_type());
  check2d(h, "H", g.scalar_type());
  check2d(b, "B", g.scalar_type());
  const int64_t M = g.size(0), N1 = g.size(1), N2 = h.size(1), N = b.size(1);
  TORCH_CHECK_VALUE(h.size(0) == M && b.size(0) == N1, "skinny_gemm: inner sizes differ");
  if (M == 0 || N1 == 0 || N2 == 0 || N == 0) return {skinny_gemm_tn(g, h), skinny_gemm_nn(g, b)};
  if (g.scalar_type() == at::kBFloat16) {
    if (have_bf16_gemm_kernels()) return skinny_gemm_tn_nn_bf16(g, h, b);
    return {g.t().mm(h), g.mm(b)};
  }
  auto c1 = at::empty({N1, N2}, g.options());
  auto c2 = at::empty({M, N}, g.options());
  parallel_two(TnF32{g.data_ptr<float>(), h.data_ptr<float>(), c1.data_ptr<float>(), M, N1, N2},
               NnF32{g.data_ptr<float>(), b.data_ptr<float>(), c2.data_ptr<float>(), M, N1, N});
  return {c1, c2};
}

}  // namespace xpe_cpu
