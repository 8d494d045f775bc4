// The CUDA kernels of the dispatcher ops (declared in csrc/schema.cpp, in xpe_fast._C),
// registered for the CUDA key from the module xpe_fast._cuda, built by setup.py only with a
// CUDA build of torch. Validation is shared with the CPU kernels (checks.h); token ids are
// range-checked on the device before any table is read.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <vector>

#include "cuda/launchers.h"
#include "xpe_fast/checks.h"

namespace {

using xpe_cuda::DType;

DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return DType::f32;
    case at::kDouble:
      return DType::f64;
    case at::kBFloat16:
      return DType::bf16;
    default:
      TORCH_CHECK_TYPE(false, "unsupported dtype ", t.scalar_type());
  }
  return DType::f32;
}

void check_cuda(int err, const char* what) {
  TORCH_CHECK(err == 0, "xpe_fast CUDA kernel ", what,
              " failed to launch: ", cudaGetErrorString(static_cast<cudaError_t>(err)));
}

void* stream() { return at::cuda::getCurrentCUDAStream().stream(); }

at::Tensor assemble_forward(const at::Tensor& input_ids, const at::Tensor& prompt,
                            const at::Tensor& word, const at::Tensor& pos, const at::Tensor& type,
                            const at::Tensor& ln_w, const at::Tensor& ln_b, double eps,
                            int64_t offset) {
  const auto a = xpe_cpu::check_assemble_args(input_ids, prompt, word, pos, type, ln_w, ln_b, eps,
                                              offset, "cuda");
  const c10::cuda::CUDAGuard guard(a.prompt.device());
  auto bad = at::zeros({1}, a.input_ids.options().dtype(at::kInt));
  check_cuda(xpe_cuda::check_token_ids(a.input_ids.data_ptr<int64_t>(), a.input_ids.numel(), a.V,
                                       bad.data_ptr<int>(), stream()),
             "check_token_ids");
  TORCH_CHECK_INDEX(bad.item<int>() == 0, "input_ids contains ids outside [0, ", a.V,
                    ") of word_embeddings");
  auto out = at::empty({a.B, a.N + a.L, a.d}, a.prompt.options());
  check_cuda(
      xpe_cuda::assemble_embeddings_forward(
          dtype_of(a.prompt), a.input_ids.data_ptr<int64_t>(), a.prompt.data_ptr(),
          a.word.data_ptr(), a.pos.data_ptr(), a.type.data_ptr(), a.ln_w.data_ptr(),
          a.ln_b.data_ptr(), out.data_ptr(), a.B, a.L, a.N, a.d, offset, a.shared, eps, stream()),
      "assemble_embeddings_forward");
  return out;
}

at::Tensor assemble_backward(const at::Tensor& grad_out, const at::Tensor& prompt,
                             const at::Tensor& pos, const at::Tensor& type, const at::Tensor& ln_w,
                             double eps, int64_t offset, int64_t seq_len) {
  const auto a =
      xpe_cpu::check_assemble_grad_args(grad_out, prompt, pos, type, ln_w, offset, seq_len, "cuda");
  const c10::cuda::CUDAGuard guard(a.prompt.device());
  auto grad_prompt = at::empty_like(a.prompt);
  check_cuda(xpe_cuda::assemble_embeddings_backward(
                 dtype_of(a.prompt), a.grad_out.data_ptr(), a.prompt.data_ptr(), a.pos.data_ptr(),
                 a.type.data_ptr(), a.ln_w.data_ptr(), grad_prompt.data_ptr(), a.B, a.L, a.N, a.d,
                 offset, a.shared, eps, stream()),
             "assemble_embeddings_backward");
  return grad_prompt;
}

