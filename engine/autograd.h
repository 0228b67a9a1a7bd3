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
//  - on a CUDA device the same holds: gradient buffers are created as zeros on the tensor's
//    device (device_memset_zero), and closures enqueue their kernels on the current stream
//    (engine/cuda_runtime.h) without waiting for them, so backward() returns before the GPU is
//    done and the per-node times of a GPU tape measure enqueueing (synchronize for wall time).
//
// Names: a NameScope pushes a module path component; every node records the path at the time it
// was recorded and gets a name unique on the tape: "<path>.<op>" for the first such op in that
// scope, "<path>.<op>#k" for the (k+1)-th (a residual block adds twice: "resblocks.0.add",
// "resblocks.0.add#1"). A single output is named like its node, output i of several
// "<node name>.<i>" ("attn.split_qkv_heads.2", the value heads); an output that already has a name keeps it. The counters restart when the
// tape is cleared, so the same forward gives the same names every step (docs/inspect.md).
#pragma once
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace clipcu {

struct Node {
  std::string op;     // "linear", "layer_norm", ...
  std::string scope;  // module path when recorded: "visual.transformer.resblocks.0.attn"
  std::vector<Tensor> inputs;
  std::vector<Tensor> outputs;
  std::function<void()> backward;  // reads outputs' grads, accumulates into inputs' grads
  // Timings for the per-op profile. The forward time of a node is the time from the previous
  // record() (or mark()) to this one: ops run one after another, so that is the op's own
  // forward plus the little glue between ops. backward_seconds is measured around the closure.
  double forward_seconds = 0;
  double backward_seconds = 0;
  std::string name;  // unique on the tape: "<scope>.<op>" or "<scope>.<op>#k" (see above)
  // Op settings that the input and output shapes do not show (attention's "causal" = 1), for
  // the profile's FLOP formulas; set by the op right after record() with Tape::set_attr.
  std::vector<std::pair<std::string, double>> attrs;
  double attr(const std::string& key, double fallback = 0) const;
};

class Tape {
 public:
  // Records a node if grad mode is on and any input requires a gradient; marks the outputs as
  // requiring a gradient in that case and names them. Returns whether it recorded.
  bool record(const std::string& op, std::vector<Tensor> inputs, std::vector<Tensor> outputs,
              std::function<void()> backward);
  // d(loss)/d(everything): seeds loss's gradient with ones (or `seed`) and walks back.
  void backward(Tensor loss, const Tensor& seed = Tensor(), bool retain = false);
  void clear();  // drops the nodes (and their saved tensors) and restarts the name counters
  // Starts the forward clock: the next recorded node's forward time counts from here.
  void mark();
  const std::vector<Node>& nodes() const { return nodes_; }
  size_t size() const { return nodes_.size(); }
  // Attaches a setting to the node recorded last (call it only when record() returned true).
  void set_attr(const std::string& key, double value);

 private:
  std::vector<Node> nodes_;
  std::map<std::string, int> name_counts_;  // "<scope>.<op>" -> ops of that name recorded so far
  double last_mark_ = 0;  // seconds on a steady clock
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

 private:
  size_t prev_size_;  // the scope's length before this part: a part may hold dots ("resblocks.3")
};
const std::string& current_scope();

// True when an op with these inputs must record (grad mode on and some input requires a grad).
bool needs_grad(std::initializer_list<const Tensor*> inputs);

}  // namespace clipcu
