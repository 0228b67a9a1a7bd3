// Module: the small parameter system under every layer and model.
//
// A module owns its parameters (trainable tensors) and buffers (state that is saved but not
// trained: BatchNorm running statistics) as plain Tensor members, and registers each one under
// its local state-dict name ("weight", "in_proj_bias", "running_mean"). Children are registered
// the same way ("ln_1", "resblocks.3"), so walking the tree gives the OpenAI/open_clip
// state-dict names ("visual.transformer.resblocks.3.attn.in_proj_weight") with no name table.
//
// There is no virtual forward(): layers take different arguments (a causal flag, token ids), and
// each class has a plain `forward` that reads like the math. Each forward opens a ModuleScope so
// that the tape's nodes carry the module path ("visual.transformer.resblocks.3.attn").
//
// Modules are neither copyable nor movable: the registry holds pointers to the members.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "engine/autograd.h"
#include "engine/optim/adamw.h"
#include "engine/rng.h"
#include "engine/tensor.h"

namespace clipcu::nn {

using NamedTensorList = std::vector<std::pair<std::string, Tensor>>;

class Module {
 public:
  Module() = default;
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // The name this module has inside its parent ("attn", "resblocks.3"); empty for a root, and
  // for a child whose parameters sit at its parent's level (CLIP's text tower: OpenAI keeps
  // token_embedding, transformer, ln_final at the top of the state dict).
  const std::string& name() const { return name_; }

  // Recursive listings under state-dict names relative to this module, in registration order.
  NamedTensorList named_parameters() const;
  NamedTensorList named_buffers() const;
  // Parameters then buffers: everything a checkpoint holds.
  NamedTensorList state_dict() const;
  std::vector<Tensor> parameters() const;
  // The parameters with open_clip's weight-decay rule applied (optim::open_clip_decay).
  std::vector<optim::NamedParam> optimizer_params() const;

  // Training mode (BatchNorm uses batch statistics and updates its running statistics) or
  // inference mode (running statistics). Applies to the whole subtree.
  void train(bool on = true);
  void eval() { train(false); }
  bool training() const { return training_; }

  // Moves every floating parameter and buffer to a device / converts it to a floating dtype.
  // Integer buffers (num_batches_tracked, a host-side counter) stay on the host as they are.
  // The tensors are replaced, so take parameters() (or build an optimizer) after moving.
  void to(Device device);
  void to(DType dtype);
  // Both at once: a tensor that changes type is converted on the host first, then copied, so a
  // bf16 model on the GPU uploads half the bytes and needs no conversion kernel. Parameters keep
  // requires_grad and their names; buffers are converted too (every floating input of one op
  // shares one dtype, engine/ops.h), so BatchNorm's running statistics follow the model's type.
  void to(Device device, DType dtype);

  // The device and floating type of the parameters (the first parameter's; a module without
  // parameters reports the CPU and F32). Inputs for a model go there (see to_model_input).
  Device device() const;
  DType dtype() const;

  // Drops every parameter's gradient.
  void zero_grad();

  // Sets every parameter's and buffer's tensor name to its full state-dict path, so that error
  // messages and tape dumps name them ("visual.conv1.weight").
  void name_tensors(const std::string& prefix = "");

  // Initializes the subtree: the children first (each from its own stream, forked from `rng` by
  // the child's name, so values do not depend on the order modules are visited), then this
  // module's own parameters (reset_own_parameters: PyTorch's default for a layer, the model's
  // own choices for a model, which may override its children's).
  virtual void reset_parameters(Rng& rng);

 protected:
  // Registers a member tensor. Parameters are marked as requiring a gradient.
  void register_parameter(const std::string& name, Tensor* p);
  void register_buffer(const std::string& name, Tensor* b);
  // Registers a member module (or one held by a unique_ptr of the owner) under `name`.
  void register_module(const std::string& name, Module* m);
  // Initializes this module's own parameters (not the children's), after the children have
  // been initialized; default: nothing.
  virtual void reset_own_parameters(Rng& rng) { (void)rng; }

 private:
  std::string name_;
  bool training_ = true;
  std::vector<std::pair<std::string, Tensor*>> params_;
  std::vector<std::pair<std::string, Tensor*>> buffers_;
  std::vector<Module*> children_;
  void collect(const std::string& prefix, bool params, bool buffers, NamedTensorList& out) const;
  template <class F> void for_each_slot(F&& f);
};

// Pushes a module's name ("attn", "resblocks.3") on the tape's scope stack for the duration of
// one forward call (nothing for a module without a name).
class ModuleScope {
 public:
  explicit ModuleScope(const Module& m) {
    if (!m.name().empty()) scope_.emplace(m.name());
  }

 private:
  std::optional<NameScope> scope_;
};

// ---------------------------------------------------------------- model inputs
// An input batch for a module on `device` computing in `float_dtype`: floating tensors are
// converted to float_dtype, integer ones keep their type. From the host to a GPU the data goes
// through the pinned staging buffers of engine/cuda_runtime.h (an asynchronous copy on the
// current stream, so the host can go on preparing while the copy runs) and is converted there
// (float32 -> bf16 by a kernel). Returns x itself when nothing changes (CPU training sees
// exactly the tensors it was given).
Tensor to_model_input(const Tensor& x, Device device, DType float_dtype);

// ---------------------------------------------------------------- initialization helpers
// In place, from the given stream (values drawn in float64, stored in the tensor's dtype).
void init_normal(Tensor& t, Rng& rng, double std, double mean = 0.0);
void init_uniform(Tensor& t, Rng& rng, double lo, double hi);
void init_constant(Tensor& t, double value);

}  // namespace clipcu::nn
