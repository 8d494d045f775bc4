// The CPU kernels of the dispatcher ops (csrc/schema.cpp), each registered for the CPU key in
// its own file; the autograd kernels (csrc/autograd.cpp) call them through the dispatcher.
#pragma once

#include <torch/extension.h>

#include <tuple>
#include <vector>

namespace xpe_cpu {

at::Tensor assemble_embeddings_forward(const at::Tensor& input_ids, const at::Tensor& prompt,
                                       const at::Tensor& word_embeddings,
                                       const at::Tensor& position_embeddings,
                                       const at::Tensor& token_type_embedding,
                                       const at::Tensor& ln_weight, const at::Tensor& ln_bias,
                                       double eps, int64_t position_offset);

at::Tensor assemble_embeddings_backward(const at::Tensor& grad_out, const at::Tensor& prompt,
                                        const at::Tensor& position_embeddings,
                                        const at::Tensor& token_type_embedding,
                                        const at::Tensor& ln_weight, double eps,
                                        int64_t position_offset, int64_t seq_len);

std::tuple<at::Tensor, at::Tensor, at::Tensor> prompt_encoder_mlp_forward(
    const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
    const at::Tensor& b2, const at::Tensor& w3, const at::Tensor& b3,
    const c10::optional<at::Tensor>& mask1, const c10::optional<at::Tensor>& mask2);

std::vector<at::Tensor> prompt_encoder_mlp_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                                    const at::Tensor& w1, const at::Tensor& w2,
                                                    const at::Tensor& w3, const at::Tensor& h1,
                                                    const at::Tensor& h2,
                                                    const c10::optional<at::Tensor>& mask1,
                                                    const c10::optional<at::Tensor>& mask2);

// y = x * keep / (1 - p), keep drawn from (seed, offset + element index); the backward is
// the same call on the gradient.
at::Tensor dropout_apply(const at::Tensor& x, double p, int64_t seed, int64_t offset);

// Inference self-attention from the packed QKV projection [B, S, 3 * H * hd] with an
// additive key mask [B, S]; returns the context [B, S, H * hd].
at::Tensor packed_attention_forward(const at::Tensor& qkv,
                                    const c10::optional<at::Tensor>& key_mask, int64_t num_heads,
                                    double scale);
bool packed_attention_supports_head_size(int64_t head_size);

// [y = LayerNorm(x + residual)] (fp32 statistics) and, with bf16_copy and a float32 y, its
// bf16 copy as a second tensor.
std::vector<at::Tensor> residual_layer_norm_forward(const at::Tensor& x, const at::Tensor& residual,
                                                    const at::Tensor& weight,
                                                    const at::Tensor& bias, double eps,
                                                    bool bf16_copy);

}  // namespace xpe_cpu
