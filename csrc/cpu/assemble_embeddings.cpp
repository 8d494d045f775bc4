// Fused assembly of the embedding stream, CPU.
//
//   out[b, j] = LayerNorm(src(b, j) + pos[offset + j] + type0),
//   src(b, j) = prompt row j for j < N, else word[input_ids[b, j - N]],
//
// in one pass: each output row is read from its three sources, normalised in an
// on-stack-of-the-chunk fp32 buffer and written once. With a prompt shared by the batch the
// N prompt rows are identical in every sample, so they are normalised once and copied.
// Backward returns only the prompt's gradient (the other tables are frozen) and runs the
// LayerNorm backward only for the N prompt rows; for a shared prompt it first sums the
// incoming gradient over the batch, which is exact because LayerNorm's backward is linear in
// the incoming gradient for a fixed input.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/extension.h>

#include <cstring>
#include <vector>

#include "xpe_fast/checks.h"
#include "xpe_fast/kernel_math.h"
#include "cpu/clones.h"
#include "cpu/vec16.h"

namespace xpe_cpu {
namespace {

using xpe::bf16_t;

// buf = src + pos + type; returns the row's mean and 1/std (two passes, in A). The float
// sums use vector accumulators (vec16.h): an `omp simd` reduction ends in 16 scalar adds
// through the stack, which at d = 384 was a sizeable share of the row.
XPE_HD double row_sum_acc(const double* x, int64_t n) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t k = 0; k < n; ++k) s += x[k];
  return s;
}
XPE_HD double row_sq_dev_acc(const double* x, double mean, int64_t n) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t k = 0; k < n; ++k) s += (x[k] - mean) * (x[k] - mean);
  return s;
}
XPE_HD float row_sum_acc(const float* x, int64_t n) { return row_sum(x, n); }
XPE_HD float row_sq_dev_acc(const float* x, float mean, int64_t n) {
  return row_sq_dev(x, mean, n);
}

template <typename T, typename A = typename xpe::acc_of<T>::type>
XPE_HD void row_stats(const T* src, const T* pos, const T* typ, A* buf, int64_t d, A eps, A& mean,
                      A& rstd) {
#pragma omp simd
  for (int64_t k = 0; k < d; ++k)
    buf[k] = xpe::embed_sum<A>(xpe::load(src, k), xpe::load(pos, k), xpe::load(typ, k));
  mean = row_sum_acc(buf, d) / A(d);
  rstd = xpe::rsqrt_acc(row_sq_dev_acc(buf, mean, d) / A(d) + eps);
}

template <typename T, typename A = typename xpe::acc_of<T>::type>
XPE_HD void forward_row(const T* src, const T* pos, const T* typ, const T* w, const T* b, T* out,
                        A* buf, int64_t d, A eps) {
  A mean, rstd;
  row_stats<T>(src, pos, typ, buf, d, eps, mean, rstd);
#pragma omp simd
  for (int64_t k = 0; k < d; ++k)
    xpe::store(out, k, xpe::ln_apply<A>(buf[k], mean, rstd, xpe::load(w, k), xpe::load(b, k)));
}

// LayerNorm backward of one prompt row; `g` holds the incoming gradient (already summed over
// the batch for a shared prompt), `buf` is scratch of d elements.
template <typename T, typename A = typename xpe::acc_of<T>::type>
XPE_HD void backward_row(const A* g, const T* src, const T* pos, const T* typ, const T* w, T* dsrc,
                         A* buf, int64_t d, A eps) {
  A mean, rstd;
  row_stats<T>(src, pos, typ, buf, d, eps, mean, rstd);
  A sgw = 0, sgwx = 0;
#pragma omp simd reduction(+ : sgw, sgwx)
  for (int64_t k = 0; k < d; ++k) {
    const A xhat = (buf[k] - mean) * rstd;
    const A gw = g[k] * xpe::load(w, k);
    buf[k] = xhat;
    sgw += gw;
    sgwx += gw * xhat;
  }
  const A mgw = sgw / A(d), mgwx = sgwx / A(d);
#pragma omp simd
  for (int64_t k = 0; k < d; ++k)
    xpe::store(dsrc, k, xpe::ln_grad_input<A>(g[k] * xpe::load(w, k), buf[k], rstd, mgw, mgwx));
}

