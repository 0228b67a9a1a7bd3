// The blocks of OpenAI's ModifiedResNet (clip/model.py), under its parameter names.
//
// Bottleneck (expansion 4):
//   out = relu(bn1(conv1 1x1(x)))
//   out = relu(bn2(conv2 3x3(out)))
//   out = avgpool(stride)(out)            the stride is an average pool, not a strided conv
//   out = bn3(conv3 1x1(out))             planes -> 4 planes
//   out = relu(out + downsample(x))       downsample = avgpool(stride), 1x1 conv, bn
//                                         ("downsample.0", "downsample.1"), present when the
//                                         stride is > 1 or the channel count changes
//
// AttentionPool2d: the feature map [N, C, h, w] becomes h*w tokens; their mean is prepended as
// a query token, a learned positional embedding is added, and that one token attends over all
// h*w + 1 tokens with multi-head attention (q_proj, k_proj, v_proj, then c_proj to the output
// width). The attended query token is the image embedding.
#pragma once
#include <memory>

#include "engine/nn/layers.h"

namespace clipcu::nn {

class Bottleneck : public Module {
 public:
  static constexpr int64_t expansion = 4;
  Bottleneck(int64_t inplanes, int64_t planes, int stride);
  Tensor forward(const Tensor& x);  // [N, inplanes, H, W] -> [N, 4 planes, H/stride, W/stride]
  int stride;
  Conv2d conv1;
  BatchNorm2d bn1;
  Conv2d conv2;
  BatchNorm2d bn2;
  Conv2d conv3;
  BatchNorm2d bn3;
  // The identity path when shapes change; null when x is added as it is.
  struct Downsample : public Module {
    Downsample(int64_t inplanes, int64_t outplanes, int stride);
    Tensor forward(const Tensor& x);
    int stride;
    Conv2d conv;   // "0"
    BatchNorm2d bn;  // "1"
  };
  std::unique_ptr<Downsample> downsample;
};

class AttentionPool2d : public Module {
 public:
  // spatial: the side of the incoming feature map; C its channels; E the output width.
  AttentionPool2d(int64_t spatial, int64_t C, int64_t heads, int64_t E);
  Tensor forward(const Tensor& x);  // [N, C, spatial, spatial] -> [N, E]
  int64_t spatial, C, heads, E;
  Tensor positional_embedding;      // [spatial^2 + 1, C]
  Linear k_proj, q_proj, v_proj, c_proj;

 protected:
  void reset_own_parameters(Rng& rng) override;  // positional embedding N(0, 1/C), as OpenAI
};

}  // namespace clipcu::nn
