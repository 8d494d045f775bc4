// Autograd of the differentiable ops, registered once for every device (the Autograd alias
// key): each forward re-dispatches below autograd to the device's kernel (C++ CPU, CUDA, or
// the Triton kernel registered from Python) and each backward calls the op's backward op
// through the dispatcher, so torch.profiler and torch.compile see the ops by name.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = std::optional<Tensor>;

c10::TypedOperatorHandle<std::tuple<Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
    const Tensor&, const OptTensor&, const OptTensor&)>
mlp_op() {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("xpe_fast::prompt_encoder_mlp", "")
          .typed<std::tuple<Tensor, Tensor, Tensor>(
              const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
              const Tensor&, const Tensor&, const OptTensor&, const OptTensor&)>();
  return op;
}

c10::TypedOperatorHandle<std::vector<Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                             const Tensor&, const Tensor&, const Tensor&,
                                             const Tensor&, const OptTensor&, const OptTensor&)>
mlp_backward_op() {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("xpe_fast::prompt_encoder_mlp_backward", "")
          .typed<std::vector<Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                     const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
                                     const OptTensor&)>();
  return op;
}

c10::TypedOperatorHandle<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                const Tensor&, const Tensor&, const Tensor&, double, int64_t)>
assemble_op() {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("xpe_fast::assemble_embeddings", "")
          .typed<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                        const Tensor&, const Tensor&, double, int64_t)>();
  return op;
}

c10::TypedOperatorHandle<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                const Tensor&, double, int64_t, int64_t)>
assemble_backward_op() {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("xpe_fast::assemble_embeddings_backward", "")
          .typed<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                        double, int64_t, int64_t)>();
  return op;
}

c10::TypedOperatorHandle<Tensor(const Tensor&, double, int64_t, int64_t)> dropout_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("xpe_fast::dropout", "")
                             .typed<Tensor(const Tensor&, double, int64_t, int64_t)>();
  return op;
}

OptTensor maybe(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

struct MlpFunction : public torch::autograd::Function<MlpFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& w1,
                               const Tensor& b1, const Tensor& w2, const Tensor& b2,
                               const Tensor& w3, const Tensor& b3, const OptTensor& mask1,
                               const OptTensor& mask2) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [out, h1, h2] = mlp_op().call(x, w1, b1, w2, b2, w3, b3, mask1, mask2);
    ctx->save_for_backward(
        {x, w1, w2, w3, h1, h2, mask1.value_or(Tensor()), mask2.value_or(Tensor())});
    // h1, h2 are outputs only so that backward can reuse them.
    ctx->mark_non_differentiable({h1, h2});
    return {out, h1, h2};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    variable_list g(9);
    if (!grad[0].defined()) return g;
    const auto s = ctx->get_saved_variables();
    auto r = mlp_backward_op().call(grad[0].contiguous(), s[0], s[1], s[2], s[3], s[4], s[5],
                                    maybe(s[6]), maybe(s[7]));
    for (size_t i = 0; i < r.size() && i < 7; ++i)
      if (ctx->needs_input_grad(i)) g[i] = r[i];
    return g;
  }
};

std::tuple<Tensor, Tensor, Tensor> mlp_autograd(const Tensor& x, const Tensor& w1, const Tensor& b1,
                                                const Tensor& w2, const Tensor& b2,
                                                const Tensor& w3, const Tensor& b3,
                                                const OptTensor& mask1, const OptTensor& mask2) {
  auto r = MlpFunction::apply(x, w1, b1, w2, b2, w3, b3, mask1, mask2);
  return {r[0], r[1], r[2]};
}

struct AssembleFunction : public torch::autograd::Function<AssembleFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& input_ids, const Tensor& prompt,
                        const Tensor& word, const Tensor& pos, const Tensor& type,
                        const Tensor& ln_w, const Tensor& ln_b, double eps, int64_t offset) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto out = assemble_op().call(input_ids, prompt, word, pos, type, ln_w, ln_b, eps, offset);
    ctx->save_for_backward({prompt, pos, type, ln_w});
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["offset"] = offset;
    ctx->saved_data["seq_len"] = input_ids.size(1);
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    variable_list g(9);
    if (grad[0].defined() && ctx->needs_input_grad(1)) {
      const auto s = ctx->get_saved_variables();
      g[1] = assemble_backward_op().call(
          grad[0].contiguous(), s[0], s[1], s[2], s[3], ctx->saved_data["eps"].toDouble(),
          ctx->saved_data["offset"].toInt(), ctx->saved_data["seq_len"].toInt());
    }
    return g;
  }
};

Tensor assemble_autograd(const Tensor& input_ids, const Tensor& prompt, const Tensor& word,
                         const Tensor& pos, const Tensor& type, const Tensor& ln_w,
                         const Tensor& ln_b, double eps, int64_t offset) {
  // Only the prompt is trained: a gradient asked of a frozen table would silently be zero.
  const char* names[] = {"word_embeddings", "position_embeddings", "token_type_embedding",
                         "ln_weight", "ln_bias"};
  const Tensor* frozen[] = {&word, &pos, &type, &ln_w, &ln_b};
  if (at::GradMode::is_enabled())
    for (int i = 0; i < 5; ++i)
      TORCH_CHECK_VALUE(!frozen[i]->requires_grad(),
                        "assemble_embeddings computes the gradient of the prompt only, but ",
                        names[i],
                        " requires grad: freeze or detach it, or use "
                        "backend='reference'");
  return AssembleFunction::apply(input_ids, prompt, word, pos, type, ln_w, ln_b, eps, offset);
}

struct DropoutFunction : public torch::autograd::Function<DropoutFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, double p, int64_t seed,
                        int64_t offset) {
    at::AutoDispatchBelowADInplaceOrView below;
    ctx->saved_data["p"] = p;
    ctx->saved_data["seed"] = seed;
    ctx->saved_data["offset"] = offset;
    return dropout_op().call(x, p, seed, offset);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    // y = x * m / (1 - p), so dx = g * m / (1 - p): the same op with the same seed.
    if (!grad[0].defined()) return {Tensor(), Tensor(), Tensor(), Tensor()};
    return {dropout_op().call(grad[0].contiguous(), ctx->saved_data["p"].toDouble(),
                              ctx->saved_data["seed"].toInt(), ctx->saved_data["offset"].toInt()),
            Tensor(), Tensor(), Tensor()};
  }
};

Tensor dropout_autograd(const Tensor& x, double p, int64_t seed, int64_t offset) {
  return DropoutFunction::apply(x, p, seed, offset);
}

}  // namespace

TORCH_LIBRARY_IMPL(xpe_fast, Autograd, m) {
  m.impl("prompt_encoder_mlp", &mlp_autograd);
  m.impl("assemble_embeddings", &assemble_autograd);
  m.impl("dropout", &dropout_autograd);
}
