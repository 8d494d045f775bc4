// Argument validation shared by the CPU and CUDA entry points. Every failure is a
// c10::Error subclass that pybind11 turns into a Python exception naming the argument:
// TypeError for dtypes, ValueError for shapes/devices/values, IndexError for ids out of range.
#pragma once

#include <torch/extension.h>

#include <string>

namespace xpe_cpu {

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16;
}

inline void check_device(const at::Tensor& t, const char* name, const char* device) {
  const bool want_cuda = std::string(device) == "cuda";
  TORCH_CHECK_VALUE(want_cuda ? t.is_cuda() : t.device().is_cpu(), name, " must be a ", device,
                    " tensor, got one on ", t.device().str());
}

inline at::Tensor check_float(const at::Tensor& t, const char* name, at::ScalarType dtype,
                              const char* device) {
  TORCH_CHECK_VALUE(t.defined(), name, " is undefined");
  check_device(t, name, device);
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, name, " must have dtype ", dtype,
                   " (the prompt's dtype), got ", t.scalar_type());
  return t.contiguous();
}

struct AssembleArgs {
  at::Tensor input_ids, prompt, word, pos, type, ln_w, ln_b;
  int64_t B, L, N, d, V, P;
  bool shared;
};

inline AssembleArgs check_assemble_args(const at::Tensor& input_ids, const at::Tensor& prompt,
                                        const at::Tensor& word, const at::Tensor& pos,
                                        const at::Tensor& type, const at::Tensor& ln_w,
                                        const at::Tensor& ln_b, double eps, int64_t offset,
                                        const char* device) {
  AssembleArgs a;
  TORCH_CHECK_VALUE(prompt.defined(), "prompt is undefined");
  check_device(prompt, "prompt", device);
  TORCH_CHECK_TYPE(is_supported_float(prompt.scalar_type()),
                   "prompt must be float32, float64 or bfloat16, got ", prompt.scalar_type());
  const auto dt = prompt.scalar_type();
  TORCH_CHECK_VALUE(input_ids.defined(), "input_ids is undefined");
  check_device(input_ids, "input_ids", device);
  TORCH_CHECK_TYPE(input_ids.scalar_type() == at::kLong, "input_ids must be int64, got ",
                   input_ids.scalar_type());
  TORCH_CHECK_VALUE(input_ids.dim() == 2, "input_ids must be [B, L], got ", input_ids.sizes());
  a.B = input_ids.size(0);
  a.L = input_ids.size(1);
  TORCH_CHECK_VALUE(a.B > 0, "input_ids is an empty batch (B = 0)");
  TORCH_CHECK_VALUE(a.L > 0, "input_ids has no tokens (L = 0)");
  TORCH_CHECK_VALUE(prompt.dim() == 2 || prompt.dim() == 3,
                    "prompt must be [N, d] or [B, N, d], got ", prompt.sizes());
  a.shared = prompt.dim() == 2;
  if (!a.shared)
    TORCH_CHECK_VALUE(prompt.size(0) == a.B, "prompt has batch size ", prompt.size(0),
                      " but input_ids has ", a.B);
  a.N = prompt.size(-2);
  a.d = prompt.size(-1);
  TORCH_CHECK_VALUE(a.N > 0, "prompt has no rows (N = 0)");
  TORCH_CHECK_VALUE(a.d > 0, "prompt has width 0");
  TORCH_CHECK_VALUE(word.dim() == 2 && word.size(1) == a.d,
                    "word_embeddings must be [V, d] with d = ", a.d, ", got ", word.sizes());
  TORCH_CHECK_VALUE(pos.dim() == 2 && pos.size(1) == a.d,
                    "position_embeddings must be [P, d] with d = ", a.d, ", got ", pos.sizes());
  TORCH_CHECK_VALUE(type.dim() == 1 && type.size(0) == a.d,
                    "token_type_embedding must be [d] with d = ", a.d, ", got ", type.sizes());
  TORCH_CHECK_VALUE(ln_w.dim() == 1 && ln_w.size(0) == a.d, "ln_weight must be [d] with d = ", a.d,
                    ", got ", ln_w.sizes());
  TORCH_CHECK_VALUE(ln_b.dim() == 1 && ln_b.size(0) == a.d, "ln_bias must be [d] with d = ", a.d,
                    ", got ", ln_b.sizes());
  TORCH_CHECK_VALUE(eps > 0, "eps must be > 0, got ", eps);
  a.V = word.size(0);
  a.P = pos.size(0);
  TORCH_CHECK_VALUE(a.V > 0, "word_embeddings has no rows");
  TORCH_CHECK_VALUE(offset >= 0, "position_offset must be >= 0, got ", offset);
  TORCH_CHECK_VALUE(offset + a.N + a.L <= a.P, "position_embeddings has ", a.P,
                    " rows but position_offset + N + L = ", offset, " + ", a.N, " + ", a.L,
                    " positions are needed");
  a.prompt = prompt.contiguous();
  a.input_ids = input_ids.contiguous();
  a.word = check_float(word, "word_embeddings", dt, device);
  a.pos = check_float(pos, "position_embeddings", dt, device);
  a.type = check_float(type, "token_type_embedding", dt, device);
  a.ln_w = check_float(ln_w, "ln_weight", dt, device);
  a.ln_b = check_float(ln_b, "ln_bias", dt, device);
  return a;
}

