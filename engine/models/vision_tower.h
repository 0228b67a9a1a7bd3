// The image tower interface: VisionTransformer and ModifiedResNet both map normalized images
// [B, 3, R, R] to projected image features [B, E].
#pragma once
#include "engine/nn/module.h"

namespace clipcu::models {

class VisionTower : public nn::Module {
 public:
  virtual Tensor forward(const Tensor& images) = 0;  // [B, 3, R, R] -> [B, E]
  virtual int64_t image_size() const = 0;
};

}  // namespace clipcu::models
