// CLIP's text tower (CLIP.encode_text in OpenAI's clip/model.py). OpenAI keeps these
// parameters at the top level of the state dict, so this module has no name of its own:
//
//   token_embedding       Embedding [V, W]
//   positional_embedding  [T, W] (T = context_length)
//   transformer           pre-norm residual attention blocks with a causal mask
//   ln_final              LayerNorm
//   text_projection       [W, E]: features = ln_final(x[b, eot_b]) @ text_projection
//
// The pooled position eot_b is the end-of-text token of row b: OpenAI takes the argmax of the
// token ids (the end token has the highest id of CLIP's vocabulary); HuggingFace checkpoints
// with a modern eos_token_id take the first position holding that id (TextConfig::eos_id).
#pragma once
#include "engine/models/config.h"
#include "engine/nn/layers.h"
#include "engine/nn/transformer.h"

namespace clipcu::models {

class TextTransformer : public nn::Module {
 public:
  TextTransformer(const TextConfig& cfg, int64_t embed_dim);
  // ids [B, T] (I32/I64, T <= context_length) -> [B, E].
  Tensor forward(const Tensor& ids);
  // The pooled position of each row (host computation on the ids): [B] I64.
  Tensor pool_positions(const Tensor& ids) const;

  int64_t T, V, W, E, eos_id;
  nn::Embedding token_embedding;
  Tensor positional_embedding;  // [T, W]
  nn::Transformer transformer;
  nn::LayerNorm ln_final;
  Tensor text_projection;       // [W, E]

 protected:
  // OpenAI's initialize_parameters: token embedding N(0, 0.02), positional N(0, 0.01), the
  // blocks' attention and MLP weights with depth-scaled stds, text_projection N(0, W^-1/2).
  void reset_own_parameters(Rng& rng) override;
};

}  // namespace clipcu::models
