#include "engine/nn/layers.h"

#include <cmath>

#include "engine/ops.h"

namespace clipcu::nn {

static void check_positive(int64_t v, const char* layer, const char* what) {
  CLIPCU_CHECK(v > 0, layer << ": " << what << " must be positive, got " << v);
}

// ---------------------------------------------------------------- Linear
Linear::Linear(int64_t in, int64_t out, bool has_bias) : in_features(in), out_features(out) {
  check_positive(in, "Linear", "in_features");
  check_positive(out, "Linear", "out_features");
  weight = Tensor::zeros({out, in});
  register_parameter("weight", &weight);
  if (has_bias) {
    bias = Tensor::zeros({out});
    register_parameter("bias", &bias);
  }
}

Tensor Linear::forward(const Tensor& x) {
  ModuleScope scope(*this);
  return ops::linear(x, weight, bias);
}

void Linear::reset_own_parameters(Rng& rng) {
  double bound = 1.0 / std::sqrt(double(in_features));
  init_uniform(weight, rng, -bound, bound);
  if (bias.defined()) init_uniform(bias, rng, -bound, bound);
}

// ---------------------------------------------------------------- LayerNorm
LayerNorm::LayerNorm(int64_t C_, double eps_) : C(C_), eps(eps_) {
  check_positive(C, "LayerNorm", "C");
  weight = Tensor::ones({C});
  bias = Tensor::zeros({C});
  register_parameter("weight", &weight);
  register_parameter("bias", &bias);
}

Tensor LayerNorm::forward(const Tensor& x) {
  ModuleScope scope(*this);
  return ops::layer_norm(x, weight, bias, eps);
}

void LayerNorm::reset_own_parameters(Rng&) {
  init_constant(weight, 1.0);
  init_constant(bias, 0.0);
}

// ---------------------------------------------------------------- Embedding
Embedding::Embedding(int64_t V_, int64_t C_) : V(V_), C(C_) {
  check_positive(V, "Embedding", "V");
  check_positive(C, "Embedding", "C");
  weight = Tensor::zeros({V, C});
  register_parameter("weight", &weight);
}

Tensor Embedding::forward(const Tensor& ids) {
  ModuleScope scope(*this);
  return ops::embedding(weight, ids);
}

void Embedding::reset_own_parameters(Rng& rng) { init_normal(weight, rng, 1.0); }

// ---------------------------------------------------------------- Conv2d
Conv2d::Conv2d(int64_t Cin_, int64_t Cout_, int k_, int stride_, int padding_, bool has_bias)
    : Cin(Cin_), Cout(Cout_), k(k_), stride(stride_), padding(padding_) {
  check_positive(Cin, "Conv2d", "Cin");
  check_positive(Cout, "Conv2d", "Cout");
  check_positive(k, "Conv2d", "kernel size");
  check_positive(stride, "Conv2d", "stride");
  CLIPCU_CHECK(padding >= 0, "Conv2d: padding must be >= 0, got " << padding);
  weight = Tensor::zeros({Cout, Cin, k, k});
  register_parameter("weight", &weight);
  if (has_bias) {
    bias = Tensor::zeros({Cout});
    register_parameter("bias", &bias);
  }
}

Tensor Conv2d::forward(const Tensor& x) {
  ModuleScope scope(*this);
  return ops::conv2d(x, weight, bias, stride, padding);
}

void Conv2d::reset_own_parameters(Rng& rng) {
  double bound = 1.0 / std::sqrt(double(Cin * k * k));
  init_uniform(weight, rng, -bound, bound);
  if (bias.defined()) init_uniform(bias, rng, -bound, bound);
}

// ---------------------------------------------------------------- BatchNorm2d
BatchNorm2d::BatchNorm2d(int64_t C_, double eps_, double momentum_) : C(C_), eps(eps_), momentum(momentum_) {
  check_positive(C, "BatchNorm2d", "C");
  weight = Tensor::ones({C});
  bias = Tensor::zeros({C});
  running_mean = Tensor::zeros({C});
  running_var = Tensor::ones({C});
  num_batches_tracked = Tensor::zeros({}, DType::I64);
  register_parameter("weight", &weight);
  register_parameter("bias", &bias);
  register_buffer("running_mean", &running_mean);
  register_buffer("running_var", &running_var);
  register_buffer("num_batches_tracked", &num_batches_tracked);
}

Tensor BatchNorm2d::forward(const Tensor& x) {
  ModuleScope scope(*this);
  Tensor y = ops::batch_norm2d(x, weight, bias, running_mean, running_var, training(), momentum, eps);
  if (training()) num_batches_tracked.data<int64_t>()[0] += 1;  // PyTorch counts, momentum is fixed
  return y;
}

Tensor BatchNorm2d::forward_relu(const Tensor& x) {
  ModuleScope scope(*this);
  Tensor y = ops::batch_norm2d_relu(x, weight, bias, running_mean, running_var, training(), momentum, eps);
  if (training()) num_batches_tracked.data<int64_t>()[0] += 1;
  return y;
}

void BatchNorm2d::reset_own_parameters(Rng&) {
  init_constant(weight, 1.0);
  init_constant(bias, 0.0);
  init_constant(running_mean, 0.0);
  init_constant(running_var, 1.0);
  num_batches_tracked.zero();
}

}  // namespace clipcu::nn
