// OpenAI's ModifiedResNet (clip/model.py), parameter names as in its state dict:
//
//   conv1/bn1, conv2/bn2, conv3/bn3   the stem: three 3x3 convs (the first with stride 2;
//                                     widths W/2, W/2, W), each with BatchNorm and ReLU,
//                                     then a 2x2 average pool
//   layer1..layer4                    Bottleneck stages of widths W, 2W, 4W, 8W (x4 out),
//                                     strides 1, 2, 2, 2 (engine/nn/resnet.h)
//   attnpool                          AttentionPool2d over the final (R/32)^2 map, 32W wide,
//                                     projecting to the embedding width E
#pragma once
#include <array>
#include <memory>
#include <vector>

#include "engine/models/config.h"
#include "engine/models/vision_tower.h"
#include "engine/nn/layers.h"
#include "engine/nn/resnet.h"

namespace clipcu::models {

class ModifiedResNet : public VisionTower {
 public:
  ModifiedResNet(const VisionConfig& cfg, int64_t embed_dim);
  Tensor forward(const Tensor& images) override;  // [B, 3, R, R] -> [B, E]
  int64_t image_size() const override { return R; }

  int64_t R, W;
  nn::Conv2d conv1;
  nn::BatchNorm2d bn1;
  nn::Conv2d conv2;
  nn::BatchNorm2d bn2;
  nn::Conv2d conv3;
  nn::BatchNorm2d bn3;
  // Stage s holds layers[s] blocks; named "layer{s+1}.{i}".
  std::array<std::vector<std::unique_ptr<nn::Bottleneck>>, 4> stages;
  std::unique_ptr<nn::AttentionPool2d> attnpool;

 protected:
  // OpenAI's initialize_parameters: attention-pool projections ~ N(0, C^-1/2) and every bn3
  // gain zero (each residual branch starts as the identity).
  void reset_own_parameters(Rng& rng) override;
};

}  // namespace clipcu::models
