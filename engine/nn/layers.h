// Basic layers, each a thin Module around one op of engine/ops.h, under PyTorch's parameter names
// (weight, bias, running_mean, running_var, num_batches_tracked) so that OpenAI/open_clip state
// dicts load without a name map. Default initializations are PyTorch's (reset_own_parameters).
#pragma once
#include "engine/nn/module.h"

namespace clipcu::nn {

// y = x W^T + b. weight [out, in], bias [out] (optional).
class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias = true);
  Tensor forward(const Tensor& x);  // [..., in] -> [..., out]
  int64_t in_features, out_features;
  Tensor weight, bias;

 protected:
  // U(-1/sqrt(in), 1/sqrt(in)) for both (PyTorch's kaiming_uniform with a = sqrt(5)).
  void reset_own_parameters(Rng& rng) override;
};

// Normalizes over the last dim. weight (gain) [C] = 1, bias [C] = 0.
class LayerNorm : public Module {
 public:
  explicit LayerNorm(int64_t C, double eps = 1e-5);
  Tensor forward(const Tensor& x);  // [..., C] -> [..., C]
  int64_t C;
  double eps;
  Tensor weight, bias;

 protected:
  void reset_own_parameters(Rng& rng) override;
};

// A lookup table: weight [V, C]; ids [...] -> [..., C].
class Embedding : public Module {
 public:
  Embedding(int64_t V, int64_t C);
  Tensor forward(const Tensor& ids);
  int64_t V, C;
  Tensor weight;

 protected:
  void reset_own_parameters(Rng& rng) override;  // N(0, 1), as nn.Embedding
};

// NCHW convolution with a square kernel. weight [Cout, Cin, k, k], bias [Cout] (optional).
class Conv2d : public Module {
 public:
  Conv2d(int64_t Cin, int64_t Cout, int k, int stride = 1, int padding = 0, bool bias = false);
  Tensor forward(const Tensor& x);  // [N, Cin, H, W] -> [N, Cout, H', W']
  int64_t Cin, Cout;
  int k, stride, padding;
  Tensor weight, bias;

 protected:
  void reset_own_parameters(Rng& rng) override;  // U(+-1/sqrt(Cin k k)), as nn.Conv2d
};

// Batch normalization over (N, H, W) per channel. Parameters weight, bias [C]; buffers
// running_mean [C], running_var [C], num_batches_tracked [] (I64, counted on the host).
// Training mode normalizes with batch statistics and updates the running ones (momentum 0.1,
// unbiased variance); inference mode uses the running statistics.
class BatchNorm2d : public Module {
 public:
  explicit BatchNorm2d(int64_t C, double eps = 1e-5, double momentum = 0.1);
  Tensor forward(const Tensor& x);       // [N, C, H, W] -> [N, C, H, W]
  Tensor forward_relu(const Tensor& x);  // relu(forward(x)) as one fused op (ops::batch_norm2d_relu)
  int64_t C;
  double eps, momentum;
  Tensor weight, bias;
  Tensor running_mean, running_var, num_batches_tracked;

 protected:
  void reset_own_parameters(Rng& rng) override;
};

}  // namespace clipcu::nn
