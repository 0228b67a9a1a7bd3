#include "engine/models/clip.h"

#include <cmath>

#include "engine/models/modified_resnet.h"
#include "engine/models/vision_transformer.h"

namespace clipcu::models {

CLIP::CLIP(const ModelConfig& cfg) : cfg_(cfg), text_(cfg.text, cfg.embed_dim) {
  validate_config(cfg_);
  if (cfg_.vision.resnet)
    visual_ = std::make_unique<ModifiedResNet>(cfg_.vision, cfg_.embed_dim);
  else
    visual_ = std::make_unique<VisionTransformer>(cfg_.vision, cfg_.embed_dim);
  logit_scale = Tensor::full({}, cfg_.init_logit_scale);
  register_module("visual", visual_.get());
  register_module("", &text_);  // OpenAI keeps the text tower's parameters at the top level
  register_parameter("logit_scale", &logit_scale);
  name_tensors();
}

Tensor CLIP::encode_image(const Tensor& images) {
  // F32/F64 images for a CPU model of the same type pass as they are (a type mismatch there stays
  // the op's error, as before); a GPU or bf16 model gets them converted and uploaded.
  const Device d = logit_scale.device();
  const DType t = logit_scale.dtype();
  if (d.is_cpu() && t != DType::BF16) return visual_->forward(images.device() == d ? images : images.to(d));
  return visual_->forward(nn::to_model_input(images, d, t));
}

// The text tower takes the ids where they are: host ids are checked and pooled on the host and
// uploaded once (TextTransformer::forward).
Tensor CLIP::encode_text(const Tensor& ids) { return text_.forward(ids); }

Tensor CLIP::logits_per_image(const Tensor& image_features, const Tensor& text_features) const {
  Tensor a = ops::l2_normalize(image_features);  // [N, E]
  Tensor b = ops::l2_normalize(text_features);   // [M, E]
  return ops::scale(ops::matmul(a, b, /*trans_a=*/false, /*trans_b=*/true), std::exp(logit_scale.item()));
}

ops::ClipLossOut CLIP::loss(const Tensor& image_features, const Tensor& text_features) const {
  return ops::clip_loss(image_features, text_features, logit_scale);
}

void CLIP::reset_own_parameters(Rng&) { nn::init_constant(logit_scale, cfg_.init_logit_scale); }

std::unique_ptr<CLIP> make_clip(const ModelConfig& cfg, uint64_t seed) {
  auto model = std::make_unique<CLIP>(cfg);
  Rng rng(seed);
  model->initialize_parameters(rng);
  return model;
}

}  // namespace clipcu::models
