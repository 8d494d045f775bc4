// Encoder self-attention for inference, CPU, read straight from the packed QKV projection.
//
// In evaluation the encoder computes query, key and value as one GEMM (model.inference_layer);
// its output [B, S, 3 * H * hd] is read here head by head, and the context is written as
// [B, S, H * hd], the layout the output projection takes: no transposes of q, k, v or of the
// context. Per (sample, head) the keys (transposed) and values are converted once to fp32 in
// a small buffer that stays in L1/L2, and blocks of R query rows compute scores, softmax and
// the weighted sum of values in registers, accumulating in fp32 (torch's CPU flash kernel is
// slow at head size 32: microbench.py's attention rows; matmul + softmax pays for [B, H, S,
// S] scores in memory and two casts).
//
// key_mask is additive over keys, [B, S] float32 (0 attend, -inf masked), the key-padding
// mask of an encoder. A row whose keys are all masked gets zeros.
//
// Written with GCC vector extensions (16 floats), compiled per ISA level as one AVX-512
// register or two AVX2 registers (compares and selects split by hand there, and fewer query
// rows per block) or four SSE registers.
#include <ATen/Parallel.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <cstdlib>
#include <memory>

#include "xpe_fast/checks.h"
#include "xpe_fast/kernel_math.h"
#include "cpu/clones.h"
#include "cpu/vec16.h"

// Multiply-adds as FMAs here (the build's -ffp-contract=off keeps the other kernels rounding
// as their eager references do; this one is checked with tolerances, and FMAs are half of
// its instructions).
#pragma GCC optimize("fp-contract=fast")

