// AdamW (decoupled weight decay, bias correction; torch.optim.AdamW's update) and global
// gradient-norm clipping, over a list of named parameters.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace clipcu::optim {

struct NamedParam {
  std::string name;
  Tensor param;
  bool decay = true;  // weight decay applies (see open_clip_decay)
};

// open_clip's rule: no decay for parameters that are 1-d or whose name contains "bn", "ln",
// "bias" or "logit_scale".
bool open_clip_decay(const std::string& name, const Tensor& p);

struct AdamWConfig {
  double lr = 5e-4;
  double beta1 = 0.9;
  double beta2 = 0.98;
  double eps = 1e-6;
  double weight_decay = 0.2;
};

class AdamW {
 public:
  AdamW(std::vector<NamedParam> params, AdamWConfig cfg);
  // One step at learning rate lr with each parameter's accumulated gradient (parameters with no
  // gradient are left alone, their moments too). Increments the step count first.
  void step(double lr);
  void step() { step(cfg_.lr); }
  void zero_grad();
  int64_t steps() const { return t_; }
  void set_steps(int64_t t) { t_ = t; }
  const AdamWConfig& config() const { return cfg_; }
  std::vector<NamedParam>& params() { return params_; }
  // Moments, one pair per parameter in params() order (for checkpoints).
  std::vector<Tensor>& exp_avg() { return m_; }
  std::vector<Tensor>& exp_avg_sq() { return v_; }

 private:
  std::vector<NamedParam> params_;
  AdamWConfig cfg_;
  std::vector<Tensor> m_, v_;
  int64_t t_ = 0;
};

// The L2 norm of all the gradients together (parameters without a gradient count as zero).
double grad_norm(const std::vector<Tensor>& params);
// Scales every gradient by max_norm / (norm + 1e-6) when norm > max_norm (PyTorch's
// clip_grad_norm_). Returns the norm before clipping (non-finite when a gradient is).
double clip_grad_norm(const std::vector<Tensor>& params, double max_norm);

}  // namespace clipcu::optim
