// The CUDA kernels of the dispatcher ops (declared in csrc/schema.cpp, in xpe_fast._C),
// registered for the CUDA key from the module xpe_fast._cuda, built by setup.py only with a
// CUDA build of torch. Validation is shared with the CPU kernels (checks.h); token ids are
// range-checked on the device before any table is read.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <tuple>
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

const void* ptr(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

std::tuple<at::Tensor, at::Tensor, at::Tensor> mlp_forward(
    const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
    const at::Tensor& b2, const at::Tensor& w3, const at::Tensor& b3,
    const c10::optional<at::Tensor>& mask1, const c10::optional<at::Tensor>& mask2) {
  const auto a = xpe_cpu::check_mlp_args(x, w1, b1, w2, b2, w3, b3, "cuda");
  const c10::cuda::CUDAGuard guard(a.x.device());
  const auto dt = a.x.scalar_type();
  const at::Tensor m1 = xpe_cpu::check_mask(mask1, "mask1", a.N, a.h, dt, "cuda");
  const at::Tensor m2 = xpe_cpu::check_mask(mask2, "mask2", a.N, a.h, dt, "cuda");
  auto h1 = at::empty({a.N, a.h}, a.x.options());
  auto h2 = at::empty({a.N, a.h}, a.x.options());
  auto out = at::empty({a.N, a.d}, a.x.options());
  check_cuda(xpe_cuda::prompt_encoder_mlp_forward(
                 dtype_of(a.x), a.x.data_ptr(), a.w1.data_ptr(), a.b1.data_ptr(), a.w2.data_ptr(),
                 a.b2.data_ptr(), a.w3.data_ptr(), a.b3.data_ptr(), ptr(m1), ptr(m2), h1.data_ptr(),
                 h2.data_ptr(), out.data_ptr(), a.N, a.d_in, a.h, a.d, stream()),
             "prompt_encoder_mlp_forward");
  return {out, h1, h2};
}

std::vector<at::Tensor> mlp_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                     const at::Tensor& w1, const at::Tensor& w2,
                                     const at::Tensor& w3, const at::Tensor& h1,
                                     const at::Tensor& h2, const c10::optional<at::Tensor>& mask1,
                                     const c10::optional<at::Tensor>& mask2) {
  const auto a =
      xpe_cpu::check_mlp_backward_args(grad_out, x, w1, w2, w3, h1, h2, mask1, mask2, "cuda");
  const c10::cuda::CUDAGuard guard(a.x.device());
  const auto o = a.x.options();
  const int64_t d_in = a.x.size(1);
  auto g1 = at::empty({a.N, a.h}, o), g2 = at::empty({a.N, a.h}, o);
  auto gx = at::empty({a.N, d_in}, o), gw1 = at::empty({a.h, d_in}, o);
  auto gb1 = at::empty({a.h}, o), gw2 = at::empty({a.h, a.h}, o), gb2 = at::empty({a.h}, o);
  auto gw3 = at::empty({a.d, a.h}, o), gb3 = at::empty({a.d}, o);
  check_cuda(
      xpe_cuda::prompt_encoder_mlp_backward(
          dtype_of(a.x), a.g.data_ptr(), a.x.data_ptr(), a.w1.data_ptr(), a.w2.data_ptr(),
          a.w3.data_ptr(), a.h1.data_ptr(), a.h2.data_ptr(), ptr(a.m1), ptr(a.m2), g1.data_ptr(),
          g2.data_ptr(), gx.data_ptr(), gw1.data_ptr(), gb1.data_ptr(), gw2.data_ptr(),
          gb2.data_ptr(), gw3.data_ptr(), gb3.data_ptr(), a.N, d_in, a.h, a.d, stream()),
      "prompt_encoder_mlp_backward");
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