namespace xpe_cpu {
namespace {

using xpe::bf16_t;

// Vectors of the target's register width: 16 floats with AVX-512, 8 with AVX2, 4 with SSE.
// A vector wider than the registers has no machine mode in GCC and lives on the stack (every
// operation through memory), so each ISA variant takes its own width.
template <int L>
struct Vec {
  typedef float f __attribute__((vector_size(4 * L)));
  typedef int32_t i __attribute__((vector_size(4 * L)));
};

template <typename V>
XPE_INLINE V load_v(const float* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
template <typename V>
XPE_INLINE void store_v(float* p, V v) {
  __builtin_memcpy(p, &v, sizeof(v));
}

// exp(x) for x <= 0 (scores minus their row maximum): Cody-Waite reduction to
// r in [-ln2/2, ln2/2], a degree-7 Taylor polynomial (relative error < 1e-7), times 2^n;
// below -87 (and for -inf, the masked keys) exactly 0.
template <int L, typename V = typename Vec<L>::f, typename VI = typename Vec<L>::i>
XPE_INLINE V vexp_nonpos(V x) {
  const V lo = V{} - 87.0f;
  const V xc = x > lo ? x : lo;
  const V magic = V{} + 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const V n = (xc * 1.44269504088896341f + magic) - magic;
  const V r = (xc - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;
  V p = V{} + 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const VI bits = (__builtin_convertvector(n, VI) + 127) << 23;
  V two_n;
  __builtin_memcpy(&two_n, &bits, sizeof(two_n));
  const V e = p * two_n;
  return x > lo ? e : V{};
}

template <int L, typename V>
XPE_INLINE float hmax(V v) {
  float m = v[0];
  for (int i = 1; i < L; ++i) m = v[i] > m ? v[i] : m;
  return m;
}
template <int L, typename V>
XPE_INLINE float hsum_v(V v) {
  float s = 0.0f;
  for (int i = 0; i < L; ++i) s += v[i];
  return s;
}

struct Geometry {
  int64_t S, S16, H, hd, row;  // S16: S rounded up to 16; row: elements per qkv row
};

// One (sample, head) with L-float vectors: keys, values and scores in `buf`; hd = L * DV,
// R query rows a block.
template <typename T, int L, int DV, int R>
XPE_INLINE void attend_head(const T* qkv, const float* mask, T* out, const Geometry& g,
                            int64_t head, float scale, float* buf) {
  using V = typename Vec<L>::f;
  constexpr int64_t hd = L * DV;
  const int64_t S = g.S, S16 = g.S16, ostride = g.H * hd;
  float* kt = buf;            // [hd, S16]: keys transposed, zero beyond S
  float* vv = kt + hd * S16;  // [S, hd]
  float* mk = vv + S * hd;    // [S16]: additive mask, -inf beyond S
  float* sc = mk + S16;       // [R, S16]: scores, then probabilities
  float* qf = sc + R * S16;   // [R, hd]: scaled queries
  const T* q0 = qkv + head * hd;
  const T* k0 = qkv + (g.H + head) * hd;
  const T* v0 = qkv + (2 * g.H + head) * hd;

  for (int64_t j = 0; j < S; ++j) {
    const T* kr = k0 + j * g.row;
    for (int64_t d = 0; d < hd; ++d) kt[d * S16 + j] = xpe::load(kr, d);
    const T* vr = v0 + j * g.row;
#pragma omp simd
    for (int64_t d = 0; d < hd; ++d) vv[j * hd + d] = xpe::load(vr, d);
  }
  for (int64_t d = 0; d < hd; ++d)
    for (int64_t j = S; j < S16; ++j) kt[d * S16 + j] = 0.0f;
  for (int64_t j = 0; j < S16; ++j) mk[j] = j < S ? (mask ? mask[j] : 0.0f) : -__builtin_inff();

  for (int64_t i0 = 0; i0 < S; i0 += R) {
    // Rows past the end repeat the last row (computed, not written): fixed R keeps the
    // accumulators in registers.
    for (int r = 0; r < R; ++r) {
      const T* qr = q0 + (i0 + r < S ? i0 + r : S - 1) * g.row;
#pragma omp simd
      for (int64_t d = 0; d < hd; ++d) qf[r * hd + d] = xpe::load(qr, d) * scale;
    }
    // Scores: two L-key chunks per pass (R * 2 independent accumulators), then an odd one.
    int64_t jc = 0;
    for (; jc + 2 * L <= S16; jc += 2 * L) {
      V acc[R][2];
      for (int r = 0; r < R; ++r) {
        acc[r][0] = load_v<V>(mk + jc);
        acc[r][1] = load_v<V>(mk + jc + L);
      }
      for (int64_t d = 0; d < hd; ++d) {
        const V ka = load_v<V>(kt + d * S16 + jc), kb = load_v<V>(kt + d * S16 + jc + L);
        for (int r = 0; r < R; ++r) {
          const float qd = qf[r * hd + d];
          acc[r][0] += qd * ka;
          acc[r][1] += qd * kb;
        }
      }
      for (int r = 0; r < R; ++r) {
        store_v(sc + r * S16 + jc, acc[r][0]);
        store_v(sc + r * S16 + jc + L, acc[r][1]);
      }
    }
    for (; jc < S16; jc += L) {
      V acc[R];
      for (int r = 0; r < R; ++r) acc[r] = load_v<V>(mk + jc);
      for (int64_t d = 0; d < hd; ++d) {
        const V ka = load_v<V>(kt + d * S16 + jc);
        for (int r = 0; r < R; ++r) acc[r] += qf[r * hd + d] * ka;
      }
      for (int r = 0; r < R; ++r) store_v(sc + r * S16 + jc, acc[r]);
    }
    // Softmax numerators in place; 1 / row sum kept for the end.
    float inv[R];
    for (int r = 0; r < R; ++r) {
      float* s = sc + r * S16;
      V m = load_v<V>(s);
      for (int64_t jc = L; jc < S16; jc += L) {
        const V x = load_v<V>(s + jc);
        m = x > m ? x : m;
      }
      const float mx = hmax<L>(m);
      if (mx == -__builtin_inff()) {  // every key masked: zeros
        for (int64_t j = 0; j < S16; ++j) s[j] = 0.0f;
        inv[r] = 0.0f;
        continue;
      }
      V sum{};
      for (int64_t jc = 0; jc < S16; jc += L) {
        const V e = vexp_nonpos<L>(load_v<V>(s + jc) - mx);
        store_v(s + jc, e);
        sum += e;
      }
      inv[r] = 1.0f / hsum_v<L>(sum);
    }
    // Context: R * DV accumulators over the keys.
    V o[R][DV];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < DV; ++c) o[r][c] = V{};
    for (int64_t j = 0; j < S; ++j) {
      V vj[DV];
      for (int c = 0; c < DV; ++c) vj[c] = load_v<V>(vv + j * hd + c * L);
      for (int r = 0; r < R; ++r) {
        const float p = sc[r * S16 + j];
        for (int c = 0; c < DV; ++c) o[r][c] += p * vj[c];
      }
    }
    for (int r = 0; r < R && i0 + r < S; ++r) {
      float tmp[hd];
      for (int c = 0; c < DV; ++c) store_v(tmp + c * L, o[r][c] * inv[r]);
      T* orow = out + (i0 + r) * ostride + head * hd;
#pragma omp simd
      for (int64_t d = 0; d < hd; ++d) xpe::store(orow, d, tmp[d]);
    }
  }
}

// Query rows per block for L-float vectors and head size hd: as many as keep the R * hd / L
// context accumulators and the hd / L value vectors within the register file (32 registers
// with AVX-512, 16 with AVX2 and SSE).
template <int L>
constexpr int rows_per_block(int64_t hd) {
  const int regs = L == 16 ? 32 : 16;
  const int dv = static_cast<int>(hd / L);
  const int r = (regs - 2 - dv) / dv;
  return r >= 8 ? 8 : r >= 4 ? 4 : r >= 2 ? 2 : 1;
}

// Tasks [begin, end) of the B * H (sample, head) pairs, with L-float vectors.
template <typename T, int L>
XPE_INLINE void attend_range(const T* qkv, const float* mask, T* out, const Geometry* g,
                             float scale, float* buf, int64_t begin, int64_t end) {
  for (int64_t t = begin; t < end; ++t) {
    const int64_t b = t / g->H, head = t % g->H;
    const T* x = qkv + b * g->S * g->row;
    const float* m = mask ? mask + b * g->S : nullptr;
    T* o = out + b * g->S * g->H * g->hd;
    switch (g->hd) {
      case 16:
        attend_head<T, L, 16 / L, rows_per_block<L>(16)>(x, m, o, *g, head, scale, buf);
        break;
      case 32:
        attend_head<T, L, 32 / L, rows_per_block<L>(32)>(x, m, o, *g, head, scale, buf);
        break;
      case 64:
        attend_head<T, L, 64 / L, rows_per_block<L>(64)>(x, m, o, *g, head, scale, buf);
        break;
      default:
        attend_head<T, L, 128 / L, rows_per_block<L>(128)>(x, m, o, *g, head, scale, buf);
        break;
    }
  }
}

// Each ISA variant with its own vector width.
XPE_MULTIVERSION_EACH(attend_f32,
                      (const float* x, const float* m, float* o, const Geometry* g, float s,
                       float* buf, int64_t b, int64_t e),
                      (x, m, o, g, s, buf, b, e), (attend_range<float, 16>),
                      (attend_range<float, 8>), (attend_range<float, 4>))
XPE_MULTIVERSION_EACH(attend_bf16,
                      (const bf16_t* x, const float* m, bf16_t* o, const Geometry* g, float s,
                       float* buf, int64_t b, int64_t e),
                      (x, m, o, g, s, buf, b, e), (attend_range<bf16_t, 16>),
                      (attend_range<bf16_t, 8>), (attend_range<bf16_t, 4>))

struct FreeDeleter {
  void operator()(float* p) const { std::free(p); }
};

}  // namespace

bool packed_attention_supports_head_size(int64_t hd) {
  return hd == 16 || hd == 32 || hd == 64 || hd == 128;
}

at::Tensor packed_attention_forward(const at::Tensor& qkv_,
                                    const c10::optional<at::Tensor>& key_mask_, int64_t num_heads,
                                    double scale) {
  TORCH_CHECK_VALUE(qkv_.defined(), "packed_attention: qkv is undefined");
  check_device(qkv_, "qkv", "cpu");
  const auto st = qkv_.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kBFloat16,
                   "packed_attention: qkv must be float32 or bfloat16, got ", st);
  TORCH_CHECK_VALUE(qkv_.dim() == 3, "packed_attention: qkv must be [B, S, 3 * H * hd], got ",
                    qkv_.sizes());
  TORCH_CHECK_VALUE(num_heads > 0, "packed_attention: num_heads must be > 0, got ", num_heads);
  const int64_t B = qkv_.size(0), S = qkv_.size(1), row = qkv_.size(2);
  TORCH_CHECK_VALUE(B > 0 && S > 0, "packed_attention: empty batch or sequence, qkv ",
                    qkv_.sizes());
  TORCH_CHECK_VALUE(row % (3 * num_heads) == 0, "packed_attention: last dim of qkv (", row,
                    ") is not 3 * num_heads * head_size with num_heads = ", num_heads);
  const int64_t hd = row / (3 * num_heads);
  TORCH_CHECK_VALUE(packed_attention_supports_head_size(hd),
                    "packed_attention: head size must be 16, 32, 64 or 128, got ", hd);
  TORCH_CHECK_VALUE(std::isfinite(scale), "packed_attention: scale must be finite, got ", scale);
  at::Tensor mask;
  if (key_mask_.has_value() && key_mask_->defined()) {
    mask = *key_mask_;
    check_device(mask, "key_mask", "cpu");
    TORCH_CHECK_TYPE(mask.scalar_type() == at::kFloat,
                     "packed_attention: key_mask must be float32 (additive), got ",
                     mask.scalar_type());
    TORCH_CHECK_VALUE(mask.dim() == 2 && mask.size(0) == B && mask.size(1) == S,
                      "packed_attention: key_mask must be [B, S] = [", B, ", ", S, "], got ",
                      mask.sizes());
    mask = mask.contiguous();
  }
  const at::Tensor qkv = qkv_.contiguous();
  auto out = at::empty({B, S, num_heads * hd}, qkv.options());
  const Geometry g{S, (S + 15) / 16 * 16, num_heads, hd, row};
  const int R = 8;  // the most rows per block of any variant
  const int64_t buf_floats = hd * g.S16 + S * hd + g.S16 + R * g.S16 + R * hd + 16;
  const float* m = mask.defined() ? mask.data_ptr<float>() : nullptr;
  const float s = static_cast<float>(scale);
  at::parallel_for(0, B * num_heads, 1, [&](int64_t b, int64_t e) {
    std::unique_ptr<float, FreeDeleter> buf(
        static_cast<float*>(std::aligned_alloc(64, (buf_floats * sizeof(float) + 63) / 64 * 64)));
    TORCH_CHECK(buf, "packed_attention: out of memory for a ", buf_floats, "-float buffer");
    if (st == at::kFloat)
      attend_f32(qkv.data_ptr<float>(), m, out.data_ptr<float>(), &g, s, buf.get(), b, e);
    else
      attend_bf16(reinterpret_cast<const bf16_t*>(qkv.data_ptr()), m,
                  reinterpret_cast<bf16_t*>(out.data_ptr()), &g, s, buf.get(), b, e);
  });
  return out;
}

}  // namespace xpe_cpu

TORCH_LIBRARY_IMPL(xpe_fast, CPU, m) {
  m.impl("packed_attention", &xpe_cpu::packed_attention_forward);
}
