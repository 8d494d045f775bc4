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
// Written with GCC vector extensions (16 floats); XPE_MULTIVERSION compiles them as one
// AVX-512 register, two AVX2 registers or four SSE registers.
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

constexpr int64_t W = kLanes;

// exp(x) for x <= 0 (scores minus their row maximum): Cody-Waite reduction to
// r in [-ln2/2, ln2/2], a degree-7 Taylor polynomial (relative error < 1e-7), times 2^n;
// below -87 (and for -inf, the masked keys) exactly 0.
XPE_INLINE v16 vexp_nonpos(v16 x) {
  const v16 xc = x > vsplat(-87.0f) ? x : vsplat(-87.0f);
  const v16 magic = vsplat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const v16 n = (xc * 1.44269504088896341f + magic) - magic;
  const v16 r = (xc - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;
  v16 p = vsplat(1.0f / 5040.0f);
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const v16i bits = (__builtin_convertvector(n, v16i) + 127) << 23;
  v16 two_n;
  __builtin_memcpy(&two_n, &bits, sizeof(two_n));
  const v16 e = p * two_n;
  return x > vsplat(-87.0f) ? e : v16{};
}

XPE_INLINE float hmax(v16 v) {
  float m = v[0];
  for (int i = 1; i < W; ++i) m = v[i] > m ? v[i] : m;
  return m;
}

struct Geometry {
  int64_t S, S16, H, hd, row;  // S16: S rounded up to 16; row: elements per qkv row
};

// One (sample, head): keys, values and scores in `buf`; hd = 16 * DV, R query rows a block.
template <typename T, int DV, int R>
XPE_INLINE void attend_head(const T* qkv, const float* mask, T* out, const Geometry& g,
                            int64_t head, float scale, float* buf) {
  constexpr int64_t hd = W * DV;
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
    // Scores: two 16-key chunks per pass (R * 2 independent accumulators), then an odd one.
    int64_t jc = 0;
    for (; jc + 2 * W <= S16; jc += 2 * W) {
      v16 acc[R][2];
      for (int r = 0; r < R; ++r) {
        acc[r][0] = vload(mk + jc);
        acc[r][1] = vload(mk + jc + W);
      }
      for (int64_t d = 0; d < hd; ++d) {
        const v16 ka = vload(kt + d * S16 + jc), kb = vload(kt + d * S16 + jc + W);
        for (int r = 0; r < R; ++r) {
          const float qd = qf[r * hd + d];
          acc[r][0] += qd * ka;
          acc[r][1] += qd * kb;
        }
      }
      for (int r = 0; r < R; ++r) {
        vstore(sc + r * S16 + jc, acc[r][0]);
        vstore(sc + r * S16 + jc + W, acc[r][1]);
      }
    }
    if (jc < S16) {
      v16 acc[R];
      for (int r = 0; r < R; ++r) acc[r] = vload(mk + jc);
      for (int64_t d = 0; d < hd; ++d) {
        const v16 ka = vload(kt + d * S16 + jc);
        for (int r = 0; r < R; ++r) acc[r] += qf[r * hd + d] * ka;
      }
      for (int r = 0; r < R; ++r) vstore(sc + r * S16 + jc, acc[r]);
    }
    // Softmax numerators in place; 1 / row sum kept for the end.
    float inv[R];
    for (int r = 0; r < R; ++r) {
      float* s = sc + r * S16;
      v16 m = vload(s);
      for (int64_t jc = W; jc < S16; jc += W) m = vmax(m, vload(s + jc));
      const float mx = hmax(m);
      if (mx == -__builtin_inff()) {  // every key masked: zeros
        for (int64_t j = 0; j < S16; ++j) s[j] = 0.0f;
        inv[r] = 0.0f;
        continue;
      }
      v16 sum{};
      for (int64_t jc = 0; jc < S16; jc += W) {
        const v16 e = vexp_nonpos(vload(s + jc) - mx);
        vstore(s + jc, e);
        sum += e;
      }
      inv[r] = 1.0f / hsum(sum);
    }
    // Context: R * DV accumulators over the keys.
    v16 o[R][DV];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < DV; ++c) o[r][c] = v16{};
    for (int64_t j = 0; j < S; ++j) {
      v16 vj[DV];
      for (int c = 0; c < DV; ++c) vj[c] = vload(vv + j * hd + c * W);
      for (int r = 0; r < R; ++r) {
        const float p = sc[r * S16 + j];
        for (int c = 0; c < DV; ++c) o[r][c] += p * vj[c];
      }
    }
    for (int r = 0; r < R && i0 + r < S; ++r) {
      float tmp[hd];
      for (int c = 0; c < DV; ++c) vstore(tmp + c * W, o[r][c] * inv[r]);
      T* orow = out + (i0 + r) * ostride + head * hd;
#pragma omp simd
      for (int64_t d = 0; d < hd; ++d) xpe::store(orow, d, tmp[d]);
    }
  }
}

// Tasks [begin, end) of the B * H (sample, head) pairs.
template <typename T>
XPE_INLINE void attend_range(const T* qkv, const float* mask, T* out, const Geometry* g,
                             float scale, float* buf, int64_t begin, int64_t end) {
  for (int64_t t = begin; t < end; ++t) {
    const int64_t b = t / g->H, head = t % g->H;
    const T* x = qkv + b * g->S * g->row;
    const float* m = mask ? mask + b * g->S : nullptr;
    T* o = out + b * g->S * g->H * g->hd;
    switch (g->hd / W) {
      case 1:
        attend_head<T, 1, 8>(x, m, o, *g, head, scale, buf);
        break;
      case 2:
        attend_head<T, 2, 8>(x, m, o, *g, head, scale, buf);
        break;
      case 4:
        attend_head<T, 4, 4>(x, m, o, *g, head, scale, buf);
        break;
      default:
        attend_head<T, 8, 2>(x, m, o, *g, head, scale, buf);
        break;
    }
  }
}

XPE_MULTIVERSION(attend_f32,
                 (const float* x, const float* m, float* o, const Geometry* g, float s, float* buf,
                  int64_t b, int64_t e),
                 (x, m, o, g, s, buf, b, e), attend_range<float>)
XPE_MULTIVERSION(attend_bf16,
                 (const bf16_t* x, const float* m, bf16_t* o, const Geometry* g, float s,
                  float* buf, int64_t b, int64_t e),
                 (x, m, o, g, s, buf, b, e), attend_range<bf16_t>)

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
  const Geometry g{S, (S + W - 1) / W * W, num_heads, hd, row};
  const int R = hd <= 32 ? 8 : hd == 64 ? 4 : 2;
  const int64_t buf_floats = hd * g.S16 + S * hd + g.S16 + R * g.S16 + R * hd + W;
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