// Range check of token ids before any table is read (the kernel never reads out of bounds).
inline void check_token_ids_cpu(const at::Tensor& ids, int64_t V) {
  const int64_t* p = ids.data_ptr<int64_t>();
  const int64_t n = ids.numel();
  int64_t bad = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (p[i] < 0 || p[i] >= V) {
      bad = i;
      break;
    }
  }
  TORCH_CHECK_INDEX(bad < 0, "input_ids contains id ", bad < 0 ? 0 : p[bad], " at flat index ", bad,
                    ", outside [0, ", V, ") of word_embeddings");
}

struct AssembleGradArgs {
  at::Tensor grad_out, prompt, pos, type, ln_w;
  int64_t B, L, N, d;
  bool shared;
};

inline AssembleGradArgs check_assemble_grad_args(const at::Tensor& grad_out,
                                                 const at::Tensor& prompt, const at::Tensor& pos,
                                                 const at::Tensor& type, const at::Tensor& ln_w,
                                                 int64_t offset, int64_t seq_len,
                                                 const char* device) {
  AssembleGradArgs a;
  TORCH_CHECK_VALUE(prompt.defined() && (prompt.dim() == 2 || prompt.dim() == 3),
                    "prompt must be [N, d] or [B, N, d]");
  check_device(prompt, "prompt", device);
  TORCH_CHECK_TYPE(is_supported_float(prompt.scalar_type()),
                   "prompt must be float32, float64 or bfloat16, got ", prompt.scalar_type());
  const auto dt = prompt.scalar_type();
  a.shared = prompt.dim() == 2;
  a.N = prompt.size(-2);
  a.d = prompt.size(-1);
  a.L = seq_len;
  TORCH_CHECK_VALUE(a.N > 0 && a.d > 0 && a.L > 0, "prompt and the sequence must be non-empty");
  TORCH_CHECK_VALUE(grad_out.dim() == 3 && grad_out.size(1) == a.N + a.L && grad_out.size(2) == a.d,
                    "grad_out must be [B, N + L, d] = [B, ", a.N + a.L, ", ", a.d, "], got ",
                    grad_out.sizes());
  a.B = grad_out.size(0);
  TORCH_CHECK_VALUE(a.B > 0, "grad_out is an empty batch");
  if (!a.shared)
    TORCH_CHECK_VALUE(prompt.size(0) == a.B, "prompt has batch size ", prompt.size(0),
                      " but grad_out has ", a.B);
  TORCH_CHECK_VALUE(
      pos.dim() == 2 && pos.size(1) == a.d && offset >= 0 && offset + a.N <= pos.size(0),
      "position_embeddings must be [P, d] with P >= position_offset + N");
  TORCH_CHECK_VALUE(type.dim() == 1 && type.size(0) == a.d, "token_type_embedding must be [d]");
  TORCH_CHECK_VALUE(ln_w.dim() == 1 && ln_w.size(0) == a.d, "ln_weight must be [d]");
  a.prompt = prompt.contiguous();
  a.grad_out = check_float(grad_out, "grad_out", dt, device);
  a.pos = check_float(pos, "position_embeddings", dt, device);
  a.type = check_float(type, "token_type_embedding", dt, device);
  a.ln_w = check_float(ln_w, "ln_weight", dt, device);
  return a;
}

// ---- prompt-encoder MLP -------------------------------------------------------------
struct MlpArgs {
  at::Tensor x, w1, b1, w2, b2, w3, b3;
  int64_t N, d_in, h, d;
};

inline void check_linear(const at::Tensor& w, const at::Tensor& b, const char* wn, const char* bn,
                         int64_t in, at::ScalarType dt, const char* device) {
  TORCH_CHECK_VALUE(w.defined() && w.dim() == 2, wn, " must be a 2-D [out, in] weight");
  check_device(w, wn, device);
  TORCH_CHECK_TYPE(w.scalar_type() == dt, wn, " must have dtype ", dt, " (x's dtype), got ",
                   w.scalar_type());
  TORCH_CHECK_VALUE(w.size(1) == in, wn, " must have ", in, " input columns, got ", w.sizes());
  TORCH_CHECK_VALUE(b.defined() && b.dim() == 1 && b.size(0) == w.size(0), bn, " must be [",
                    w.size(0), "], got ", b.defined() ? b.sizes() : at::IntArrayRef{});
  check_device(b, bn, device);
  TORCH_CHECK_TYPE(b.scalar_type() == dt, bn, " must have dtype ", dt, ", got ", b.scalar_type());
}

