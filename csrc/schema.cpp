// The dispatcher ops of xpe_fast, declared once. Kernels register per dispatch key: CPU in
// csrc/cpu/<op>.cpp, CUDA in csrc/cuda/bindings_cuda.cpp (the _cuda module), Triton from
// Python (xpe_fast/ops/_backend.py); autograd once for every device in csrc/autograd.cpp;
// fake (meta) kernels for torch.compile in Python beside each op's wrapper.
#include <torch/library.h>

TORCH_LIBRARY(xpe_fast, m) {
  // Returns (out, h1, h2): the two hidden activations are kept for the backward.
  m.def(
      "prompt_encoder_mlp(Tensor x, Tensor w1, Tensor b1, Tensor w2, Tensor b2, Tensor w3, "
      "Tensor b3, Tensor? mask1=None, Tensor? mask2=None) -> (Tensor, Tensor, Tensor)");
  // Returns [grad_x, grad_w1, grad_b1, grad_w2, grad_b2, grad_w3, grad_b3].
  m.def(
      "prompt_encoder_mlp_backward(Tensor grad_out, Tensor x, Tensor w1, Tensor w2, Tensor w3, "
      "Tensor h1, Tensor h2, Tensor? mask1=None, Tensor? mask2=None) -> Tensor[]");
  m.def(
      "assemble_embeddings(Tensor input_ids, Tensor prompt, Tensor word_embeddings, "
      "Tensor position_embeddings, Tensor token_type_embedding, Tensor ln_weight, "
      "Tensor ln_bias, float eps, int position_offset) -> Tensor");
  // The prompt's gradient (the only input that gets one).
  m.def(
      "assemble_embeddings_backward(Tensor grad_out, Tensor prompt, Tensor position_embeddings, "
      "Tensor token_type_embedding, Tensor ln_weight, float eps, int position_offset, "
      "int seq_len) -> Tensor");
  // x * keep / (1 - p), keep drawn from (seed, offset + element index); its backward is the
  // same op on the gradient.
  m.def("dropout(Tensor x, float p, int seed, int offset=0) -> Tensor");
  // Inference only (no autograd).
  m.def("packed_attention(Tensor qkv, Tensor? key_mask, int num_heads, float scale) -> Tensor");
  // [y] or [y, y in bf16].
  m.def(
      "residual_layer_norm(Tensor x, Tensor residual, Tensor weight, Tensor bias, float eps, "
      "bool bf16_copy=False) -> Tensor[]");
}
