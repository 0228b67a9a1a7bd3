#include "engine/nn/resnet.h"

#include <cmath>

#include "engine/nn/transformer.h"
#include "engine/ops.h"

namespace clipcu::nn {

// ---------------------------------------------------------------- Bottleneck
Bottleneck::Downsample::Downsample(int64_t inplanes, int64_t outplanes, int stride_)
    : stride(stride_), conv(inplanes, outplanes, 1), bn(outplanes) {
  register_module("0", &conv);
  register_module("1", &bn);
}

Tensor Bottleneck::Downsample::forward(const Tensor& x) {
  ModuleScope scope(*this);
  Tensor h = stride > 1 ? ops::avg_pool2d(x, stride) : x;
  return bn.forward(conv.forward(h));
}

Bottleneck::Bottleneck(int64_t inplanes, int64_t planes, int stride_)
    : stride(stride_),
      conv1(inplanes, planes, 1),
      bn1(planes),
      conv2(planes, planes, 3, /*stride=*/1, /*padding=*/1),
      bn2(planes),
      conv3(planes, planes * expansion, 1),
      bn3(planes * expansion) {
  CLIPCU_CHECK(stride >= 1, "Bottleneck: stride must be >= 1, got " << stride);
  register_module("conv1", &conv1);
  register_module("bn1", &bn1);
  register_module("conv2", &conv2);
  register_module("bn2", &bn2);
  register_module("conv3", &conv3);
  register_module("bn3", &bn3);
  if (stride > 1 || inplanes != planes * expansion) {
    downsample = std::make_unique<Downsample>(inplanes, planes * expansion, stride);
    register_module("downsample", downsample.get());
  }
}

Tensor Bottleneck::forward(const Tensor& x) {
  ModuleScope scope(*this);
  Tensor out = bn1.forward_relu(conv1.forward(x));  // batch norm + ReLU fused
  out = bn2.forward_relu(conv2.forward(out));
  if (stride > 1) out = ops::avg_pool2d(out, stride);
  out = bn3.forward(conv3.forward(out));
  Tensor identity = downsample ? downsample->forward(x) : x;
  return ops::relu(ops::add(out, identity));
}

// ---------------------------------------------------------------- AttentionPool2d
AttentionPool2d::AttentionPool2d(int64_t spatial_, int64_t C_, int64_t heads_, int64_t E_)
    : spatial(spatial_), C(C_), heads(heads_), E(E_), k_proj(C_, C_), q_proj(C_, C_), v_proj(C_, C_), c_proj(C_, E_) {
  CLIPCU_CHECK(spatial > 0, "AttentionPool2d: spatial size must be positive, got " << spatial);
  CLIPCU_CHECK(heads > 0 && C % heads == 0,
               "AttentionPool2d: width " << C << " is not divisible by " << heads << " heads");
  positional_embedding = Tensor::zeros({spatial * spatial + 1, C});
  register_parameter("positional_embedding", &positional_embedding);
  register_module("k_proj", &k_proj);
  register_module("q_proj", &q_proj);
  register_module("v_proj", &v_proj);
  register_module("c_proj", &c_proj);
}

Tensor AttentionPool2d::forward(const Tensor& x) {
  ModuleScope scope(*this);
  check_shape(x, {-1, C, spatial, spatial}, "AttentionPool2d", "x");
  const int64_t N = x.size(0), HW = spatial * spatial;
  Tensor tokens = ops::permute(ops::reshape(x, {N, C, HW}), {0, 2, 1});     // [N, HW, C]
  Tensor t = ops::concat({ops::mean(tokens, 1, /*keepdim=*/true), tokens}, 1);  // [N, HW + 1, C]
  t = ops::add(t, positional_embedding);
  // Only the mean token queries; every token (itself included) is a key and a value.
  Tensor q = split_heads(q_proj.forward(ops::slice(t, 1, 0, 1)), heads);  // [N, heads, 1, D]
  Tensor k = split_heads(k_proj.forward(t), heads);                      // [N, heads, HW + 1, D]
  Tensor v = split_heads(v_proj.forward(t), heads);
  Tensor o = ops::merge_heads(ops::attention(q, k, v));  // [N, 1, C]
  return ops::reshape(c_proj.forward(o), {N, E});
}

void AttentionPool2d::reset_own_parameters(Rng& rng) {
  init_normal(positional_embedding, rng, 1.0 / std::sqrt(double(C)));
}

}  // namespace clipcu::nn