struct Geometry {
  int64_t B, L, N, d, offset;
  bool shared;
};

// Word rows are random gathers from a table of 100s of MB: with cold caches each one is a
// DRAM (and TLB) miss that the LayerNorm of the row before cannot hide, so every cache line
// of the word row two rows ahead is prefetched (two was the best distance measured with cold
// caches: microbench.py's cold-cache assemble rows).
constexpr int64_t kPrefetchRows = 2;

template <typename T>
XPE_HD void prefetch_row(const T* p, int64_t d) {
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t off = 0; off < d * static_cast<int64_t>(sizeof(T)); off += 64)
    __builtin_prefetch(c + off, 0, 3);
}

// The row loop of the forward: for each output row r in [begin, end), prefetches the word
// row kPrefetchRows ahead, copies a shared prompt row already normalised in sample 0, or
// calls row(src, pos_row, dst). The row lambdas must be always_inline: a lambda's body is
// its own function, compiled for the baseline ISA unless inlined into the
// XPE_MULTIVERSION variant.
template <typename T, typename RowFn>
XPE_INLINE void for_each_row(const int64_t* ids, const T* prompt, const T* word, const T* pos,
                             T* out, Geometry g, int64_t begin, int64_t end, RowFn row) {
  const int64_t S = g.N + g.L;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t bi = r / S, j = r % S;
    T* dst = out + r * g.d;
    if (r + kPrefetchRows < end) {
      const int64_t rp = r + kPrefetchRows, bp = rp / S, jp = rp % S;
      if (jp >= g.N) prefetch_row(word + ids[bp * g.L + (jp - g.N)] * g.d, g.d);
    }
    const T* src;
    if (j < g.N) {
      if (g.shared && bi > 0) {  // shared prompt rows were normalised once, in sample 0
        std::memcpy(dst, out + j * g.d, sizeof(T) * g.d);
        continue;
      }
      src = prompt + xpe::prompt_row(bi, j, g.N, g.shared) * g.d;
    } else {
      src = word + ids[bi * g.L + (j - g.N)] * g.d;
    }
    row(src, pos + (g.offset + j) * g.d, dst);
  }
}

template <typename T, typename A = typename xpe::acc_of<T>::type>
XPE_INLINE void forward_rows(const int64_t* ids, const T* prompt, const T* word, const T* pos,
                             const T* typ, const T* w, const T* b, T* out, A* buf, Geometry g,
                             A eps, int64_t begin, int64_t end) {
  for_each_row(ids, prompt, word, pos, out, g, begin, end,
               [&](const T* src, const T* pos_j, T* dst) __attribute__((always_inline)) {
                 forward_row<T>(src, pos_j, typ, w, b, dst, buf, g.d, eps);
               });
}

// float and bf16 rows, vectorised by hand. The generic forward_row above keeps the row in a
// buffer that it reads four times, and for bf16 converts the type row, weight and bias in
// every row and rounds with a NaN-aware select: such a row is bound by its loads and stores,
// not by memory. Here the type row, weight and bias are converted to fp32 once per chunk,
// and at d = 256 and 384 the row stays in registers between passes. fp32 rows add their
// statistics in the order of row_sum / row_sq_dev, so they give forward_row's bits.
//
// Outputs larger than kStreamBytes are written with non-temporal stores (x86 only): a batch's
// output does not stay in the caches anyway, a normal store first reads the line it writes,
// and the next consumer (the encoder's first GEMM) is compute-bound. BENCHMARKS.md has the
// measurements behind both choices.
constexpr int64_t kStreamBytes = int64_t(4) << 20;
#if defined(__x86_64__) && defined(__GNUC__)
constexpr bool kHaveStreamStores = true;
XPE_INLINE void stream_store(void* p, v16 v) {  // four 16-byte movntps: SSE, every target
  typedef float v4 __attribute__((vector_size(16)));
  float* f = static_cast<float*>(p);
  for (int q = 0; q < 4; ++q) {
    v4 part;
    __builtin_memcpy(&part, reinterpret_cast<const char*>(&v) + 16 * q, sizeof(part));
    __builtin_ia32_movntps(f + 4 * q, part);
  }
}
XPE_INLINE void stream_fence() { __builtin_ia32_sfence(); }
#else  // other architectures: plain stores (the baseline path)
constexpr bool kHaveStreamStores = false;
XPE_INLINE void stream_store(void* p, v16 v) { vstore(static_cast<float*>(p), v); }
XPE_INLINE void stream_fence() {}
#endif
template <bool NT>
XPE_INLINE void put16(float* p, v16 v) {
  if constexpr (NT)
    stream_store(p, v);
  else
    vstore(p, v);
}

