// The pre-norm transformer of CLIP (both towers), laid out as OpenAI's clip/model.py names it:
//
//   Transformer            resblocks.{i}
//   ResidualAttentionBlock x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
//   MultiheadAttention     in_proj_weight [3W, W], in_proj_bias [3W] (q, k, v stacked in that
//                          order, as torch.nn.MultiheadAttention stores them), out_proj (Linear)
//   MLP                    c_fc (W -> hidden), activation, c_proj (hidden -> W)
//
// Activations are [B, T, W] (batch first; OpenAI runs [T, B, W], the arithmetic is the same).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "engine/nn/layers.h"

namespace clipcu::nn {

// The MLP's nonlinearity: OpenAI's CLIP uses QuickGELU (x * sigmoid(1.702 x)); open_clip's
// own models use the exact (erf) GELU; some HuggingFace checkpoints the tanh approximation.
enum class Activation { QuickGELU, GELU, GELUTanh };
const char* activation_name(Activation a);  // "quick_gelu", "gelu", "gelu_tanh"
Tensor activate(const Tensor& x, Activation a);

// [B, T, H*D] -> [B, H, T, D] (the layout ops::attention takes) for a single projection
// (AttentionPool2d's q, k, v); a fused qkv projection uses ops::split_qkv_heads, and the way
// back is ops::merge_heads.
Tensor split_heads(const Tensor& x, int64_t H);

class MultiheadAttention : public Module {
 public:
  MultiheadAttention(int64_t W, int64_t H);
  // Self-attention over x [B, T, W] -> [B, T, W]; causal masks later keys (the text tower).
  Tensor forward(const Tensor& x, bool causal);
  int64_t W, H;
  Tensor in_proj_weight, in_proj_bias;  // [3W, W], [3W]
  Linear out_proj;

 protected:
  // torch.nn.MultiheadAttention: xavier-uniform in_proj_weight, zero biases.
  void reset_own_parameters(Rng& rng) override;
};

class MLP : public Module {
 public:
  MLP(int64_t W, int64_t hidden, Activation act);
  Tensor forward(const Tensor& x);  // [..., W] -> [..., W]
  Activation act;
  Linear c_fc, c_proj;
};

class ResidualAttentionBlock : public Module {
 public:
  ResidualAttentionBlock(int64_t W, int64_t H, int64_t mlp_hidden, Activation act, double ln_eps);
  Tensor forward(const Tensor& x, bool causal);  // [B, T, W] -> [B, T, W]
  LayerNorm ln_1;
  MultiheadAttention attn;
  LayerNorm ln_2;
  MLP mlp;
};

class Transformer : public Module {
 public:
  Transformer(int64_t W, int64_t layers, int64_t H, int64_t mlp_hidden, Activation act, double ln_eps);
  Tensor forward(const Tensor& x, bool causal);  // [B, T, W] -> [B, T, W]
  int64_t W, layers, H;
  std::vector<std::unique_ptr<ResidualAttentionBlock>> resblocks;
};

}  // namespace clipcu::nn
