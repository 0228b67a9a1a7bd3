// The per-op profile of a recorded step: FLOPs and bytes by formula, time from the tape's clocks.
//
// All FLOP and byte formulas of the engine live here, so that benchmarks (bench/) and the
// `clipcu profile` command count the same way. A FLOP is one multiply or one add (a fused
// multiply-add is 2). Matmul-like ops are counted exactly; the rest are stated estimates:
//
//   op                      forward FLOPs                  backward FLOPs (inputs needing a grad)
//   linear  x[M,K] W[N,K]   2MNK (+ MN with a bias)        2MNK for dx, 2MNK for dW, MN for db
//   matmul  [M,K] x [K,N]   2MNK                           2MNK per input
//   conv2d                  2 N Cout Ho Wo Cin kh kw       the same for dx and for dW,
//                           (+ N Cout Ho Wo with a bias)   N Cout Ho Wo for db
//   attention q[B,H,Tq,D]   4 B H D P: q k^T and p v       8 B H D P: dv, dp, dq, dk (the
//                           P = Tq Tk pairs, or the        probabilities are saved, no recompute)
//                           Tq (Tq + 1) / 2 unmasked ones  the softmax itself is not counted
//                           when the node has attr causal
//   layer_norm/batch_norm2d 8 per element                  16 per element
//   l2_normalize            3 per element                  6 per element
//   add/mul/scale/relu/gelu/quick_gelu/exp: 1 per output element; backward 1 per element per input
//   mean/sum_all/avg_pool2d 1 per input element            1 per input element
//   embedding               0 (a gather)                   1 per output element (scatter-add)
//   softmax_cross_entropy   4 per logit                    2 per logit
//   clip_loss [N,E],[M,E]   2NME + 3(N+M)E + 7NM           4NME + 6(N+M)E + 5NM
//   reshape/permute/slice/concat/gather_rows: 0 (data movement only)
// Ops with no formula count 0 FLOPs and are flagged (known = false).
//
// Bytes moved: forward = every input + every output (each tensor read or written once);
// backward = the output gradients + the inputs (saved values) read, plus a read and a write of
// the gradient of each input that needs one (gradients accumulate).
//
// Time: forward_seconds / backward_seconds of each node (engine/autograd.h). On a GPU, run
// with CUDA_LAUNCH_BLOCKING=1 (clipcu profile sets it) so that they time the kernels, not the
// launches.
#pragma once
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "engine/autograd.h"

namespace clipcu::profile {

// ---------------------------------------------------------------- formulas
double matmul_flops(int64_t M, int64_t N, int64_t K);  // 2 M N K
// Query-key pairs that attention computes: Tq * Tk, or Tq (Tq + 1) / 2 when causal (Tq == Tk).
double attention_pairs(int64_t Tq, int64_t Tk, bool causal);
double attention_flops(int64_t B, int64_t H, int64_t Tq, int64_t Tk, int64_t D, bool causal);           // 4 B H D pairs
double attention_backward_flops(int64_t B, int64_t H, int64_t Tq, int64_t Tk, int64_t D, bool causal);  // 8 B H D pairs
double conv2d_flops(int64_t N, int64_t Cout, int64_t Ho, int64_t Wo, int64_t Cin, int64_t kh, int64_t kw);

struct Cost {
  double flops_fwd = 0, flops_bwd = 0;
  double bytes_fwd = 0, bytes_bwd = 0;
  bool known = true;  // false: no FLOP formula for this op (counted as 0)
};
// The cost of one recorded node from its op name, its inputs' and outputs' shapes, which
// inputs require a gradient, and its attrs.
Cost node_cost(const Node& n);

// ---------------------------------------------------------------- the profile of a step
struct Row {
  std::string key;  // the op type, the module path or the node name
  std::string op;   // the op type (for module rows: empty)
  int64_t calls = 0;
  Cost cost;  // summed
  double fwd_seconds = 0, bwd_seconds = 0;
  double seconds() const { return fwd_seconds + bwd_seconds; }
  double flops() const { return cost.flops_fwd + cost.flops_bwd; }
};

struct StepProfile {
  std::string device;  // "cpu", or the GPU's name
  bool gpu = false;
  double peak_flops = 0;       // the card's dense bf16 peak (0: unknown, or a CPU)
  double step_seconds = 0;     // wall time of forward + loss + backward
  Row total;                   // every node summed
  std::vector<Row> by_op;      // per op type, most time first
  std::vector<Row> by_module;  // per module path truncated to `depth` components, most time first
  std::vector<Row> by_name;    // per node, in recording order
  int depth = 3;
  std::vector<std::string> unknown_ops;  // ops without a formula
  double achieved_flops() const { return step_seconds > 0 ? total.flops() / step_seconds : 0; }
  double mfu() const { return gpu && peak_flops > 0 ? achieved_flops() / peak_flops : 0; }
};

// Builds the profile of the tape's nodes (after a backward with retain = true).
StepProfile profile_tape(const Tape& tape, double step_seconds, int depth = 3);

// A GPU's dense bf16 tensor-core peak in FLOP/s by its name (H100 SXM/PCIe, H200, A100, L4,
// L40S, RTX 4090, ...); 0 when the name is not in the table.
double peak_bf16_flops(const std::string& gpu_name);

nlohmann::json to_json(const StepProfile& p);
// Tables: by op type, by module, and the `top` most expensive named ops (0 = all).
std::string format_profile(const StepProfile& p, size_t top = 25);

}  // namespace clipcu::profile