struct RowConsts {
  const float *typ, *w, *b;  // fp32 copies (bf16: even/odd layout, see below)
  bool wb_finite;
};

// One fp32 row of NV * 16 elements held in registers.
template <int NV, bool NT>
XPE_INLINE void forward_row_f32_in_registers(const float* src, const float* pos, RowConsts c,
                                             float* out, float eps) {
  static_assert(NV % 4 == 0, "the four accumulators of row_sum, without its tail loops");
  v16 x[NV], acc[4] = {};
#pragma GCC unroll 32
  for (int i = 0; i < NV; ++i) {
    x[i] = (vload(src + i * kLanes) + vload(pos + i * kLanes)) + vload(c.typ + i * kLanes);
    acc[i % 4] += x[i];
  }
  constexpr float n = float(NV * kLanes);
  const float mean = hsum((acc[0] + acc[1]) + (acc[2] + acc[3])) / n;
  const v16 m = vsplat(mean);
  v16 sq[4] = {};
#pragma GCC unroll 32
  for (int i = 0; i < NV; ++i) sq[i % 4] += (x[i] - m) * (x[i] - m);
  const float rstd = xpe::rsqrt_acc(hsum((sq[0] + sq[1]) + (sq[2] + sq[3])) / n + eps);
  const v16 r = vsplat(rstd);
#pragma GCC unroll 32
  for (int i = 0; i < NV; ++i)
    put16<NT>(out + i * kLanes, (x[i] - m) * r * vload(c.w + i * kLanes) + vload(c.b + i * kLanes));
}

template <bool NT>
XPE_INLINE void forward_row_f32(const float* src, const float* pos, RowConsts c, float* out,
                                float* buf, int64_t d, float eps) {
  if (d == 384) return forward_row_f32_in_registers<24, NT>(src, pos, c, out, eps);
  if (d == 256) return forward_row_f32_in_registers<16, NT>(src, pos, c, out, eps);
  const int64_t dv = d - d % kLanes;
  for (int64_t k = 0; k < dv; k += kLanes)
    vstore(buf + k, (vload(src + k) + vload(pos + k)) + vload(c.typ + k));
  for (int64_t k = dv; k < d; ++k) buf[k] = xpe::embed_sum<float>(src[k], pos[k], c.typ[k]);
  const float mean = row_sum(buf, d) / float(d);
  const float rstd = xpe::rsqrt_acc(row_sq_dev(buf, mean, d) / float(d) + eps);
  const v16 m = vsplat(mean), r = vsplat(rstd);
  for (int64_t k = 0; k < dv; k += kLanes)
    put16<NT>(out + k, (vload(buf + k) - m) * r * vload(c.w + k) + vload(c.b + k));
  for (int64_t k = dv; k < d; ++k)
    out[k] = xpe::ln_apply<float>(buf[k], mean, rstd, c.w[k], c.b[k]);
}

// bf16 in even/odd lanes: 32 bf16 read as 16 32-bit words give the even elements (word <<
// 16) and the odd ones (word & 0xffff0000) with no lane shuffles, and two rounded halves
// combine into one 64-byte store the same way (GCC's 16 x u16 <-> 16 x u32 conversions
// split into halves and permutes). The fp32 type row, weight and bias are laid out to
// match: per block of 32, the 16 even elements, then the 16 odd. Rows whose statistics are
// finite (with finite weight and bias, every output is then finite or +-inf) round without
// the NaN select; rows with NaN/inf return false and take forward_row.
typedef uint32_t v16u __attribute__((vector_size(64)));

