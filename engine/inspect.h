// Names for everything on the tape, and the comparison of two named dumps.
//
// The naming scheme (docs/inspect.md has the full table):
//   <scope>.<op>[#k]    the output of one recorded op: the module path it ran under plus the op
//                       name, "#k" for the (k+1)-th op of that name in the same scope
//                       ("visual.transformer.resblocks.0.attn.attention", "....resblocks.0.add#1");
//                       output i of a several-output op gets ".<i>" (engine/autograd.h)
//   <module path>       the output of a module's forward: the last op recorded inside that path
//                       ("visual.transformer.resblocks.0", "visual.layer1", "visual"), the same
//                       names PyTorch's named_modules() gives (tools/torch_dump.py)
//   <parameter name>    state-dict names (Module::name_tensors): "visual.conv1.weight"
//   grad:<any of those> d(loss)/d(that tensor) after backward: "grad:visual.conv1.weight",
//                       "grad:visual.transformer.resblocks.0.attn.attention"
// Names match globs with fnmatch(3) without flags: "*" crosses dots ("visual.*.attn.attention").
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "engine/autograd.h"
#include "weights/safetensors.h"

namespace clipcu::inspect {

inline constexpr const char* kGradPrefix = "grad:";
inline std::string grad_name(const std::string& name) { return kGradPrefix + name; }

// fnmatch(pattern, name, 0) == 0.
bool glob_match(const std::string& pattern, const std::string& name);
// True when any pattern matches (an empty list matches everything).
bool glob_match_any(const std::vector<std::string>& patterns, const std::string& name);

// A module path split into module components: dots separate components, except that a numeric
// component stays with the one before it, because it indexes a list of modules registered
// under one name ("resblocks.3", "layer2.1"):
//   "visual.transformer.resblocks.3.attn" -> {"visual", "transformer", "resblocks.3", "attn"}.
std::vector<std::string> module_components(const std::string& path);
// The first `depth` module components joined again (the whole path when it is shorter).
std::string truncate_path(const std::string& path, int depth);

// Module outputs: every dot-prefix P of every node's scope (all of "a", "a.b", "a.b.c" for a
// scope "a.b.c"), mapped to the index of the last node recorded under P (scope == P or starting
// with "P."). Listed in the order those nodes were recorded (a parent after its last child).
std::vector<std::pair<std::string, size_t>> module_outputs(const Tape& tape);

// The tape's tensors by name, in recording order: each node's outputs under their names, each
// module output (module_outputs) right after the node that produced it. Names already taken are
// not repeated (an op output named like a module keeps the op's tensor).
st::NamedTensors tape_tensors(const Tape& tape, bool with_module_outputs = true);

// "grad:<name>" -> gradient, for each tensor of the list that has one.
st::NamedTensors gradients_of(const st::NamedTensors& tensors);

// One tensor of the tape by name: an op output, a module output, or "grad:" + either (after
// backward). Throws clipcu::Error naming the tensor (and a few names that start the same way)
// when there is no such tensor or it has no gradient.
Tensor find(const Tape& tape, const std::string& name);

// Keeps the tensors whose names match any pattern (all when `patterns` is empty), dropping
// later duplicates of a name.
st::NamedTensors filter(const st::NamedTensors& tensors, const std::vector<std::string>& patterns);

// ---------------------------------------------------------------- comparison of two dumps
struct CompareOptions {
  double rtol = 1e-4;  // a tensor fails when its norm-wise relative error exceeds this
  // ... unless its max abs error is within atol (0: off). For tensors whose reference is zero in
  // exact arithmetic (the gradient of attention's key bias), where only roundoff is left and a
  // relative error means nothing.
  double atol = 0;
  std::string prefix_a, prefix_b;  // only names with these prefixes take part, matched without them
  std::vector<std::string> match;  // globs on the (prefix-stripped) names; empty: all
};

struct CompareRow {
  std::string name;  // without the prefixes
  Shape shape_a, shape_b;
  bool shape_mismatch = false;       // shapes differ (a [] scalar and a [1] tensor count as equal)
  double rel_err = 0;                // ||a - b|| / ||b|| (||a - b|| when b is all zeros); inf on a mismatch
  double max_abs = 0;                // max |a - b|
  std::vector<int64_t> worst_index;  // multi-index of the first element where |a - b| is largest
  double a_at = 0, b_at = 0;         // the two values there
  bool ok = true;                    // within rtol or atol (NaN or inf values fail unless both sides agree)
};

struct CompareResult {
  std::vector<CompareRow> rows;             // worst first: shape mismatches, then by rel_err
  std::vector<std::string> only_a, only_b;  // names present in one file only
  int failures() const;
  bool ok() const { return failures() == 0; }
};

// `b` is the reference (the denominator of the relative error).
CompareResult compare(const st::NamedTensors& a, const st::NamedTensors& b, const CompareOptions& opt);
CompareResult compare_files(const std::string& path_a, const std::string& path_b, const CompareOptions& opt);
// The table (at most max_rows rows, worst first; 0 = all) and the one-line verdict.
std::string format_compare(const CompareResult& r, const CompareOptions& opt, const std::string& label_a,
                           const std::string& label_b, size_t max_rows = 0);

}  // namespace clipcu::inspect
