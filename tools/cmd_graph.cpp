// clipcu graph: a picture of the recorded graph of one step, through Graphviz's dot.
//
//   clipcu graph --config C.json [--weights W] [inputs as for inspect] [--train-step]
//                [--depth N] [--params] [--no-backward] [--format svg|png|pdf|dot] --out FILE
//
// Ops are boxes with their output shapes, grouped in one cluster per module; --depth N draws
// every module path of N or more components as one box (--depth 3: one box per transformer
// block); solid edges run forward, dashed red ones where gradients flow back. Without inputs the
// graph is recorded on random ones (--batch, default 2): only shapes matter here.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "engine/graph.h"
#include "tools/command.h"
#include "tools/inspect_cli.h"

namespace clipcu::tools {
namespace {

struct GraphArgs {
  ModelInputArgs m;
  graph::Options opt;
  bool no_backward = false;
  std::string format, out;
};

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

int run_graph(GraphArgs& a) {
  std::string format = a.format;
  if (format.empty()) {
    std::string ext = std::filesystem::path(a.out).extension().string();
    format = ext.empty() ? "svg" : ext.substr(1);
  }
  CLIPCU_CHECK(format == "svg" || format == "png" || format == "pdf" || format == "dot",
               "graph: unknown format '" << format << "' (svg, png, pdf or dot)");
  CLIPCU_CHECK(a.opt.depth >= 0, "graph: --depth must be >= 0");
  a.opt.backward_edges = !a.no_backward;
  std::unique_ptr<models::CLIP> model = load_model(a.m);
  const inspect::Inputs in = inspect::load_inputs(a.m.inputs, model->config());
  inspect::run_step(*model, in, a.m.train_step);
  if (a.opt.title.empty())
    a.opt.title = std::string("clipcu: ") + (a.m.train_step ? "training step" : "inference") +
                  (a.opt.depth > 0 ? ", module paths cut at depth " + std::to_string(a.opt.depth) : "");
  const std::string dot = graph::to_dot(tape(), a.opt);
  const size_t ops = tape().size();
  tape().clear();

  const std::string dot_path = format == "dot" ? a.out : a.out + ".dot";
  {
    std::ofstream f(dot_path);
    CLIPCU_CHECK(f, "graph: cannot write '" << dot_path << "'");
    f << dot;
    CLIPCU_CHECK(f.good(), "graph: writing '" << dot_path << "' failed");
  }
  if (format != "dot") {
    CLIPCU_CHECK(std::system("command -v dot >/dev/null 2>&1") == 0,
                 "graph: Graphviz's `dot` is not installed (apt-get install graphviz), or write --format dot; the "
                 "DOT text is in '"
                     << dot_path << "'");
    const std::string cmd = "dot -T" + format + " " + shell_quote(dot_path) + " -o " + shell_quote(a.out);
    const int rc = std::system(cmd.c_str());
    CLIPCU_CHECK(rc == 0, "graph: `" << cmd << "` failed (status " << rc << ")");
    std::filesystem::remove(dot_path);
  }
  std::fprintf(stderr, "graph: %zu ops -> %s\n", ops, a.out.c_str());
  return 0;
}

Command graph_cmd("graph", "draw the recorded graph of one step (Graphviz), collapsible per module", [](CLI::App& app) {
  auto a = std::make_shared<GraphArgs>();
  add_model_input_options(app, a->m, /*default_batch=*/2);
  app.add_flag("--train-step", a->m.train_step, "record a training step (loss included)");
  app.add_option("--depth", a->opt.depth, "draw module paths of this many components or more as one box (0: every op)")
      ->capture_default_str();
  app.add_flag("--params", a->opt.params, "draw the parameters too");
  app.add_flag("--no-backward", a->no_backward, "leave out the dashed gradient edges");
  app.add_option("--format", a->format, "svg, png, pdf or dot (default: from --out's extension)");
  app.add_option("--title", a->opt.title, "the picture's title");
  app.add_option("--out", a->out, "the output file")->required();
  return [a]() { return run_graph(*a); };
});

}  // namespace
}  // namespace clipcu::tools