inline MlpArgs check_mlp_args(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1,
                              const at::Tensor& w2, const at::Tensor& b2, const at::Tensor& w3,
                              const at::Tensor& b3, const char* device) {
  MlpArgs a;
  TORCH_CHECK_VALUE(x.defined() && x.dim() == 2, "x must be [N, d_in], got ",
                    x.defined() ? x.sizes() : at::IntArrayRef{});
  check_device(x, "x", device);
  TORCH_CHECK_TYPE(is_supported_float(x.scalar_type()),
                   "x must be float32, float64 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.size(0) > 0 && x.size(1) > 0, "x must be non-empty, got ", x.sizes());
  const auto dt = x.scalar_type();
  a.N = x.size(0);
  a.d_in = x.size(1);
  check_linear(w1, b1, "w1", "b1", a.d_in, dt, device);
  a.h = w1.size(0);
  check_linear(w2, b2, "w2", "b2", a.h, dt, device);
  TORCH_CHECK_VALUE(w2.size(0) == a.h, "w2 must be [h, h] = [", a.h, ", ", a.h, "], got ",
                    w2.sizes());
  check_linear(w3, b3, "w3", "b3", a.h, dt, device);
  a.d = w3.size(0);
  a.x = x.contiguous();
  a.w1 = w1.contiguous();
  a.b1 = b1.contiguous();
  a.w2 = w2.contiguous();
  a.b2 = b2.contiguous();
  a.w3 = w3.contiguous();
  a.b3 = b3.contiguous();
  return a;
}

inline at::Tensor check_mask(const c10::optional<at::Tensor>& m, const char* name, int64_t N,
                             int64_t h, at::ScalarType dt, const char* device) {
  if (!m.has_value() || !m->defined()) return at::Tensor();
  TORCH_CHECK_VALUE(m->dim() == 2 && m->size(0) == N && m->size(1) == h, name, " must be [", N,
                    ", ", h, "], got ", m->sizes());
  return check_float(*m, name, dt, device);
}

// The backward's inputs, checked once for every device: the same checks on the CPU and CUDA.
struct MlpBackwardArgs {
  at::Tensor g, x, w1, w2, w3, h1, h2, m1, m2;
  int64_t N, h, d;
};

inline MlpBackwardArgs check_mlp_backward_args(const at::Tensor& grad_out, const at::Tensor& x,
                                               const at::Tensor& w1, const at::Tensor& w2,
                                               const at::Tensor& w3, const at::Tensor& h1,
                                               const at::Tensor& h2,
                                               const c10::optional<at::Tensor>& mask1,
                                               const c10::optional<at::Tensor>& mask2,
                                               const char* device) {
  TORCH_CHECK_VALUE(x.dim() == 2 && w1.dim() == 2 && w2.dim() == 2 && w3.dim() == 2,
                    "x and the weights must be 2-D");
  const auto dt = x.scalar_type();
  TORCH_CHECK_TYPE(is_supported_float(dt), "x must be float32, float64 or bfloat16");
  MlpBackwardArgs a;
  a.N = x.size(0);
  a.h = w1.size(0);
  a.d = w3.size(0);
  TORCH_CHECK_VALUE(grad_out.dim() == 2 && grad_out.size(0) == a.N && grad_out.size(1) == a.d,
                    "grad_out must be [", a.N, ", ", a.d, "], got ", grad_out.sizes());
  TORCH_CHECK_VALUE(
      h1.dim() == 2 && h1.size(0) == a.N && h1.size(1) == a.h && h2.sizes() == h1.sizes(),
      "saved activations must be [N, h]");
  a.g = check_float(grad_out, "grad_out", dt, device);
  a.x = check_float(x, "x", dt, device);
  a.w1 = check_float(w1, "w1", dt, device);
  a.w2 = check_float(w2, "w2", dt, device);
  a.w3 = check_float(w3, "w3", dt, device);
  a.h1 = check_float(h1, "h1", dt, device);
  a.h2 = check_float(h2, "h2", dt, device);
  a.m1 = check_mask(mask1, "mask1", a.N, a.h, dt, device);
  a.m2 = check_mask(mask2, "mask2", a.N, a.h, dt, device);
  return a;
}

}  // namespace xpe_cpu