XPE_INLINE void load_bf16_pairs(const bf16_t* p, v16& even, v16& odd) {
  v16u u;
  __builtin_memcpy(&u, p, sizeof(u));
  even = (v16)(u << 16);
  odd = (v16)(u & 0xffff0000u);
}
XPE_INLINE v16u round_bf16_high(v16 v) {  // xpe::float_to_bf16_bits in the high half, not NaN
  const v16u u = (v16u)v;
  return (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
}
template <bool NT>
XPE_INLINE void store_bf16_pairs(bf16_t* p, v16 even, v16 odd) {
  const v16u w = (round_bf16_high(even) >> 16) | round_bf16_high(odd);
  if constexpr (NT) {
    stream_store(p, (v16)w);
  } else {
    __builtin_memcpy(p, &w, sizeof(w));
  }
}

// One bf16 row: NP blocks of 32 held in registers (NP > 0, d = 32 * NP), or through buf
// (NP = 0, any d).
template <int NP, bool NT>
XPE_INLINE bool forward_row_bf16(const bf16_t* src, const bf16_t* pos, RowConsts c, bf16_t* out,
                                 float* buf, int64_t d, float eps) {
  v16 x[NP > 0 ? 2 * NP : 1];
  const int64_t nb = NP > 0 ? NP : d / 32, dv = 32 * nb;
  v16 se = {}, so = {};
#pragma GCC unroll 16
  for (int64_t p = 0; p < nb; ++p) {
    v16 s_even, s_odd, p_even, p_odd;
    load_bf16_pairs(src + 32 * p, s_even, s_odd);
    load_bf16_pairs(pos + 32 * p, p_even, p_odd);
    const v16 e = (s_even + p_even) + vload(c.typ + 32 * p);
    const v16 o = (s_odd + p_odd) + vload(c.typ + 32 * p + 16);
    if constexpr (NP > 0) {
      x[2 * p] = e;
      x[2 * p + 1] = o;
    } else {
      vstore(buf + 32 * p, e);
      vstore(buf + 32 * p + 16, o);
    }
    se += e;
    so += o;
  }
  auto even = [&](int64_t p) { return NP > 0 ? x[2 * p] : vload(buf + 32 * p); };
  auto odd = [&](int64_t p) { return NP > 0 ? x[2 * p + 1] : vload(buf + 32 * p + 16); };
  float sum = hsum(se + so);
  for (int64_t k = dv; k < d; ++k) {
    buf[k] = xpe::embed_sum<float>(xpe::load(src, k), xpe::load(pos, k), c.typ[k]);
    sum += buf[k];
  }
  const float mean = sum / float(d);
  const v16 m = vsplat(mean);
  v16 qe = {}, qo = {};
#pragma GCC unroll 16
  for (int64_t p = 0; p < nb; ++p) {
    const v16 e = even(p) - m, o = odd(p) - m;
    qe += e * e;
    qo += o * o;
  }
  float sq = hsum(qe + qo);
  for (int64_t k = dv; k < d; ++k) sq += (buf[k] - mean) * (buf[k] - mean);
  const float rstd = xpe::rsqrt_acc(sq / float(d) + eps);
  if (!(c.wb_finite && __builtin_isfinite(mean) && __builtin_isfinite(rstd))) return false;
  const v16 r = vsplat(rstd);
#pragma GCC unroll 16
  for (int64_t p = 0; p < nb; ++p)
    store_bf16_pairs<NT>(out + 32 * p,
                         (even(p) - m) * r * vload(c.w + 32 * p) + vload(c.b + 32 * p),
                         (odd(p) - m) * r * vload(c.w + 32 * p + 16) + vload(c.b + 32 * p + 16));
  for (int64_t k = dv; k < d; ++k)
    xpe::store(out, k, xpe::ln_apply<float>(buf[k], mean, rstd, c.w[k], c.b[k]));
  return true;
}

template <bool NT>
XPE_INLINE bool forward_row_vec(const float* src, const float* pos, RowConsts c, float* out,
                                float* buf, int64_t d, float eps) {
  forward_row_f32<NT>(src, pos, c, out, buf, d, eps);
  return true;
}
template <bool NT>
XPE_INLINE bool forward_row_vec(const bf16_t* src, const bf16_t* pos, RowConsts c, bf16_t* out,
                                float* buf, int64_t d, float eps) {
  if (d == 384) return forward_row_bf16<12, NT>(src, pos, c, out, buf, d, eps);
  if (d == 256) return forward_row_bf16<8, NT>(src, pos, c, out, buf, d, eps);
  return forward_row_bf16<0, NT>(src, pos, c, out, buf, d, eps);
}

template <typename T, bool NT>
XPE_INLINE void forward_rows_vec_loop(const int64_t* ids, const T* prompt, const T* word,
                                      const T* pos, const T* typ, const T* w, const T* b, T* out,
                                      float* buf, RowConsts c, Geometry g, float eps, int64_t begin,
                                      int64_t end) {
  for_each_row(ids, prompt, word, pos, out, g, begin, end,
               [&](const T* src, const T* pos_j, T* dst) __attribute__((always_inline)) {
                 if (!forward_row_vec<NT>(src, pos_j, c, dst, buf, g.d, eps))
                   forward_row<T>(src, pos_j, typ, w, b, dst, buf, g.d, eps);  // NaN/inf (bf16)
               });
  if (NT) stream_fence();  // streamed rows visible before the op returns
}

// float and bf16: `buf` holds 4 * d floats (the row, then the fp32 type row, weight, bias).
template <typename T>
XPE_INLINE void forward_rows_vec(const int64_t* ids, const T* prompt, const T* word, const T* pos,
                                 const T* typ, const T* w, const T* b, T* out, float* buf,
                                 Geometry g, float eps, int64_t begin, int64_t end) {
  float* cf = buf + g.d;
  bool finite = true;
  const int64_t dv = sizeof(T) == 2 ? g.d - g.d % 32 : 0;  // bf16: even/odd layout below dv
  for (int64_t k = 0; k < g.d; ++k) {
    const int64_t at = k < dv ? (k & ~int64_t(31)) + (k & 1) * 16 + ((k & 31) >> 1) : k;
    cf[at] = xpe::load(typ, k);
    cf[g.d + at] = xpe::load(w, k);
    cf[2 * g.d + at] = xpe::load(b, k);
    finite &= __builtin_isfinite(cf[g.d + at]) && __builtin_isfinite(cf[2 * g.d + at]);
  }
  const RowConsts c{cf, cf + g.d, cf + 2 * g.d, finite};
  // Streaming needs whole 64-byte lines per row (and a 64-byte aligned output).
  const bool stream =
      kHaveStreamStores && g.B * (g.N + g.L) * g.d * int64_t(sizeof(T)) > kStreamBytes &&
      (g.d * int64_t(sizeof(T))) % 64 == 0 && reinterpret_cast<uintptr_t>(out) % 64 == 0;
  if (stream)
    forward_rows_vec_loop<T, true>(ids, prompt, word, pos, typ, w, b, out, buf, c, g, eps, begin,
                                   end);
  else
    forward_rows_vec_loop<T, false>(ids, prompt, word, pos, typ, w, b, out, buf, c, g, eps, begin,
                                    end);
}

XPE_MULTIVERSION(forward_rows_f32,
                 (const int64_t* ids, const float* p, const float* wd, const float* ps,
                  const float* t, const float* w, const float* b, float* o, float* buf, Geometry g,
                  float eps, int64_t s, int64_t e),
                 (ids, p, wd, ps, t, w, b, o, buf, g, eps, s, e), forward_rows_vec<float>)
XPE_MULTIVERSION(forward_rows_f64,
                 (const int64_t* ids, const double* p, const double* wd, const double* ps,
                  const double* t, const double* w, const double* b, double* o, double* buf,
                  Geometry g, double eps, int64_t s, int64_t e),
                 (ids, p, wd, ps, t, w, b, o, buf, g, eps, s, e), forward_rows<double>)
XPE_MULTIVERSION(forward_rows_bf16,
                 (const int64_t* ids, const bf16_t* p, const bf16_t* wd, const bf16_t* ps,
                  const bf16_t* t, const bf16_t* w, const bf16_t* b, bf16_t* o, float* buf,
                  Geometry g, float eps, int64_t s, int64_t e),
                 (ids, p, wd, ps, t, w, b, o, buf, g, eps, s, e), forward_rows_vec<bf16_t>)

// Gradient of prompt rows [begin, end) (rows of `grad_prompt`, which has B*N or N rows).
// For a shared prompt, slots [begin, end) of one sample are contiguous in grad_out, so the
// batch sum reads B contiguous blocks into `gsum` ((end - begin) * d elements) rather than
// B * (end - begin) scattered rows, four samples per sweep (microbench.py's "bwd kernel"
// rows). Each element still sums the batch in order.
template <typename T, typename A = typename xpe::acc_of<T>::type>
XPE_HD void backward_rows(const T* gout, const T* prompt, const T* pos, const T* typ, const T* w,
                          T* gprompt, A* gsum, A* buf, Geometry g, A eps, int64_t begin,
                          int64_t end) {
  const int64_t S = g.N + g.L;
  if (g.shared) {
    const int64_t n = (end - begin) * g.d;
    for (int64_t k = 0; k < n; ++k) gsum[k] = 0;
    // Four samples per sweep (four read streams, a quarter of the gsum traffic), added in
    // batch order all the same.
    int64_t bi = 0;
    for (; bi + 4 <= g.B; bi += 4) {
      const T* g0 = gout + (bi * S + begin) * g.d;
      const T* g1 = g0 + S * g.d;
      const T* g2 = g1 + S * g.d;
      const T* g3 = g2 + S * g.d;
#pragma omp simd
      for (int64_t k = 0; k < n; ++k)
        gsum[k] = (((gsum[k] + xpe::load(g0, k)) + xpe::load(g1, k)) + xpe::load(g2, k)) +
                  xpe::load(g3, k);
    }
    for (; bi < g.B; ++bi) {
      const T* gr = gout + (bi * S + begin) * g.d;
#pragma omp simd
      for (int64_t k = 0; k < n; ++k) gsum[k] += xpe::load(gr, k);
    }
    for (int64_t j = begin; j < end; ++j)
      backward_row<T>(gsum + (j - begin) * g.d, prompt + j * g.d, pos + (g.offset + j) * g.d, typ,
                      w, gprompt + j * g.d, buf, g.d, eps);
    return;
  }
  for (int64_t r = begin; r < end; ++r) {
    const int64_t j = r % g.N, bi = r / g.N;
    const T* gr = gout + (bi * S + j) * g.d;
#pragma omp simd
    for (int64_t k = 0; k < g.d; ++k) gsum[k] = xpe::load(gr, k);
    backward_row<T>(gsum, prompt + r * g.d, pos + (g.offset + j) * g.d, typ, w, gprompt + r * g.d,
                    buf, g.d, eps);
  }
}

XPE_MULTIVERSION(backward_rows_f32,
                 (const float* go, const float* p, const float* ps, const float* t, const float* w,
                  float* gp, float* gs, float* buf, Geometry g, float eps, int64_t s, int64_t e),
                 (go, p, ps, t, w, gp, gs, buf, g, eps, s, e), backward_rows<float>)
XPE_MULTIVERSION(backward_rows_f64,
                 (const double* go, const double* p, const double* ps, const double* t,
                  const double* w, double* gp, double* gs, double* buf, Geometry g, double eps,
                  int64_t s, int64_t e),
                 (go, p, ps, t, w, gp, gs, buf, g, eps, s, e), backward_rows<double>)
XPE_MULTIVERSION(backward_rows_bf16,
                 (const bf16_t* go, const bf16_t* p, const bf16_t* ps, const bf16_t* t,
                  const bf16_t* w, bf16_t* gp, float* gs, float* buf, Geometry g, float eps,
                  int64_t s, int64_t e),
                 (go, p, ps, t, w, gp, gs, buf, g, eps, s, e), backward_rows<bf16_t>)

template <typename T>
const T* ptr(const at::Tensor& t) {
  return reinterpret_cast<const T*>(t.data_ptr());
}
template <typename T>
T* mptr(at::Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}

}  // namespace

