#include "engine/models/vision_transformer.h"

#include <cmath>

#include "engine/ops.h"

namespace clipcu::models {

VisionTransformer::VisionTransformer(const VisionConfig& cfg, int64_t embed_dim)
    : R(cfg.image_size),
      P(cfg.patch_size),
      G(cfg.grid()),
      W(cfg.width),
      E(embed_dim),
      conv1(3, cfg.width, int(cfg.patch_size), /*stride=*/int(cfg.patch_size), /*padding=*/0, /*bias=*/false),
      ln_pre(cfg.width, cfg.ln_eps),
      transformer(cfg.width, cfg.layers, cfg.heads(), cfg.mlp_width(), cfg.act, cfg.ln_eps),
      ln_post(cfg.width, cfg.ln_eps) {
  CLIPCU_CHECK(!cfg.resnet && G > 0, "VisionTransformer: needs a ViT config (patch_size <= image_size)");
  class_embedding = Tensor::zeros({W});
  positional_embedding = Tensor::zeros({G * G + 1, W});
  proj = Tensor::zeros({W, E});
  // Registration order follows OpenAI's module so listings read the same.
  register_module("conv1", &conv1);
  register_parameter("class_embedding", &class_embedding);
  register_parameter("positional_embedding", &positional_embedding);
  register_module("ln_pre", &ln_pre);
  register_module("transformer", &transformer);
  register_module("ln_post", &ln_post);
  register_parameter("proj", &proj);
}

Tensor VisionTransformer::forward(const Tensor& images) {
  nn::ModuleScope scope(*this);
  check_shape(images, {-1, 3, R, R}, "VisionTransformer", "images");
  const int64_t B = images.size(0);
  Tensor x = conv1.forward(images);                                    // [B, W, G, G]
  x = ops::permute(ops::reshape(x, {B, W, G * G}), {0, 2, 1});         // [B, G*G, W]: one token per patch
  // The class token, the same learned vector for every image (add broadcasts [W] over [B, 1, W]).
  Tensor cls = ops::add(Tensor::zeros({B, 1, W}, x.dtype(), x.device()), class_embedding);
  x = ops::concat({cls, x}, 1);                                        // [B, G*G + 1, W]
  x = ops::add(x, positional_embedding);
  x = ln_pre.forward(x);
  x = transformer.forward(x, /*causal=*/false);
  Tensor c = ops::reshape(ops::slice(x, 1, 0, 1), {B, W});             // the class token's output
  c = ln_post.forward(c);
  return ops::matmul(c, proj);                                         // [B, E]
}

void VisionTransformer::reset_own_parameters(Rng& rng) {
  const double scale = 1.0 / std::sqrt(double(W));
  Rng r1 = rng.fork("class_embedding"), r2 = rng.fork("positional_embedding"), r3 = rng.fork("proj");
  nn::init_normal(class_embedding, r1, scale);
  nn::init_normal(positional_embedding, r2, scale);
  nn::init_normal(proj, r3, scale);
}

}  // namespace clipcu::models
