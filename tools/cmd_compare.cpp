// clipcu compare: two named dumps side by side (CPU vs GPU, fp32 vs bf16, clipcu vs PyTorch).
//
//   clipcu compare A.safetensors B.safetensors [--rtol R] [--atol A] [--prefix-a P] [--prefix-b P]
//                  [--match GLOB]... [--rows N]
//
// One row per tensor present in both (B is the reference): shape, norm-wise relative error
// ||A - B|| / ||B||, max abs error, the multi-index of the first largest difference and both
// values there; worst first. Names present in one file only are listed. Exit status 1 when a
// tensor is past --rtol (and --atol, when given), when shapes differ, or when the files have no
// name in common.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "engine/inspect.h"
#include "tools/command.h"

namespace clipcu::tools {
namespace {

struct CompareArgs {
  std::string a, b;
  inspect::CompareOptions opt;
  size_t rows = 0;
};

int run_compare(const CompareArgs& a) {
  const inspect::CompareResult r = inspect::compare_files(a.a, a.b, a.opt);
  std::fputs(inspect::format_compare(r, a.opt, a.a, a.b, a.rows).c_str(), stdout);
  if (r.rows.empty()) {
    std::fprintf(stderr, "compare: the two files have no tensor name in common%s\n",
                 a.opt.prefix_a.empty() && a.opt.prefix_b.empty() ? " (see --prefix-a / --prefix-b)" : "");
    return 1;
  }
  return r.ok() ? 0 : 1;
}

Command compare_cmd(
    "compare", "compare two tensor dumps name by name (relative error, worst first)", [](CLI::App& app) {
      auto a = std::make_shared<CompareArgs>();
      app.add_option("A", a->a, "a safetensors file")->required();
      app.add_option("B", a->b, "the reference safetensors file")->required();
      app.add_option("--rtol", a->opt.rtol, "norm-wise relative error allowed per tensor")->capture_default_str();
      app.add_option("--atol", a->opt.atol,
                     "a tensor also passes when its max abs error is within this (0: off); for "
                     "tensors that are zero in exact arithmetic");
      app.add_option("--prefix-a", a->opt.prefix_a,
                     "only A's names starting with this, compared without it (e.g. 'grad:')");
      app.add_option("--prefix-b", a->opt.prefix_b,
                     "only B's names starting with this, compared without it (e.g. 'eval.')");
      app.add_option("--match", a->opt.match, "only names matching this glob (repeatable)");
      app.add_option("--rows", a->rows, "print at most this many rows (0: all)");
      return [a]() { return run_compare(*a); };
    });

}  // namespace
}  // namespace clipcu::tools
