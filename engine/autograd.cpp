#include "engine/autograd.h"

#include <chrono>

namespace clipcu {

namespace {
thread_local Tape g_tape;
thread_local bool g_grad_enabled = true;
thread_local std::string g_scope;

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

Tape& tape() { return g_tape; }
void Tape::mark() { last_mark_ = now_seconds(); }
bool grad_enabled() { return g_grad_enabled; }
NoGradGuard::NoGradGuard() : prev_(g_grad_enabled) { g_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { g_grad_enabled = prev_; }

NameScope::NameScope(const std::string& part) : prev_size_(g_scope.size()) {
  if (!g_scope.empty()) g_scope.push_back('.');
  g_scope.append(part);
}
NameScope::~NameScope() { g_scope.resize(prev_size_); }
const std::string& current_scope() { return g_scope; }

bool needs_grad(std::initializer_list<const Tensor*> inputs) {
  if (!g_grad_enabled) return false;
  for (const Tensor* t : inputs)
    if (t && t->defined() && t->requires_grad()) return true;
  return false;
}

bool Tape::record(const std::string& op, std::vector<Tensor> inputs, std::vector<Tensor> outputs,
                  std::function<void()> backward) {
  if (!g_grad_enabled) return false;
  bool any = false;
  for (const Tensor& t : inputs) any = any || (t.defined() && t.requires_grad());
  if (!any) return false;
  std::string base = g_scope.empty() ? op : g_scope + "." + op;
  int repeat = name_counts_[base]++;
  if (repeat > 0) base.append("#").append(std::to_string(repeat));
  for (size_t i = 0; i < outputs.size(); ++i) {
    Tensor& o = outputs[i];
    if (!o.defined() || !is_floating(o.dtype())) continue;
    o.set_requires_grad(true);
    if (o.name().empty()) o.set_name(outputs.size() == 1 ? base : base + "." + std::to_string(i));
  }
  double now = now_seconds();
  double fwd = last_mark_ > 0 ? now - last_mark_ : 0.0;
  last_mark_ = now;
  nodes_.push_back(Node{op, g_scope, std::move(inputs), std::move(outputs), std::move(backward), fwd, 0.0, base, {}});
  return true;
}

void Tape::clear() {
  nodes_.clear();
  name_counts_.clear();
  last_mark_ = 0;
}

void Tape::set_attr(const std::string& key, double value) {
  CLIPCU_CHECK(!nodes_.empty(), "Tape::set_attr(\"" << key << "\"): no node has been recorded");
  nodes_.back().attrs.emplace_back(key, value);
}

double Node::attr(const std::string& key, double fallback) const {
  for (const auto& [k, v] : attrs)
    if (k == key) return v;
  return fallback;
}

void Tape::backward(Tensor loss, const Tensor& seed, bool retain) {
  CLIPCU_CHECK(loss.defined(), "backward of an undefined tensor");
  CLIPCU_CHECK(loss.requires_grad(), "backward: " << loss.str() << " does not require a gradient (was it computed "
                                                  "under NoGradGuard, or from inputs that need none?)");
  Tensor& g = loss.grad_buffer();
  if (seed.defined()) {
    CLIPCU_CHECK(seed.shape() == loss.shape(), "backward: seed " << seed.str() << " for loss " << loss.str());
    g.copy_from(seed);
  } else {
    CLIPCU_CHECK(loss.numel() == 1, "backward without a seed needs a scalar loss, got " << loss.str());
    g.fill(1.0);
  }
  {
    NoGradGuard no_grad;  // backward closures never record
    for (size_t i = nodes_.size(); i-- > 0;) {
      Node& n = nodes_[i];
      bool any = false;
      for (const Tensor& o : n.outputs) any = any || o.has_grad();
      if (!any) continue;
      double t0 = now_seconds();
      n.backward();
      n.backward_seconds = now_seconds() - t0;
    }
  }
  if (!retain) {
    nodes_.clear();
    name_counts_.clear();
  }
  last_mark_ = 0;
}

}  // namespace clipcu