// c = epilogue(a @ b + bias) with a, b any-strided 2-D views.
at::Tensor linear(const at::Tensor& a, const at::Tensor& b, const at::Tensor& bias,
                  const at::Tensor& mask, const at::Tensor& h, int epilogue) {
  auto c = at::empty({a.size(0), b.size(1)}, a.options());
  check_cuda(xpe_cuda::linear(dtype_of(a), a.data_ptr(), a.stride(0), a.stride(1), b.data_ptr(),
                              b.stride(0), b.stride(1), c.data_ptr(), a.size(0), b.size(1),
                              a.size(1), bias.defined() ? bias.data_ptr() : nullptr,
                              mask.defined() ? mask.data_ptr() : nullptr,
                              h.defined() ? h.data_ptr() : nullptr, epilogue, stream()),
             "linear");
  return c;
}

at::Tensor colsum(const at::Tensor& g) {
  auto out = at::empty({g.size(1)}, g.options());
  check_cuda(xpe_cuda::column_sum(dtype_of(g), g.data_ptr(), out.data_ptr(), g.size(0), g.size(1),
                                  stream()),
             "column_sum");
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mlp_forward(
    const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
    const at::Tensor& b2, const at::Tensor& w3, const at::Tensor& b3,
    const c10::optional<at::Tensor>& mask1, const c10::optional<at::Tensor>& mask2) {
  const auto a = xpe_cpu::check_mlp_args(x, w1, b1, w2, b2, w3, b3, "cuda");
  const c10::cuda::CUDAGuard guard(a.x.device());
  const auto dt = a.x.scalar_type();
  const at::Tensor m1 = xpe_cpu::check_mask(mask1, "mask1", a.N, a.h, dt, "cuda");
  const at::Tensor m2 = xpe_cpu::check_mask(mask2, "mask2", a.N, a.h, dt, "cuda");
  const at::Tensor none;
  at::Tensor h1 = linear(a.x, a.w1.t(), a.b1, m1, none, xpe_cuda::kReluMask);
  at::Tensor h2 = linear(h1, a.w2.t(), a.b2, m2, none, xpe_cuda::kReluMask);
  at::Tensor out = linear(h2, a.w3.t(), a.b3, none, none, xpe_cuda::kNone);
  return {out, h1, h2};
}

std::vector<at::Tensor> mlp_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                     const at::Tensor& w1, const at::Tensor& w2,
                                     const at::Tensor& w3, const at::Tensor& h1,
                                     const at::Tensor& h2, const c10::optional<at::Tensor>& mask1,
                                     const c10::optional<at::Tensor>& mask2) {
  const auto a =
      xpe_cpu::check_mlp_backward_args(grad_out, x, w1, w2, w3, h1, h2, mask1, mask2, "cuda");
  const at::Tensor &g = a.g, &xc = a.x, &w1c = a.w1, &w2c = a.w2, &w3c = a.w3, &h1c = a.h1,
                   &h2c = a.h2, &m1 = a.m1, &m2 = a.m2;
  const c10::cuda::CUDAGuard guard(xc.device());
  const at::Tensor none;
  at::Tensor gw3 = linear(g.t(), h2c, none, none, none, xpe_cuda::kNone);
  at::Tensor gb3 = colsum(g);
  at::Tensor g2 = linear(g, w3c, none, m2, h2c, xpe_cuda::kReluGrad);
  at::Tensor gw2 = linear(g2.t(), h1c, none, none, none, xpe_cuda::kNone);
  at::Tensor gb2 = colsum(g2);
  at::Tensor g1 = linear(g2, w2c, none, m1, h1c, xpe_cuda::kReluGrad);
  at::Tensor gw1 = linear(g1.t(), xc, none, none, none, xpe_cuda::kNone);
  at::Tensor gb1 = colsum(g1);
  at::Tensor gx = linear(g1, w1c, none, none, none, xpe_cuda::kNone);
  return {gx, gw1, gb1, gw2, gb2, gw3, gb3};
}

}  // namespace

TORCH_LIBRARY_IMPL(xpe_fast, CUDA, m) {
  m.impl("assemble_embeddings", &assemble_forward);
  m.impl("assemble_embeddings_backward", &assemble_backward);
  m.impl("prompt_encoder_mlp", &mlp_forward);
  m.impl("prompt_encoder_mlp_backward", &mlp_backward);
}

// Importing the module registers the kernels above; it binds nothing itself.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.doc() = "xpe_fast CUDA kernels (registration only)"; }
