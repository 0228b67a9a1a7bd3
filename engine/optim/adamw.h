// AdamW (decoupled weight decay, bias correction; torch.optim.AdamW's update) and global
// gradient-norm clipping, over a list of named parameters.
//
// CPU: one pass per parameter (kernels/cpu/adamw.h), in the parameters' own type (F32 or F64).
// CUDA: every parameter in one launch (kernels/cuda/adamw.cuh's multi-tensor kernel), moments in
// float32, and the global gradient norm computed on the GPU in two deterministic passes. All
// parameters of one CUDA optimizer share one device and one type:
//   F32   the parameters are the weights AdamW updates;
//   BF16  mixed precision: the optimizer keeps float32 master weights, updates them, and the
//         same kernel refreshes the model's bf16 copy (param = bf16(master)). Checkpoints save
//         the masters (master_value), so a bf16 run resumes without losing the low bits, and a
//         checkpoint written on the GPU resumes on the CPU and the other way round.
// Gradient clipping on CUDA does not rescale the gradients in memory: clip_grad_norm() leaves a
// clipping coefficient on the device that the next step() multiplies into each gradient (the
// same update, one pass less). The free functions grad_norm / clip_grad_norm work on either
// device and do rescale.
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
  // gradient are left alone, their moments too). Increments the step count first. On CUDA it
  // applies the clipping coefficient of a clip_grad_norm() call made since the last step.
  void step(double lr);
  void step() { step(cfg_.lr); }
  void zero_grad();
  int64_t steps() const { return t_; }
  void set_steps(int64_t t) { t_ = t; }
  const AdamWConfig& config() const { return cfg_; }
  std::vector<NamedParam>& params() { return params_; }
  // Moments, one pair per parameter in params() order (for checkpoints). CPU: the parameter's
  // type; CUDA: float32.
  std::vector<Tensor>& exp_avg() { return m_; }
  std::vector<Tensor>& exp_avg_sq() { return v_; }

  // The device of the parameters, and whether the optimizer keeps float32 masters (bf16 model).
  Device device() const { return device_; }
  bool has_masters() const { return mixed_; }
  // The weights AdamW updates for parameter i: the float32 master of a bf16 parameter, else the
  // parameter itself (same device).
  const Tensor& master(size_t i) const;
  // Sets parameter i (and its master) to `value` (any device and floating type, same shape): for
  // pretrained weights and resuming, so a bf16 model's master keeps every bit of a float32 file.
  void set_value(size_t i, const Tensor& value);
  // Parameter i as a float32 host tensor: the master when there is one (what checkpoints save).
  Tensor master_value(size_t i) const;
  // Clamps one-element parameter i into [lo, hi] (the master and the model's copy); returns the
  // value after clamping. The trainer clamps logit_scale this way.
  double clamp(size_t i, double lo, double hi);
  // The index of the parameter called `name` in params(); throws when there is none.
  size_t index_of(const std::string& name) const;

  // The L2 norm of all the parameters' gradients together (no gradient counts as zero).
  double grad_norm();
  // As optim::clip_grad_norm over params(): returns the norm before clipping. On the CPU the
  // gradients are rescaled in memory (the free function); on CUDA the next step() applies the
  // coefficient. A non-finite norm leaves everything alone (the caller skips the step).
  double clip_grad_norm(double max_norm);

 private:
  std::vector<NamedParam> params_;
  AdamWConfig cfg_;
  std::vector<Tensor> m_, v_;
  int64_t t_ = 0;
  Device device_;
  bool mixed_ = false;           // CUDA with bf16 parameters and float32 masters
  std::vector<Tensor> masters_;  // [i] the master of a bf16 parameter (undefined otherwise)
  // CUDA state: the device tensor list of the last build (parameters with a gradient), its chunk
  // layout, and the norm's scratch; all allocated once at the size of the whole model.
  Tensor dev_list_;     // U8: [AdamWTensor x n][int32 chunk_start x (n + 1)]
  Tensor dev_partial_;  // F64 [chunks of all parameters]
  Tensor dev_norm_;     // F32 [2]: norm, clipping coefficient
  int list_tensors_ = 0;
  int64_t list_chunks_ = 0;
  bool list_current_ = false;  // built for the gradients of this step (reset by step/zero_grad)
  bool clip_pending_ = false;  // dev_norm_ holds a coefficient for the next step
  void check_cuda_params();
  void build_device_list();
  double device_grad_norm(double max_norm);
};

// The L2 norm of all the gradients together (parameters without a gradient count as zero). The
// parameters may be on the CPU or one CUDA device (float32 or bf16 gradients; the sum in double).
double grad_norm(const std::vector<Tensor>& params);
// Scales every gradient by max_norm / (norm + 1e-6) when norm > max_norm (PyTorch's
// clip_grad_norm_). Returns the norm before clipping (non-finite when a gradient is).
double clip_grad_norm(const std::vector<Tensor>& params, double max_norm);

}  // namespace clipcu::optim
