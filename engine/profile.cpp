#include "engine/profile.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "engine/inspect.h"

namespace clipcu::profile {

double matmul_flops(int64_t M, int64_t N, int64_t K) { return 2.0 * double(M) * double(N) * double(K); }

double attention_pairs(int64_t Tq, int64_t Tk, bool causal) {
  // Causal attention (Tq == Tk) lets query i see keys 0..i: 1 + 2 + ... + Tq pairs.
  return causal ? double(Tq) * double(Tq + 1) / 2.0 : double(Tq) * double(Tk);
}

double attention_flops(int64_t B, int64_t H, int64_t Tq, int64_t Tk, int64_t D, bool causal) {
  // s = q k^T (2 D per pair) and o = p v (2 D per pair)
  return 4.0 * double(B) * double(H) * double(D) * attention_pairs(Tq, Tk, causal);
}

double attention_backward_flops(int64_t B, int64_t H, int64_t Tq, int64_t Tk, int64_t D, bool causal) {
  // dv = p^T do, dp = do v^T, dq = ds k, dk = ds^T q: four products of the forward's size
  return 8.0 * double(B) * double(H) * double(D) * attention_pairs(Tq, Tk, causal);
}

double conv2d_flops(int64_t N, int64_t Cout, int64_t Ho, int64_t Wo, int64_t Cin, int64_t kh, int64_t kw) {
  return 2.0 * double(N) * double(Cout) * double(Ho) * double(Wo) * double(Cin) * double(kh) * double(kw);
}

namespace {

bool needs(const Node& n, size_t i) {
  return i < n.inputs.size() && n.inputs[i].defined() && n.inputs[i].requires_grad();
}
double numel_of(const Node& n, size_t i, bool output = false) {
  const auto& v = output ? n.outputs : n.inputs;
  return i < v.size() && v[i].defined() ? double(v[i].numel()) : 0.0;
}

const std::set<std::string>& elementwise_ops() {
  static const std::set<std::string> s = {"add", "mul", "scale", "relu", "gelu", "gelu_tanh", "quick_gelu", "exp"};
  return s;
}
const std::set<std::string>& movement_ops() {
  static const std::set<std::string> s = {"reshape",         "permute",    "slice", "concat",
                                          "gather_rows",     "split_qkv_heads", "merge_heads"};
  return s;
}

}  // namespace

Cost node_cost(const Node& n) {
  Cost c;
  // Bytes: every tensor once forward; backward reads the output gradients and the saved inputs
  // and read-modify-writes the gradient of each input that needs one.
  double in_bytes = 0, out_bytes = 0, grad_in_bytes = 0;
  for (size_t i = 0; i < n.inputs.size(); ++i) {
    const Tensor& t = n.inputs[i];
    if (!t.defined()) continue;
    in_bytes += double(t.nbytes());
    if (t.requires_grad()) grad_in_bytes += 2.0 * double(t.nbytes());
  }
  for (const Tensor& t : n.outputs)
    if (t.defined()) out_bytes += double(t.nbytes());
  c.bytes_fwd = in_bytes + out_bytes;
  c.bytes_bwd = out_bytes + in_bytes + grad_in_bytes;

  const std::string& op = n.op;
  const Tensor* x = n.inputs.empty() ? nullptr : &n.inputs[0];
  const Tensor* y = n.outputs.empty() ? nullptr : &n.outputs[0];
  const bool ok = x && x->defined() && y && y->defined();
  if (!ok) {
    c.known = false;
    return c;
  }
  if (op == "linear") {
    // x [..., K], weight [N, K], bias [N]
    const int64_t K = x->size(-1), N = n.inputs[1].size(0), M = x->numel() / std::max<int64_t>(K, 1);
    const bool bias = n.inputs.size() > 2 && n.inputs[2].defined();
    c.flops_fwd = matmul_flops(M, N, K) + (bias ? double(M) * double(N) : 0.0);
    c.flops_bwd = (needs(n, 0) ? matmul_flops(M, N, K) : 0.0) + (needs(n, 1) ? matmul_flops(M, N, K) : 0.0) +
                  (bias && needs(n, 2) ? double(M) * double(N) : 0.0);
  } else if (op == "matmul") {
    // y [M, N]; K from a's size: a holds M K elements whichever way it is transposed
    const int64_t M = y->size(0), N = y->size(1), K = x->numel() / std::max<int64_t>(M, 1);
    c.flops_fwd = matmul_flops(M, N, K);
    c.flops_bwd = (needs(n, 0) ? matmul_flops(M, N, K) : 0.0) + (needs(n, 1) ? matmul_flops(M, N, K) : 0.0);
  } else if (op == "attention" || op == "attention_causal") {
    // q [B, H, Tq, D], k [B, H, Tk, D]
    const bool causal = op == "attention_causal" || n.attr("causal") != 0;
    const int64_t B = x->size(0), H = x->size(1), Tq = x->size(2), D = x->size(3), Tk = n.inputs[1].size(2);
    c.flops_fwd = attention_flops(B, H, Tq, Tk, D, causal);
    c.flops_bwd = attention_backward_flops(B, H, Tq, Tk, D, causal);
  } else if (op == "conv2d") {
    // x [N, Cin, H, W], weight [Cout, Cin, kh, kw], y [N, Cout, Ho, Wo]
    const Tensor& w = n.inputs[1];
    const int64_t N = x->size(0), Cin = x->size(1), Cout = w.size(0), kh = w.size(2), kw = w.size(3);
    const int64_t Ho = y->size(2), Wo = y->size(3);
    const bool bias = n.inputs.size() > 2 && n.inputs[2].defined();
    const double f = conv2d_flops(N, Cout, Ho, Wo, Cin, kh, kw),
                 nb = double(N) * double(Cout) * double(Ho) * double(Wo);
    c.flops_fwd = f + (bias ? nb : 0.0);
    c.flops_bwd = (needs(n, 0) ? f : 0.0) + (needs(n, 1) ? f : 0.0) + (bias && needs(n, 2) ? nb : 0.0);
  } else if (op == "layer_norm" || op == "batch_norm2d" || op == "batch_norm2d_relu") {
    const double relu = op == "batch_norm2d_relu" ? 1.0 : 0.0;  // the max, and the mask of dy
    c.flops_fwd = (8.0 + relu) * numel_of(n, 0);
    c.flops_bwd = (16.0 + relu) * numel_of(n, 0);
  } else if (op == "l2_normalize") {
    c.flops_fwd = 3.0 * numel_of(n, 0);
    c.flops_bwd = 6.0 * numel_of(n, 0);
  } else if (elementwise_ops().count(op)) {
    int with_grad = 0;
    for (size_t i = 0; i < n.inputs.size(); ++i) with_grad += needs(n, i) ? 1 : 0;
    c.flops_fwd = numel_of(n, 0, /*output=*/true);
    c.flops_bwd = numel_of(n, 0, true) * with_grad;
  } else if (op == "mean" || op == "sum_all" || op == "avg_pool2d") {
    c.flops_fwd = numel_of(n, 0);
    c.flops_bwd = needs(n, 0) ? numel_of(n, 0) : 0.0;
  } else if (op == "embedding") {
    c.flops_fwd = 0;
    c.flops_bwd = needs(n, 0) ? numel_of(n, 0, true) : 0.0;
  } else if (op == "softmax_cross_entropy") {
    c.flops_fwd = 4.0 * numel_of(n, 0);
    c.flops_bwd = 2.0 * numel_of(n, 0);
  } else if (op == "clip_loss") {
    const double N = double(x->size(0)), E = double(x->size(1)), M = double(n.inputs[1].size(0));
    c.flops_fwd = 2 * N * M * E + 3 * (N + M) * E + 7 * N * M;
    c.flops_bwd = 4 * N * M * E + 6 * (N + M) * E + 5 * N * M;
  } else if (movement_ops().count(op)) {
    // data movement only
  } else {
    c.known = false;
  }
  return c;
}

namespace {

void add_into(Row& r, const Node& n, const Cost& c) {
  r.calls += 1;
  r.cost.flops_fwd += c.flops_fwd;
  r.cost.flops_bwd += c.flops_bwd;
  r.cost.bytes_fwd += c.bytes_fwd;
  r.cost.bytes_bwd += c.bytes_bwd;
  r.cost.known = r.cost.known && c.known;
  r.fwd_seconds += n.forward_seconds;
  r.bwd_seconds += n.backward_seconds;
}

std::vector<Row> sorted_by_time(std::map<std::string, Row>& m) {
  std::vector<Row> v;
  for (auto& [k, r] : m) v.push_back(r);
  std::stable_sort(v.begin(), v.end(), [](const Row& a, const Row& b) { return a.seconds() > b.seconds(); });
  return v;
}

}  // namespace

StepProfile profile_tape(const Tape& tape, double step_seconds, int depth) {
  StepProfile p;
  p.device = "cpu";
  p.step_seconds = step_seconds;
  p.depth = depth;
  p.total.key = "total";
  std::map<std::string, Row> by_op, by_module;
  std::set<std::string> unknown;
  for (const Node& n : tape.nodes()) {
    const Cost c = node_cost(n);
    if (!c.known) unknown.insert(n.op);
    add_into(p.total, n, c);
    Row& o = by_op[n.op];
    o.key = o.op = n.op;
    add_into(o, n, c);
    const std::string module = n.scope.empty() ? "(top level)" : inspect::truncate_path(n.scope, depth);
    Row& m = by_module[module];
    m.key = module;
    add_into(m, n, c);
    Row r;
    r.key = n.name.empty() ? (n.scope.empty() ? n.op : n.scope + "." + n.op) : n.name;
    r.op = n.op;
    add_into(r, n, c);
    p.by_name.push_back(r);
  }
  p.by_op = sorted_by_time(by_op);
  p.by_module = sorted_by_time(by_module);
  p.unknown_ops.assign(unknown.begin(), unknown.end());
  return p;
}

double peak_bf16_flops(const std::string& gpu_name) {
  // Dense (no 2:4 sparsity) bf16 tensor-core peaks from the vendors' data sheets, in TFLOP/s.
  // Longer names first: "H100 PCIe" before "H100", "A100" before "A10", "L40S" before "L4".
  static const std::vector<std::pair<std::string, double>> table = {
      {"GH200", 989.4}, {"H200", 989.4}, {"H100 PCIe", 756.0}, {"H100 NVL", 835.0}, {"H100", 989.4},
      {"B200", 2250.0}, {"A100", 312.0}, {"A10G", 70.0},       {"A10", 125.0},      {"L40S", 362.05},
      {"L40", 181.05},  {"L4", 121.0},   {"RTX 4090", 165.2},  {"RTX 3090", 71.0},
  };
  for (const auto& [key, tflops] : table)
    if (gpu_name.find(key) != std::string::npos) return tflops * 1e12;
  return 0.0;
}

namespace {

nlohmann::json row_json(const Row& r, double step_seconds) {
  nlohmann::json j;
  j["name"] = r.key;
  if (!r.op.empty()) j["op"] = r.op;
  j["calls"] = r.calls;
  j["flops_fwd"] = r.cost.flops_fwd;
  j["flops_bwd"] = r.cost.flops_bwd;
  j["bytes_fwd"] = r.cost.bytes_fwd;
  j["bytes_bwd"] = r.cost.bytes_bwd;
  j["seconds_fwd"] = r.fwd_seconds;
  j["seconds_bwd"] = r.bwd_seconds;
  j["share"] = step_seconds > 0 ? r.seconds() / step_seconds : 0.0;
  j["flops_per_second"] = r.seconds() > 0 ? r.flops() / r.seconds() : 0.0;
  if (!r.cost.known) j["flops_formula"] = false;
  return j;
}

std::string human(double v, const char* unit) {
  static const char* prefixes[] = {"", "K", "M", "G", "T", "P"};
  int i = 0;
  while (v >= 1000.0 && i < 5) {
    v /= 1000.0;
    ++i;
  }
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.3g %s%s", v, prefixes[i], unit);
  return buf;
}

std::string ms(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f", s * 1e3);
  return buf;
}

std::string pct(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f%%", x * 100.0);
  return buf;
}

void table(std::ostringstream& out, const std::string& title, const std::vector<Row>& rows, double step_seconds,
           size_t top) {
  std::vector<std::vector<std::string>> cells;
  cells.push_back({title, "calls", "fwd FLOP", "bwd FLOP", "bytes", "fwd ms", "bwd ms", "share", "FLOP/s"});
  size_t shown = 0;
  for (const Row& r : rows) {
    if (top && shown >= top) break;
    ++shown;
    cells.push_back({r.key + (r.cost.known ? "" : " (?)"), std::to_string(r.calls), human(r.cost.flops_fwd, ""),
                     human(r.cost.flops_bwd, ""), human(r.cost.bytes_fwd + r.cost.bytes_bwd, "B"), ms(r.fwd_seconds),
                     ms(r.bwd_seconds), pct(step_seconds > 0 ? r.seconds() / step_seconds : 0),
                     r.seconds() > 0 ? human(r.flops() / r.seconds(), "") : "-"});
  }
  std::vector<size_t> w(cells[0].size(), 0);
  for (const auto& c : cells)
    for (size_t i = 0; i < c.size(); ++i) w[i] = std::max(w[i], c[i].size());
  for (const auto& c : cells) {
    std::string line;
    for (size_t i = 0; i < c.size(); ++i) {
      std::string cell = c[i];
      if (i == 0) {
        cell.resize(w[i], ' ');
      } else {
        cell = std::string(w[i] - cell.size(), ' ') + cell;
      }
      line += (i ? "  " : "") + cell;
    }
    out << line << "\n";
  }
  if (top && rows.size() > shown) out << "  ... " << rows.size() - shown << " more (all of them in the JSON)\n";
  out << "\n";
}

}  // namespace

nlohmann::json to_json(const StepProfile& p) {
  nlohmann::json j;
  j["device"] = p.device;
  j["gpu"] = p.gpu;
  j["step_seconds"] = p.step_seconds;
  j["total"] = row_json(p.total, p.step_seconds);
  j["achieved_flops_per_second"] = p.achieved_flops();
  if (p.gpu) {
    j["peak_bf16_flops_per_second"] = p.peak_flops;
    j["mfu"] = p.mfu();
  }
  j["module_depth"] = p.depth;
  j["unknown_ops"] = p.unknown_ops;
  for (const char* key : {"by_op", "by_module", "by_name"}) j[key] = nlohmann::json::array();
  for (const Row& r : p.by_op) j["by_op"].push_back(row_json(r, p.step_seconds));
  for (const Row& r : p.by_module) j["by_module"].push_back(row_json(r, p.step_seconds));
  for (const Row& r : p.by_name) j["by_name"].push_back(row_json(r, p.step_seconds));
  j["formulas"] = "engine/profile.h";
  return j;
}

std::string format_profile(const StepProfile& p, size_t top) {
  std::ostringstream out;
  table(out, "op", p.by_op, p.step_seconds, 0);
  table(out, "module (depth " + std::to_string(p.depth) + ")", p.by_module, p.step_seconds, top);
  std::vector<Row> named = p.by_name;
  std::stable_sort(named.begin(), named.end(), [](const Row& a, const Row& b) { return a.seconds() > b.seconds(); });
  table(out, "named op (most time first)", named, p.step_seconds, top);
  const double recorded = p.total.seconds();
  out << "step: " << ms(p.step_seconds) << " ms wall (" << ms(recorded) << " ms in " << p.total.calls
      << " recorded ops, " << pct(p.step_seconds > 0 ? recorded / p.step_seconds : 0) << ")\n";
  out << "FLOPs: " << human(p.total.cost.flops_fwd, "") << " forward + " << human(p.total.cost.flops_bwd, "")
      << " backward = " << human(p.total.flops(), "FLOP") << "; bytes moved "
      << human(p.total.cost.bytes_fwd + p.total.cost.bytes_bwd, "B") << "\n";
  out << "achieved: " << human(p.achieved_flops(), "FLOP/s");
  if (p.gpu) {
    if (p.peak_flops > 0) {
      out << " on " << p.device << " = " << pct(p.mfu()) << " MFU (of a " << human(p.peak_flops, "FLOP/s")
          << " dense bf16 peak)\n";
    } else {
      out << " on " << p.device << " (peak unknown: pass --peak-tflops for the MFU)\n";
    }
  } else {
    out << " on the CPU (MFU is reported on a GPU only)\n";
  }
  if (!p.unknown_ops.empty()) {
    out << "ops without a FLOP formula (counted as 0, marked (?)):";
    for (const std::string& o : p.unknown_ops) out << " " << o;
    out << "\n";
  }
  return out.str();
}

}  // namespace clipcu::profile
