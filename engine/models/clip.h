// CLIP: an image tower and a text tower mapped into one E-dimensional space, and a learnable
// log logit scale (OpenAI's clip/model.py CLIP; state-dict names as OpenAI and open_clip save
// them: "visual.*" for the image tower, the text tower at the top level, "logit_scale").
//
//   image_features = visual(images)          [N, E]   (VisionTransformer or ModifiedResNet)
//   text_features  = text(token ids)         [M, E]
//   logits_per_image = exp(logit_scale) * normalize(image_features) normalize(text_features)^T
//
// Training feeds the unnormalized features to ops::clip_loss (normalization, scaled logits and
// the symmetric cross entropy in one op, with the log-scale's gradient): see loss().
#pragma once
#include <memory>

#include "engine/models/config.h"
#include "engine/models/text_transformer.h"
#include "engine/models/vision_tower.h"
#include "engine/ops.h"

namespace clipcu::models {

class CLIP : public nn::Module {
 public:
  // Builds the towers the config describes with PyTorch's constant defaults (LayerNorm gains 1,
  // everything else 0); call initialize_parameters() to train from scratch, or load weights.
  explicit CLIP(const ModelConfig& cfg);

  // Inputs may live anywhere: they are brought to the model's device, and images converted to
  // the model's floating type (nn::to_model_input); features come back on the model's device,
  // in its type. On the CPU nothing is copied or converted.
  Tensor encode_image(const Tensor& images);  // [N, 3, R, R] (normalized) -> [N, E]
  Tensor encode_text(const Tensor& ids);      // [M, T] token ids -> [M, E]
  // exp(logit_scale) * normalize(image) normalize(text)^T -> [N, M]. The scale enters as a
  // constant here (inference); training gets its gradient through loss().
  Tensor logits_per_image(const Tensor& image_features, const Tensor& text_features) const;
  // The symmetric contrastive loss of a batch of matching pairs (row i of both), with the
  // logits; gradients flow to both towers and to logit_scale.
  ops::ClipLossOut loss(const Tensor& image_features, const Tensor& text_features) const;

  // OpenAI's initialize_parameters with the engine's seeded generator: PyTorch's defaults for
  // every layer, then CLIP's own choices (text tower, attention pool, zero bn3 gains,
  // logit_scale = init_logit_scale). Every parameter draws from a stream forked by its name.
  void initialize_parameters(Rng& rng) { reset_parameters(rng); }

  const ModelConfig& config() const { return cfg_; }
  VisionTower& visual() { return *visual_; }
  TextTransformer& text() { return text_; }

  Tensor logit_scale;  // [] (a 0-d tensor, as in OpenAI's state dict)

 protected:
  void reset_own_parameters(Rng& rng) override;

 private:
  ModelConfig cfg_;
  std::unique_ptr<VisionTower> visual_;
  TextTransformer text_;
};

// A CLIP built from a config and initialized from `seed` (training from scratch).
std::unique_ptr<CLIP> make_clip(const ModelConfig& cfg, uint64_t seed);

}  // namespace clipcu::models
