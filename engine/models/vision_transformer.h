// OpenAI's VisionTransformer (clip/model.py), parameter names as in its state dict:
//
//   conv1                 patch embedding: a P x P conv with stride P and no bias, [W, 3, P, P]
//   class_embedding       [W]: a learned token prepended to the G*G patch tokens
//   positional_embedding  [G*G + 1, W]
//   ln_pre                LayerNorm before the transformer
//   transformer           pre-norm residual attention blocks (engine/nn/transformer.h)
//   ln_post               LayerNorm of the class token's output
//   proj                  [W, E]: features = ln_post(x[:, 0]) @ proj
#pragma once
#include "engine/models/config.h"
#include "engine/models/vision_tower.h"
#include "engine/nn/layers.h"
#include "engine/nn/transformer.h"

namespace clipcu::models {

class VisionTransformer : public VisionTower {
 public:
  VisionTransformer(const VisionConfig& cfg, int64_t embed_dim);
  Tensor forward(const Tensor& images) override;  // [B, 3, R, R] -> [B, E]
  int64_t image_size() const override { return R; }

  int64_t R, P, G, W, E;  // image side, patch side, patches per side, width, embedding width
  nn::Conv2d conv1;
  Tensor class_embedding;       // [W]
  Tensor positional_embedding;  // [G*G + 1, W]
  nn::LayerNorm ln_pre;
  nn::Transformer transformer;
  nn::LayerNorm ln_post;
  Tensor proj;                  // [W, E]

 protected:
  // OpenAI: class and positional embeddings and proj ~ N(0, W^-1/2); the rest PyTorch's defaults.
  void reset_own_parameters(Rng& rng) override;
};

}  // namespace clipcu::models