at::Tensor assemble_embeddings_forward(const at::Tensor& input_ids_, const at::Tensor& prompt_,
                                       const at::Tensor& word_, const at::Tensor& pos_,
                                       const at::Tensor& type_, const at::Tensor& ln_w_,
                                       const at::Tensor& ln_b_, double eps, int64_t offset) {
  const AssembleArgs a = check_assemble_args(input_ids_, prompt_, word_, pos_, type_, ln_w_, ln_b_,
                                             eps, offset, "cpu");
  check_token_ids_cpu(a.input_ids, a.V);
  const Geometry g{a.B, a.L, a.N, a.d, offset, a.shared};
  auto out = at::empty({a.B, a.N + a.L, a.d}, a.prompt.options());
  const int64_t rows = a.B * (a.N + a.L);
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, a.d));
  const int64_t* ids = a.input_ids.data_ptr<int64_t>();
  const auto st = a.prompt.scalar_type();

  auto run = [&](int64_t begin, int64_t end) {
    if (begin >= end) return;
    // One scratch row per chunk (not per row).
    if (st == at::kDouble) {
      std::vector<double> buf(a.d);
      forward_rows_f64(ids, ptr<double>(a.prompt), ptr<double>(a.word), ptr<double>(a.pos),
                       ptr<double>(a.type), ptr<double>(a.ln_w), ptr<double>(a.ln_b),
                       mptr<double>(out), buf.data(), g, eps, begin, end);
    } else if (st == at::kFloat) {
      std::vector<float> buf(4 * a.d);  // the row, then fp32 copies of type, weight, bias
      forward_rows_f32(ids, ptr<float>(a.prompt), ptr<float>(a.word), ptr<float>(a.pos),
                       ptr<float>(a.type), ptr<float>(a.ln_w), ptr<float>(a.ln_b), mptr<float>(out),
                       buf.data(), g, static_cast<float>(eps), begin, end);
    } else {
      std::vector<float> buf(4 * a.d);  // the row, then fp32 copies of type, weight, bias
      forward_rows_bf16(ids, ptr<bf16_t>(a.prompt), ptr<bf16_t>(a.word), ptr<bf16_t>(a.pos),
                        ptr<bf16_t>(a.type), ptr<bf16_t>(a.ln_w), ptr<bf16_t>(a.ln_b),
                        mptr<bf16_t>(out), buf.data(), g, static_cast<float>(eps), begin, end);
    }
  };
  if (a.shared) {
    // Sample 0 first (it holds the shared prompt rows the other samples copy).
    at::parallel_for(0, a.N + a.L, grain, run);
    at::parallel_for(a.N + a.L, rows, grain, run);
  } else {
    at::parallel_for(0, rows, grain, run);
  }
  return out;
}

