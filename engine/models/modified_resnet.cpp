#include "engine/models/modified_resnet.h"

#include <cmath>
#include <string>

#include "engine/ops.h"

namespace clipcu::models {

ModifiedResNet::ModifiedResNet(const VisionConfig& cfg, int64_t embed_dim)
    : R(cfg.image_size),
      W(cfg.width),
      conv1(3, cfg.width / 2, 3, /*stride=*/2, /*padding=*/1),
      bn1(cfg.width / 2),
      conv2(cfg.width / 2, cfg.width / 2, 3, /*stride=*/1, /*padding=*/1),
      bn2(cfg.width / 2),
      conv3(cfg.width / 2, cfg.width, 3, /*stride=*/1, /*padding=*/1),
      bn3(cfg.width) {
  CLIPCU_CHECK(cfg.resnet, "ModifiedResNet: needs a ResNet config (vision_cfg.layers a list of 4)");
  register_module("conv1", &conv1);
  register_module("bn1", &bn1);
  register_module("conv2", &conv2);
  register_module("bn2", &bn2);
  register_module("conv3", &conv3);
  register_module("bn3", &bn3);
  int64_t inplanes = W;
  for (int s = 0; s < 4; ++s) {
    const int64_t planes = W << s;  // W, 2W, 4W, 8W
    const int stride = s == 0 ? 1 : 2;
    for (int64_t i = 0; i < cfg.resnet_layers[size_t(s)]; ++i) {
      stages[size_t(s)].push_back(std::make_unique<nn::Bottleneck>(inplanes, planes, i == 0 ? stride : 1));
      register_module("layer" + std::to_string(s + 1) + "." + std::to_string(i), stages[size_t(s)].back().get());
      inplanes = planes * nn::Bottleneck::expansion;
    }
  }
  // inplanes is now 32W; the map side R/32 (validate_config checks the arithmetic reaches it).
  attnpool = std::make_unique<nn::AttentionPool2d>(R / 32, inplanes, cfg.heads(), embed_dim);
  register_module("attnpool", attnpool.get());
}

Tensor ModifiedResNet::forward(const Tensor& images) {
  nn::ModuleScope scope(*this);
  check_shape(images, {-1, 3, R, R}, "ModifiedResNet", "images");
  // relu(bn(conv(x))) with batch norm and ReLU fused (one pass each way)
  Tensor x = bn1.forward_relu(conv1.forward(images));  // [B, W/2, R/2, R/2]
  x = bn2.forward_relu(conv2.forward(x));
  x = bn3.forward_relu(conv3.forward(x));              // [B, W, R/2, R/2]
  x = ops::avg_pool2d(x, 2);                                 // [B, W, R/4, R/4]
  for (auto& stage : stages)
    for (auto& block : stage) x = block->forward(x);         // ... [B, 32W, R/32, R/32]
  return attnpool->forward(x);                               // [B, E]
}

void ModifiedResNet::reset_own_parameters(Rng& rng) {
  const double std = 1.0 / std::sqrt(double(attnpool->c_proj.in_features));
  for (nn::Linear* l : {&attnpool->q_proj, &attnpool->k_proj, &attnpool->v_proj, &attnpool->c_proj}) {
    Rng r = rng.fork("attnpool." + l->name() + ".weight");
    nn::init_normal(l->weight, r, std);
  }
  for (auto& stage : stages)
    for (auto& block : stage) nn::init_constant(block->bn3.weight, 0.0);
}

}  // namespace clipcu::models
