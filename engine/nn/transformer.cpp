#include "engine/nn/transformer.h"

#include <cmath>

#include "engine/ops.h"

namespace clipcu::nn {

const char* activation_name(Activation a) {
  switch (a) {
    case Activation::QuickGELU: return "quick_gelu";
    case Activation::GELU: return "gelu";
    case Activation::GELUTanh: return "gelu_tanh";
  }
  return "?";
}

Tensor activate(const Tensor& x, Activation a) {
  switch (a) {
    case Activation::QuickGELU: return ops::quick_gelu(x);
    case Activation::GELU: return ops::gelu(x, /*tanh_approx=*/false);
    case Activation::GELUTanh: return ops::gelu(x, /*tanh_approx=*/true);
  }
  CLIPCU_FAIL("activate: unknown activation");
}

Tensor split_heads(const Tensor& x, int64_t H) {
  CLIPCU_CHECK(x.dim() == 3 && x.size(2) % H == 0,
               "split_heads: expected [B, T, H*D] with H = " << H << ", got " << shape_str(x.shape()));
  const int64_t B = x.size(0), T = x.size(1), D = x.size(2) / H;
  return ops::permute(ops::reshape(x, {B, T, H, D}), {0, 2, 1, 3});
}

// ---------------------------------------------------------------- MultiheadAttention
MultiheadAttention::MultiheadAttention(int64_t W_, int64_t H_) : W(W_), H(H_), out_proj(W_, W_) {
  CLIPCU_CHECK(H > 0 && W % H == 0, "MultiheadAttention: width " << W << " is not divisible by " << H << " heads");
  in_proj_weight = Tensor::zeros({3 * W, W});
  in_proj_bias = Tensor::zeros({3 * W});
  register_parameter("in_proj_weight", &in_proj_weight);
  register_parameter("in_proj_bias", &in_proj_bias);
  register_module("out_proj", &out_proj);
}

Tensor MultiheadAttention::forward(const Tensor& x, bool causal) {
  ModuleScope scope(*this);
  check_shape(x, {-1, -1, W}, "MultiheadAttention", "x");
  // One GEMM for q, k and v together; the rows of in_proj_weight are [W_q; W_k; W_v]. The head
  // layouts move in one copy each way (not three slices and three permutes, then a permute).
  Tensor qkv = ops::linear(x, in_proj_weight, in_proj_bias);  // [B, T, 3W]
  const std::vector<Tensor> heads = ops::split_qkv_heads(qkv, H);  // q, k, v: [B, H, T, D]
  Tensor o = ops::attention(heads[0], heads[1], heads[2], causal);  // [B, H, T, D], scaled by 1/sqrt(D)
  return out_proj.forward(ops::merge_heads(o));                     // [B, T, W]
}

void MultiheadAttention::reset_own_parameters(Rng& rng) {
  double bound = std::sqrt(6.0 / double(W + 3 * W));  // xavier: fan_in W, fan_out 3W
  init_uniform(in_proj_weight, rng, -bound, bound);
  init_constant(in_proj_bias, 0.0);
  init_constant(out_proj.bias, 0.0);
}

// ---------------------------------------------------------------- MLP
MLP::MLP(int64_t W, int64_t hidden, Activation act_) : act(act_), c_fc(W, hidden), c_proj(hidden, W) {
  register_module("c_fc", &c_fc);
  register_module("c_proj", &c_proj);
}

Tensor MLP::forward(const Tensor& x) {
  ModuleScope scope(*this);
  return c_proj.forward(activate(c_fc.forward(x), act));
}

// ---------------------------------------------------------------- ResidualAttentionBlock
ResidualAttentionBlock::ResidualAttentionBlock(int64_t W, int64_t H, int64_t mlp_hidden, Activation act,
                                               double ln_eps)
    : ln_1(W, ln_eps), attn(W, H), ln_2(W, ln_eps), mlp(W, mlp_hidden, act) {
  register_module("ln_1", &ln_1);
  register_module("attn", &attn);
  register_module("ln_2", &ln_2);
  register_module("mlp", &mlp);
}

Tensor ResidualAttentionBlock::forward(const Tensor& x, bool causal) {
  ModuleScope scope(*this);
  Tensor h = ops::add(x, attn.forward(ln_1.forward(x), causal));
  return ops::add(h, mlp.forward(ln_2.forward(h)));
}

// ---------------------------------------------------------------- Transformer
Transformer::Transformer(int64_t W_, int64_t layers_, int64_t H_, int64_t mlp_hidden, Activation act, double ln_eps)
    : W(W_), layers(layers_), H(H_) {
  CLIPCU_CHECK(layers >= 0, "Transformer: layers must be >= 0, got " << layers);
  for (int64_t i = 0; i < layers; ++i) {
    resblocks.push_back(std::make_unique<ResidualAttentionBlock>(W, H, mlp_hidden, act, ln_eps));
    register_module("resblocks." + std::to_string(i), resblocks.back().get());
  }
}

Tensor Transformer::forward(const Tensor& x, bool causal) {
  ModuleScope scope(*this);
  Tensor h = x;
  for (auto& block : resblocks) h = block->forward(h, causal);
  return h;
}

}  // namespace clipcu::nn
