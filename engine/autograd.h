// The autograd tape: coarse ops recorded in order, backward walked in reverse.
//
// Each differentiable op (engine/ops.h) computes its outputs, and when grad mode is on and any
// input requires a gradient, records one Node: its inputs, outputs, what backward needs (saved
// tensors captured by the closure: mean/rstd, log-sum-exp, ...) and the backward closure.
// backward(loss) seeds d(loss) = 1 and runs the nodes in reverse recording order; there is no
// graph sort: recording order is already a topological order.
//
// Gradient contract (DESIGN.md, convention 4):
//  - every gradient is ACCUMULATED (+=) into the input's grad buffer, which is created as zeros
//    on first use. For parameters this is the usual "grads accumulate until zero_grad()"; for
//    activations it is what fan-out needs (the residual stream, features used by two losses):
//    each consumer adds its share, and a tensor's gradient is complete when the walk reaches the
//    node that produced it.
//  - a node runs only if at least one of its outputs received a gradient; it writes only into
//    inputs that require a gradient.
//  - the tape is cleared by backward() (unless retain) and by clear(); saved tensors die with it.
//
// Names: a NameScope pushes a module path component; every node records the path at the time it
// was recorded, and outputs are named "<path>.<op>" unless the op is given a name.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace clipcu {

struct Node {
  std::string op;     // "linear", "layer_norm", ...
  std::string scope;  // module path when recorded: "visual.transformer.resblocks.0.attn"
  std::vector<Tensor> inputs;
  std::vector<Tensor> outputs;
  std::function<void()> backward;  // reads outputs' grads, accumulates into inputs' grads
};

class Tape {
 public:
  // Records a node if grad mode is on and any input requires a gradient; marks the outputs as
  // requiring a gradient in that case and names them. Returns whether it recorded.
  bool record(const std::string& op, std::vector<Tensor> inputs, std::vector<Tensor> outputs,
              std::function<void()> backward);
  // d(loss)/d(everything): seeds loss's gradient with ones (or `seed`) and walks back.
  void backward(Tensor loss, const Tensor& seed = Tensor(), bool retain = false);
  void clear() { nodes_.clear(); }
  const std::vector<Node>& nodes() const { return nodes_; }
  size_t size() const { return nodes_.size(); }

 private:
  std::vector<Node> nodes_;
};

// The tape of this thread.
Tape& tape();
inline void backward(Tensor loss, const Tensor& seed = Tensor(), bool retain = false) {
  tape().backward(std::move(loss), seed, retain);
}

// Grad mode (on by default, per thread).
bool grad_enabled();
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

// Module path scopes: NameScope s("visual"); NameScope t("transformer"); -> "visual.transformer".
class NameScope {
 public:
  explicit NameScope(const std::string& part);
  ~NameScope();
  NameScope(const NameScope&) = delete;
  NameScope& operator=(const NameScope&) = delete;
};
const std::string& current_scope();

// True when an op with these inputs must record (grad mode on and some input requires a grad).
bool needs_grad(std::initializer_list<const Tensor*> inputs);

}  // namespace clipcu