at::Tensor assemble_embeddings_backward(const at::Tensor& grad_out_, const at::Tensor& prompt_,
                                        const at::Tensor& pos_, const at::Tensor& type_,
                                        const at::Tensor& ln_w_, double eps, int64_t offset,
                                        int64_t seq_len) {
  const AssembleGradArgs a =
      check_assemble_grad_args(grad_out_, prompt_, pos_, type_, ln_w_, offset, seq_len, "cpu");
  const Geometry g{a.B, a.L, a.N, a.d, offset, a.shared};
  auto grad_prompt = at::empty_like(a.prompt);
  const int64_t rows = a.shared ? a.N : a.B * a.N;
  const int64_t grain = a.shared ? 1 : std::max<int64_t>(1, 4096 / std::max<int64_t>(1, a.d));
  const auto st = a.prompt.scalar_type();
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    if (begin >= end) return;
    const size_t gs_len = static_cast<size_t>(a.shared ? (end - begin) * a.d : a.d);
    if (st == at::kDouble) {
      std::vector<double> gs(gs_len), buf(a.d);
      backward_rows_f64(ptr<double>(a.grad_out), ptr<double>(a.prompt), ptr<double>(a.pos),
                        ptr<double>(a.type), ptr<double>(a.ln_w), mptr<double>(grad_prompt),
                        gs.data(), buf.data(), g, eps, begin, end);
    } else if (st == at::kFloat) {
      std::vector<float> gs(gs_len), buf(a.d);
      backward_rows_f32(ptr<float>(a.grad_out), ptr<float>(a.prompt), ptr<float>(a.pos),
                        ptr<float>(a.type), ptr<float>(a.ln_w), mptr<float>(grad_prompt), gs.data(),
                        buf.data(), g, static_cast<float>(eps), begin, end);
    } else {
      std::vector<float> gs(gs_len), buf(a.d);
      backward_rows_bf16(ptr<bf16_t>(a.grad_out), ptr<bf16_t>(a.prompt), ptr<bf16_t>(a.pos),
                         ptr<bf16_t>(a.type), ptr<bf16_t>(a.ln_w), mptr<bf16_t>(grad_prompt),
                         gs.data(), buf.data(), g, static_cast<float>(eps), begin, end);
    }
  });
  return grad_prompt;
}

}  // namespace xpe_cpu

TORCH_LIBRARY_IMPL(xpe_fast, CPU, m) {
  m.impl("assemble_embeddings", &xpe_cpu::assemble_embeddings_forward);
  m.impl("assemble_embeddings_backward", &xpe_cpu::assemble_embeddings_backward);
}
