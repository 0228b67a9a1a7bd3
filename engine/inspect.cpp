#include "engine/inspect.h"

#include <fnmatch.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <set>
#include <sstream>

namespace clipcu::inspect {

bool glob_match(const std::string& pattern, const std::string& name) {
  return fnmatch(pattern.c_str(), name.c_str(), 0) == 0;
}

bool glob_match_any(const std::vector<std::string>& patterns, const std::string& name) {
  if (patterns.empty()) return true;
  for (const std::string& p : patterns)
    if (glob_match(p, name)) return true;
  return false;
}

namespace {
bool all_digits(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

std::vector<std::string> split_dots(const std::string& s) {
  std::vector<std::string> parts;
  if (s.empty()) return parts;
  size_t start = 0;
  for (;;) {
    size_t dot = s.find('.', start);
    parts.push_back(s.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return parts;
}
}  // namespace

std::vector<std::string> module_components(const std::string& path) {
  std::vector<std::string> out;
  for (std::string& p : split_dots(path)) {
    if (all_digits(p) && !out.empty()) {
      out.back() += "." + p;
    } else {
      out.push_back(std::move(p));
    }
  }
  return out;
}

std::string truncate_path(const std::string& path, int depth) {
  std::vector<std::string> parts = module_components(path);
  std::string out;
  for (size_t i = 0; i < parts.size() && int(i) < depth; ++i) out += (i ? "." : "") + parts[i];
  return out;
}

std::vector<std::pair<std::string, size_t>> module_outputs(const Tape& tape) {
  std::map<std::string, size_t> last;
  const auto& nodes = tape.nodes();
  for (size_t i = 0; i < nodes.size(); ++i) {
    const std::string& scope = nodes[i].scope;
    if (scope.empty()) continue;
    for (size_t dot = scope.find('.'); dot != std::string::npos; dot = scope.find('.', dot + 1))
      last[scope.substr(0, dot)] = i;
    last[scope] = i;
  }
  std::vector<std::pair<std::string, size_t>> out(last.begin(), last.end());
  // Recording order; for one node, the deeper module first (its parent's output is the same
  // tensor, seen from further out).
  std::stable_sort(out.begin(), out.end(), [](const auto& x, const auto& y) {
    if (x.second != y.second) return x.second < y.second;
    return x.first.size() > y.first.size();
  });
  return out;
}

st::NamedTensors tape_tensors(const Tape& tape, bool with_module_outputs) {
  st::NamedTensors out;
  std::set<std::string> taken;
  std::vector<std::pair<std::string, size_t>> modules;
  if (with_module_outputs) modules = module_outputs(tape);
  // Names of op outputs win over module paths that happen to be spelled the same.
  for (const Node& n : tape.nodes())
    for (const Tensor& o : n.outputs)
      if (o.defined() && !o.name().empty()) taken.insert(o.name());
  std::set<std::string> emitted;
  size_t m = 0;
  const auto& nodes = tape.nodes();
  for (size_t i = 0; i < nodes.size(); ++i) {
    for (const Tensor& o : nodes[i].outputs) {
      if (!o.defined() || o.name().empty() || !emitted.insert(o.name()).second) continue;
      out.emplace_back(o.name(), o);
    }
    for (; m < modules.size() && modules[m].second == i; ++m) {
      const std::string& path = modules[m].first;
      // The module's output is the node's (first) output.
      const Node& n = nodes[i];
      if (n.outputs.empty() || !n.outputs[0].defined() || taken.count(path) || !emitted.insert(path).second) continue;
      out.emplace_back(path, n.outputs[0]);
    }
  }
  return out;
}

st::NamedTensors gradients_of(const st::NamedTensors& tensors) {
  st::NamedTensors out;
  for (const auto& [name, t] : tensors)
    if (t.defined() && t.has_grad()) out.emplace_back(grad_name(name), t.grad());
  return out;
}

Tensor find(const Tape& tape, const std::string& name) {
  const bool grad = name.rfind(kGradPrefix, 0) == 0;
  const std::string base = grad ? name.substr(std::string(kGradPrefix).size()) : name;
  const st::NamedTensors ts = tape_tensors(tape);
  for (const auto& [n, t] : ts) {
    if (n != base) continue;
    CLIPCU_CHECK(!grad || t.has_grad(), "'" << base
                                            << "' has no gradient (was backward run with retain = true, "
                                               "and does the loss depend on it?)");
    return grad ? t.grad() : t;
  }
  // Suggest names that share the longest prefix with the one asked for.
  size_t best = 0;
  for (const auto& [n, t] : ts) {
    size_t k = 0;
    while (k < n.size() && k < base.size() && n[k] == base[k]) ++k;
    best = std::max(best, k);
  }
  std::ostringstream near;
  int shown = 0;
  for (const auto& [n, t] : ts)
    if (best > 0 && n.compare(0, best, base, 0, best) == 0 && shown < 5) near << (shown++ ? ", " : "") << n;
  CLIPCU_FAIL("no tensor named '" << base << "' on the tape (" << ts.size() << " named tensors"
                                  << (shown ? "; near: " + near.str() : std::string()) << ")");
  return Tensor();  // not reached (CLIPCU_FAIL throws); unoptimized builds cannot see that
}

st::NamedTensors filter(const st::NamedTensors& tensors, const std::vector<std::string>& patterns) {
  st::NamedTensors out;
  std::set<std::string> seen;
  for (const auto& [name, t] : tensors)
    if (glob_match_any(patterns, name) && seen.insert(name).second) out.emplace_back(name, t);
  return out;
}

// ---------------------------------------------------------------- comparison
int CompareResult::failures() const {
  int n = 0;
  for (const CompareRow& r : rows) n += r.ok ? 0 : 1;
  return n;
}

namespace {

bool same_shape(const Shape& a, const Shape& b) {
  if (a == b) return true;
  // A 0-d scalar and a one-element vector are the same value (logit_scale is [] in OpenAI's
  // state dict, a loss is often [1]).
  return shape_numel(a) == 1 && shape_numel(b) == 1 && a.size() <= 1 && b.size() <= 1;
}

std::vector<int64_t> unravel(int64_t flat, const Shape& shape) {
  std::vector<int64_t> idx(shape.size());
  for (size_t d = shape.size(); d-- > 0;) {
    idx[d] = shape[d] ? flat % shape[d] : 0;
    flat = shape[d] ? flat / shape[d] : 0;
  }
  return idx;
}

CompareRow compare_one(const std::string& name, const Tensor& a, const Tensor& b, double rtol, double atol) {
  CompareRow r;
  r.name = name;
  r.shape_a = a.shape();
  r.shape_b = b.shape();
  r.shape_mismatch = !same_shape(a.shape(), b.shape());
  if (a.numel() != b.numel()) {
    r.rel_err = std::numeric_limits<double>::infinity();
    r.max_abs = std::numeric_limits<double>::infinity();
    r.ok = false;
    return r;
  }
  const std::vector<double> va = a.to_f64_vector(), vb = b.to_f64_vector();
  double num = 0, den = 0, worst = -1;
  int64_t at = -1;
  const double inf = std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < va.size(); ++i) {
    const double x = va[i], y = vb[i];
    double d;
    if (std::isfinite(x) && std::isfinite(y)) {
      d = x - y;
    } else if ((std::isnan(x) && std::isnan(y)) || x == y) {
      d = 0;  // the same NaN or the same infinity on both sides: they agree
    } else {
      d = inf;
    }
    num += d * d;
    if (std::isfinite(y)) den += y * y;
    if (std::fabs(d) > worst) {
      worst = std::fabs(d);
      at = int64_t(i);
    }
  }
  r.rel_err = den > 0 ? std::sqrt(num) / std::sqrt(den) : std::sqrt(num);
  r.max_abs = worst < 0 ? 0 : worst;
  if (at >= 0) {
    r.worst_index = unravel(at, a.shape());
    r.a_at = va[size_t(at)];
    r.b_at = vb[size_t(at)];
  }
  r.ok = !r.shape_mismatch && !std::isnan(r.rel_err) && (r.rel_err <= rtol || (atol > 0 && r.max_abs <= atol));
  if (r.shape_mismatch) r.rel_err = inf;
  return r;
}

st::NamedTensors with_prefix(const st::NamedTensors& ts, const std::string& prefix,
                             const std::vector<std::string>& match) {
  st::NamedTensors out;
  for (const auto& [name, t] : ts) {
    if (name.compare(0, prefix.size(), prefix) != 0) continue;
    std::string rest = name.substr(prefix.size());
    if (glob_match_any(match, rest)) out.emplace_back(rest, t);
  }
  return out;
}

std::string fmt_num(double v) {
  char buf[32];
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  if (std::isnan(v)) return "nan";
  std::snprintf(buf, sizeof buf, "%.3e", v);
  return buf;
}

std::string fmt_index(const std::vector<int64_t>& idx) {
  std::ostringstream s;
  s << '[';
  for (size_t i = 0; i < idx.size(); ++i) s << (i ? ", " : "") << idx[i];
  s << ']';
  return s.str();
}

}  // namespace

CompareResult compare(const st::NamedTensors& a_all, const st::NamedTensors& b_all, const CompareOptions& opt) {
  const st::NamedTensors a = with_prefix(a_all, opt.prefix_a, opt.match);
  const st::NamedTensors b = with_prefix(b_all, opt.prefix_b, opt.match);
  std::map<std::string, const Tensor*> bi;
  for (const auto& [name, t] : b) bi.emplace(name, &t);
  std::set<std::string> in_a;
  CompareResult r;
  for (const auto& [name, t] : a) {
    if (!in_a.insert(name).second) continue;
    auto it = bi.find(name);
    if (it == bi.end()) {
      r.only_a.push_back(name);
      continue;
    }
    r.rows.push_back(compare_one(name, t, *it->second, opt.rtol, opt.atol));
  }
  for (const auto& [name, t] : b)
    if (!in_a.count(name) && std::find(r.only_b.begin(), r.only_b.end(), name) == r.only_b.end())
      r.only_b.push_back(name);
  std::stable_sort(r.rows.begin(), r.rows.end(), [](const CompareRow& x, const CompareRow& y) {
    if (x.shape_mismatch != y.shape_mismatch) return x.shape_mismatch;
    const double ex = std::isnan(x.rel_err) ? std::numeric_limits<double>::infinity() : x.rel_err;
    const double ey = std::isnan(y.rel_err) ? std::numeric_limits<double>::infinity() : y.rel_err;
    return ex > ey;
  });
  return r;
}

CompareResult compare_files(const std::string& path_a, const std::string& path_b, const CompareOptions& opt) {
  auto load = [](const std::string& path) {
    st::File f = st::File::open(path);
    st::NamedTensors ts;
    for (const std::string& n : f.names()) ts.emplace_back(n, f.get(n));
    return ts;
  };
  return compare(load(path_a), load(path_b), opt);
}

std::string format_compare(const CompareResult& r, const CompareOptions& opt, const std::string& label_a,
                           const std::string& label_b, size_t max_rows) {
  std::ostringstream out;
  out << "A = " << label_a << (opt.prefix_a.empty() ? "" : " (prefix '" + opt.prefix_a + "')") << "\n"
      << "B = " << label_b << (opt.prefix_b.empty() ? "" : " (prefix '" + opt.prefix_b + "')")
      << " (reference: rel err = ||A - B|| / ||B||)\n";
  std::vector<std::vector<std::string>> cells;
  cells.push_back({"name", "shape", "rel err", "max abs", "at", "A there", "B there", ""});
  size_t shown = 0;
  for (const CompareRow& row : r.rows) {
    if (max_rows && shown >= max_rows) break;
    ++shown;
    std::string shape = shape_str(row.shape_a);
    if (row.shape_mismatch) shape += " vs " + shape_str(row.shape_b);
    // where the largest difference is (nothing to show when the tensors are identical)
    const bool where = row.max_abs != 0 && (!row.worst_index.empty() || row.shape_a.empty());
    cells.push_back(
        {row.name, shape, fmt_num(row.rel_err), fmt_num(row.max_abs), where ? fmt_index(row.worst_index) : "-",
         where ? fmt_num(row.a_at) : "-", where ? fmt_num(row.b_at) : "-",
         row.shape_mismatch ? "SHAPE" : (row.ok ? (row.rel_err <= opt.rtol ? "ok" : "ok (atol)") : "FAIL")});
  }
  std::vector<size_t> width(cells[0].size(), 0);
  for (const auto& c : cells)
    for (size_t i = 0; i < c.size(); ++i) width[i] = std::max(width[i], c[i].size());
  for (size_t k = 0; k < cells.size(); ++k) {
    std::string line;
    for (size_t i = 0; i < cells[k].size(); ++i) {
      std::string cell = cells[k][i];
      // names and shapes left-aligned, numbers right-aligned
      if (i <= 1 || i == 4 || i + 1 == cells[k].size()) {
        cell.resize(width[i], ' ');
      } else {
        cell = std::string(width[i] - cell.size(), ' ') + cell;
      }
      line += (i ? "  " : "") + cell;
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out << line << "\n";
  }
  if (max_rows && r.rows.size() > shown) out << "... " << r.rows.size() - shown << " more row(s) not shown\n";
  auto list = [&](const std::vector<std::string>& names, const std::string& which) {
    if (names.empty()) return;
    out << names.size() << " tensor(s) only in " << which << ":";
    for (size_t i = 0; i < names.size() && i < 20; ++i) out << (i ? ", " : " ") << names[i];
    if (names.size() > 20) out << ", ...";
    out << "\n";
  };
  list(r.only_a, "A");
  list(r.only_b, "B");
  const int fails = r.failures();
  out << r.rows.size() << " common tensor(s), " << fails << " past rtol " << fmt_num(opt.rtol)
      << (opt.atol > 0 ? " (and atol " + fmt_num(opt.atol) + ")" : "") << (fails ? ": FAIL" : ": ok") << "\n";
  return out.str();
}

}  // namespace clipcu::inspect
