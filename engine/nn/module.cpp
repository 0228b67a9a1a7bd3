#include "engine/nn/module.h"

#include <set>

#ifdef CLIPCU_WITH_CUDA
#include "engine/cuda_runtime.h"
#endif

namespace clipcu::nn {

static std::string join(const std::string& prefix, const std::string& name) {
  if (prefix.empty()) return name;
  if (name.empty()) return prefix;
  return prefix + "." + name;
}

void Module::register_parameter(const std::string& name, Tensor* p) {
  CLIPCU_CHECK(p && p->defined(), "register_parameter: '" << name << "' is undefined");
  p->set_requires_grad(true);
  params_.emplace_back(name, p);
}

void Module::register_buffer(const std::string& name, Tensor* b) {
  CLIPCU_CHECK(b && b->defined(), "register_buffer: '" << name << "' is undefined");
  buffers_.emplace_back(name, b);
}

void Module::register_module(const std::string& name, Module* m) {
  CLIPCU_CHECK(m != nullptr, "register_module: '" << name << "' is null");
  m->name_ = name;
  m->training_ = training_;
  children_.push_back(m);
}

void Module::collect(const std::string& prefix, bool params, bool buffers, NamedTensorList& out) const {
  if (params)
    for (const auto& [n, t] : params_) out.emplace_back(join(prefix, n), *t);
  if (buffers)
    for (const auto& [n, t] : buffers_) out.emplace_back(join(prefix, n), *t);
  for (const Module* c : children_) c->collect(join(prefix, c->name_), params, buffers, out);
}

NamedTensorList Module::named_parameters() const {
  NamedTensorList out;
  collect("", true, false, out);
  return out;
}

NamedTensorList Module::named_buffers() const {
  NamedTensorList out;
  collect("", false, true, out);
  return out;
}

NamedTensorList Module::state_dict() const {
  NamedTensorList out = named_parameters();
  NamedTensorList b = named_buffers();
  out.insert(out.end(), b.begin(), b.end());
  // Two registrations under one path would make checkpoints ambiguous: a bug in a model class.
  std::set<std::string> seen;
  for (const auto& [n, t] : out) CLIPCU_CHECK(seen.insert(n).second, "state dict: duplicate name '" << n << "'");
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [n, t] : named_parameters()) out.push_back(t);
  return out;
}

std::vector<optim::NamedParam> Module::optimizer_params() const {
  std::vector<optim::NamedParam> out;
  for (auto& [n, t] : named_parameters()) out.push_back({n, t, optim::open_clip_decay(n, t)});
  return out;
}

void Module::train(bool on) {
  training_ = on;
  for (Module* c : children_) c->train(on);
}

template <class F> void Module::for_each_slot(F&& f) {
  for (auto& [n, t] : params_) f(*t, true);
  for (auto& [n, t] : buffers_) f(*t, false);
  for (Module* c : children_) c->for_each_slot(f);
}

void Module::to(Device device) {
  for_each_slot([&](Tensor& t, bool is_param) {
    if (!is_floating(t.dtype()) || t.device() == device) return;
    std::string name = t.name();
    t = t.to(device);
    if (is_param) t.set_requires_grad(true);
    if (!name.empty()) t.set_name(name);
  });
}

void Module::to(DType dtype) {
  CLIPCU_CHECK(is_floating(dtype), "Module::to: " << dtype_name(dtype) << " is not a floating type");
  for_each_slot([&](Tensor& t, bool is_param) {
    if (!is_floating(t.dtype()) || t.dtype() == dtype) return;
    std::string name = t.name();
    t = t.to(dtype);
    if (is_param) t.set_requires_grad(true);
    if (!name.empty()) t.set_name(name);
  });
}

void Module::to(Device device, DType dtype) {
  CLIPCU_CHECK(is_floating(dtype), "Module::to: " << dtype_name(dtype) << " is not a floating type");
  for_each_slot([&](Tensor& t, bool is_param) {
    if (!is_floating(t.dtype()) || (t.dtype() == dtype && t.device() == device)) return;
    std::string name = t.name();
    Tensor h = t;
    if (h.dtype() != dtype) h = h.to(Device::cpu()).to(dtype);  // convert where it is cheap and exact
    t = h.to(device);
    if (is_param) t.set_requires_grad(true);
    if (!name.empty()) t.set_name(name);
  });
}

Device Module::device() const {
  NamedTensorList p = named_parameters();
  return p.empty() ? Device::cpu() : p.front().second.device();
}

DType Module::dtype() const {
  NamedTensorList p = named_parameters();
  return p.empty() ? DType::F32 : p.front().second.dtype();
}

void Module::zero_grad() {
  for_each_slot([](Tensor& t, bool is_param) {
    if (is_param) t.zero_grad();
  });
}

void Module::name_tensors(const std::string& prefix) {
  for (auto& [n, t] : params_) t->set_name(join(prefix, n));
  for (auto& [n, t] : buffers_) t->set_name(join(prefix, n));
  for (Module* c : children_) c->name_tensors(join(prefix, c->name_));
}

void Module::reset_parameters(Rng& rng) {
  // Children first, so that a parent can override its children's defaults (as
  // torch.nn.MultiheadAttention zeroes its out_proj bias after the Linear initialized it).
  for (Module* c : children_) {
    Rng child = rng.fork(c->name_);
    c->reset_parameters(child);
  }
  reset_own_parameters(rng);
}

// ---------------------------------------------------------------- model inputs
Tensor to_model_input(const Tensor& x, Device device, DType float_dtype) {
  CLIPCU_CHECK(x.defined(), "model input: undefined tensor");
  const bool convert = is_floating(x.dtype()) && x.dtype() != float_dtype;
#ifdef CLIPCU_WITH_CUDA
  if (x.device().is_cpu() && device.is_cuda()) {
    Tensor d = Tensor::empty(x.shape(), x.dtype(), device);
    if (x.nbytes() > 0) cuda::staging(device.index).upload(d.raw(), x.raw(), x.nbytes());
    // float32 -> bf16 by the device's conversion kernel (Tensor::to): cheaper than the host
    // loop, which would hold up the step's first kernels
    return convert ? d.to(float_dtype) : d;
  }
#endif
  const Tensor h = convert ? x.to(float_dtype) : x;
  return h.device() == device ? h : h.to(device);
}

// ---------------------------------------------------------------- initialization helpers
void init_normal(Tensor& t, Rng& rng, double std, double mean) {
  t.copy_from(Tensor::randn(t.shape(), rng, mean, std, DType::F64));
}

void init_uniform(Tensor& t, Rng& rng, double lo, double hi) {
  t.copy_from(Tensor::uniform(t.shape(), rng, lo, hi, DType::F64));
}

void init_constant(Tensor& t, double value) { t.fill(value); }

}  // namespace clipcu::nn
