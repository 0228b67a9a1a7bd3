// Names on the tape (engine/autograd.h, engine/inspect.h), `clipcu inspect` on the tiny golden
// models (features, logits, loss and every parameter gradient against the reference, read back
// from the dump under their names), and `clipcu graph` (engine/graph.h): a valid DOT file with
// the module clusters and collapsed blocks, and an SVG when Graphviz's dot is installed.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <sstream>

#include "engine/autograd.h"
#include "engine/graph.h"
#include "engine/inspect.h"
#include "engine/ops.h"
#include "tests/support.h"

using namespace clipcu;

namespace {

Tensor input(const Shape& s, uint64_t seed, bool grad = true) {
  return test::make_input(s, test::Fill::Random, seed, grad, DType::F32);
}

std::map<std::string, Tensor> as_map(const st::NamedTensors& ts) {
  std::map<std::string, Tensor> m;
  for (const auto& [n, t] : ts) m.emplace(n, t);
  return m;
}

st::NamedTensors read_all(const std::string& path) {
  st::File f = st::File::open(path);
  st::NamedTensors out;
  for (const std::string& n : f.names()) out.emplace_back(n, f.get(n));
  return out;
}

std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// `clipcu inspect` on a tiny golden model with the golden inputs; returns the dump's tensors.
std::map<std::string, Tensor> inspect_golden(const std::string& model, bool train_step, const std::string& extra = "") {
  const std::string dir = test::temp_dir("inspect_" + model);
  const std::string out = dir + "/dump.safetensors";
  const std::string io = test::golden_path(model + ".io.safetensors");
  // --device cpu: the CPU oracle (on a GPU machine auto would pick the GPU)
  const std::string cmd = test::clipcu_binary() + " inspect --device cpu --config " + test::golden_path(model + ".config.json") +
                          " --weights " + test::golden_path(model + ".weights.safetensors") + " --pixels " + io +
                          " --tokens " + io + (train_step ? " --train-step" : "") + extra + " --out " + out;
  std::string log;
  const int rc = test::run_command(cmd, &log);
  REQUIRE_MESSAGE(rc == 0, cmd << "\n" << log);
  return as_map(read_all(out));
}

const Tensor& get(const std::map<std::string, Tensor>& m, const std::string& name) {
  auto it = m.find(name);
  REQUIRE_MESSAGE(it != m.end(), "the dump has no tensor named '" << name << "'");
  return it->second;
}

// Every parameter gradient "grad.<p>" of the golden io file against our "grad:<p>".
void check_parameter_gradients(const std::map<std::string, Tensor>& dump, const std::string& model) {
  const st::File& io = test::golden(model + ".io.safetensors");
  test::WorstError worst;
  worst.group = model + " parameter gradients (grad:<p> vs golden grad.<p>)";
  int n = 0;
  for (const std::string& name : io.names()) {
    if (name.rfind("grad.", 0) != 0) continue;
    const std::string param = name.substr(5);
    const Tensor ref = io.get(name);
    const Tensor& ours = get(dump, "grad:" + param);
    REQUIRE_MESSAGE(ours.numel() == ref.numel(), param);
    ++n;
    double ref_norm = 0;
    for (double v : ref.to_f64_vector()) ref_norm += v * v;
    ref_norm = std::sqrt(ref_norm);
    if (ref_norm < 1e-12) {
      // Zero in exact arithmetic (attention's key bias: softmax ignores a shift shared by all
      // keys of a query); the float64 reference holds only roundoff, so a relative error means
      // nothing. Ours must be roundoff too: tiny next to the other gradients (~1e-2).
      const double abs_err = test::max_abs_err(ours.view(ref.shape()), ref);
      CHECK_MESSAGE(abs_err < 1e-6, param << ": " << abs_err);
      continue;
    }
    const double err = test::rel_err(ours.view(ref.shape()), ref);
    worst.add(param, err);
    CHECK_MESSAGE(err <= 1e-4, param << ": relative error " << err);
  }
  CHECK(n > 50);  // every parameter of the model, not a handful
}

}  // namespace

TEST_CASE("tape names: scope + op with #k for repeats in one scope and counters that restart with the tape") {
  tape().clear();
  Tensor x = input({3, 5}, 1), w = input({5, 5}, 2);
  {
    NameScope a("net"), b("blocks"), c("0");
    Tensor h = ops::linear(ops::linear(x, w), w);
    CHECK(h.name() == "net.blocks.0.linear#1");
    CHECK(tape().nodes()[0].name == "net.blocks.0.linear");
    CHECK(tape().nodes()[1].name == "net.blocks.0.linear#1");
    CHECK(tape().nodes()[1].scope == "net.blocks.0");
  }
  Tensor y = ops::relu(x);
  CHECK(y.name() == "relu");  // no scope: the op's name alone
  tape().clear();
  {
    NameScope a("net"), b("blocks"), c("0");
    CHECK(ops::linear(x, w).name() == "net.blocks.0.linear");  // counters restarted
  }
  tape().clear();
}

TEST_CASE("module outputs and gradients by name on a hand-built tape") {
  tape().clear();
  Tensor x = input({4, 6}, 1), w1 = input({6, 6}, 2), w2 = input({2, 6}, 3);
  x.set_name("x");
  w1.set_name("w1");
  Tensor y;
  {
    NameScope m("model");
    Tensor h;
    {
      NameScope l("layer"), i("1");
      h = ops::add(ops::relu(ops::linear(x, w1)), x);  // residual
    }
    NameScope head("head");
    y = ops::sum_all(ops::linear(h, w2));
  }
  backward(y, Tensor(), /*retain=*/true);
  const auto mods = inspect::module_outputs(tape());
  std::map<std::string, size_t> m(mods.begin(), mods.end());
  REQUIRE(m.count("model.layer.1"));
  CHECK(m["model.layer"] == m["model.layer.1"]);
  CHECK(tape().nodes()[m["model.layer.1"]].name == "model.layer.1.add");
  CHECK(tape().nodes()[m["model"]].name == "model.head.sum_all");

  const st::NamedTensors ts = inspect::tape_tensors(tape());
  auto named = as_map(ts);
  CHECK(named.count("model.layer.1.linear"));
  CHECK(named.count("model.layer.1"));  // the module output
  CHECK(named.at("model.layer.1").id() == named.at("model.layer.1.add").id());
  const auto grads = as_map(inspect::gradients_of(ts));
  // d(sum(h W2^T))/dh = ones [4] x W2 summed over outputs: every row equals the column sums of W2
  const Tensor& gh = grads.at("grad:model.layer.1");
  const std::vector<float> w2v = w2.to_f32_vector(), ghv = gh.to_f32_vector();
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 6; ++c) CHECK(ghv[size_t(r * 6 + c)] == doctest::Approx(w2v[size_t(c)] + w2v[size_t(6 + c)]));
  CHECK(grads.count("grad:model.layer.1.linear"));
  // asked for by name
  CHECK(inspect::find(tape(), "model.layer.1").id() == named.at("model.layer.1.add").id());
  CHECK(test::rel_err(inspect::find(tape(), "grad:model.layer.1"), gh) == 0);
  CHECK(test::rel_err(inspect::find(tape(), "grad:model.head.linear"), Tensor::ones({4, 2})) == 0);
  CHECK_THROWS_WITH_AS(inspect::find(tape(), "model.layer.1.linearx"), doctest::Contains("near: model.layer.1.linear"),
                       Error);
  // globs cross dots
  const auto kept = inspect::filter(ts, {"model.*.linear"});
  CHECK(kept.size() == 2);
  CHECK(inspect::glob_match("grad:model.layer.*", "grad:model.layer.1.add"));
  CHECK_FALSE(inspect::glob_match("model.head", "model.head.linear"));
  CHECK(inspect::module_components("visual.transformer.resblocks.11.attn") ==
        std::vector<std::string>{"visual", "transformer", "resblocks.11", "attn"});
  CHECK(inspect::truncate_path("visual.layer4.2.downsample.0", 2) == "visual.layer4.2");
  tape().clear();
}

TEST_CASE("inspect on the tiny ViT in inference mode: features and logits equal the golden ones under their names") {
  const auto dump = inspect_golden("clip_vit_tiny", false);
  const st::File& io = test::golden("clip_vit_tiny.io.safetensors");
  for (const char* name : {"image_features", "text_features", "logits_per_image"})
    test::check_close(get(dump, name), io.get(std::string("eval.") + name), 1e-5, name);
  // the module outputs of the towers are the features
  CHECK(test::rel_err(get(dump, "visual"), get(dump, "image_features")) == 0);
  CHECK(test::rel_err(get(dump, "text"), get(dump, "text_features")) == 0);
  // intermediate activations, by module path
  CHECK(get(dump, "visual.transformer.resblocks.0.attn.attention").shape() == Shape{5, 2, 17, 64});
  CHECK(get(dump, "text.transformer.resblocks.1.attn.attention").shape() == Shape{5, 2, 16, 32});
  CHECK(get(dump, "visual.transformer.resblocks.1.attn.split_qkv_heads.2").shape() == Shape{5, 2, 17, 64});  // v
  CHECK(get(dump, "visual.transformer.resblocks.1.add#1").shape() == Shape{5, 17, 128});  // after the MLP
  CHECK(get(dump, "visual.transformer.resblocks.1").shape() == Shape{5, 17, 128});
  CHECK(get(dump, "visual.ln_post").shape() == Shape{5, 128});
  CHECK(test::rel_err(get(dump, "input.images"), io.get("input.images")) == 0);
  // no backward in inference mode
  for (const auto& [name, t] : dump) CHECK_MESSAGE(name.rfind("grad:", 0) != 0, name);
}

TEST_CASE("inspect on the tiny ViT for a training step: loss and features and every parameter gradient") {
  const auto dump = inspect_golden("clip_vit_tiny", true);
  const st::File& io = test::golden("clip_vit_tiny.io.safetensors");
  test::check_close(get(dump, "loss"), io.get("train.step0.loss"), 1e-5, "loss");
  for (const char* name : {"image_features", "text_features", "logits_per_image"})
    test::check_close(get(dump, name), io.get(std::string("train.step0.") + name), 1e-5, name);
  check_parameter_gradients(dump, "clip_vit_tiny");
  // activation gradients, by name
  CHECK(get(dump, "grad:visual.transformer.resblocks.0.attn.attention").shape() == Shape{5, 2, 17, 64});
  CHECK(get(dump, "grad:text.transformer.resblocks.0").shape() == Shape{5, 16, 64});
  CHECK(get(dump, "grad:loss").item() == 1.0);
  CHECK(test::rel_err(get(dump, "grad:visual"), get(dump, "grad:image_features")) == 0);
}

TEST_CASE(
    "inspect on the tiny ModifiedResNet for a training step: BatchNorm batch statistics and every parameter gradient") {
  const auto dump = inspect_golden("clip_rn_tiny", true);
  const st::File& io = test::golden("clip_rn_tiny.io.safetensors");
  test::check_close(get(dump, "loss"), io.get("train.step0.loss"), 1e-5, "loss");
  for (const char* name : {"image_features", "text_features", "logits_per_image"})
    test::check_close(get(dump, name), io.get(std::string("train.step0.") + name), 1e-5, name);
  check_parameter_gradients(dump, "clip_rn_tiny");
  // a Bottleneck's ReLU after the residual add (the other two are fused into bn1 / bn2)
  CHECK(get(dump, "visual.layer2.0.relu").dim() == 4);
  CHECK(get(dump, "visual.layer2.0.bn1.batch_norm2d_relu").dim() == 4);
  CHECK(get(dump, "grad:visual.attnpool").shape() == Shape{5, 32});
}

TEST_CASE("inspect --match keeps only the matching names and compare checks the dump against the golden file") {
  const std::string model = "clip_vit_tiny";
  const auto dump = inspect_golden(model, true, " --match 'grad:visual.conv1*' --match '*_features'");
  std::vector<std::string> names;
  for (const auto& [n, t] : dump) names.push_back(n);
  std::sort(names.begin(), names.end());
  // ('*' crosses the ':' too: the features' gradients match '*_features')
  CHECK(names == std::vector<std::string>{"grad:image_features", "grad:text_features", "grad:visual.conv1",
                                          "grad:visual.conv1.conv2d", "grad:visual.conv1.weight", "image_features",
                                          "text_features"});
  // The whole gradient set through `clipcu compare`, as a user would check it.
  const std::string dir = test::temp_dir("inspect_compare");
  const std::string io = test::golden_path(model + ".io.safetensors");
  std::string log;
  REQUIRE(test::run_command(test::clipcu_binary() + " inspect --device cpu --config " + test::golden_path(model + ".config.json") +
                                " --weights " + test::golden_path(model + ".weights.safetensors") + " --pixels " + io +
                                " --tokens " + io + " --train-step --match 'grad:*' --out " + dir + "/g.safetensors",
                            &log) == 0);
  const int rc = test::run_command(test::clipcu_binary() + " compare " + dir + "/g.safetensors " + io +
                                       " --prefix-a grad: --prefix-b grad. --rtol 1e-4",
                                   &log);
  CHECK_MESSAGE(rc == 0, log);
  CHECK(log.find("tensor(s) only in B") == std::string::npos);  // every golden gradient was dumped
}

TEST_CASE("graph of a hand-built tape: clusters per module and collapsed blocks with forward and backward edges") {
  tape().clear();
  Tensor x = input({2, 4}, 1, false), w = input({4, 4}, 2);
  x.set_name("input.x");
  {
    NameScope net("net");
    Tensor h = x;
    for (int i = 0; i < 2; ++i) {
      NameScope b("blocks"), idx(std::to_string(i)), fc("fc");
      h = ops::relu(ops::linear(h, w));
    }
    ops::sum_all(h);
  }
  graph::Options opt;
  const std::string full = graph::to_dot(tape(), opt);
  CHECK(full.find("digraph clipcu {") == 0);
  CHECK(std::count(full.begin(), full.end(), '{') == std::count(full.begin(), full.end(), '}'));
  CHECK(full.find("subgraph \"cluster_net.blocks.0.fc\"") != std::string::npos);
  CHECK(full.find("\"input:input.x\"") != std::string::npos);
  CHECK(full.find("style=dashed") != std::string::npos);
  CHECK(full.find("label=\"linear\\n[2, 4]\"") != std::string::npos);
  opt.depth = 2;  // "net", "blocks.0": one box per block
  const std::string collapsed = graph::to_dot(tape(), opt);
  CHECK(collapsed.find("\"block:net.blocks.0\"") != std::string::npos);
  CHECK(collapsed.find("\"block:net.blocks.0\" -> \"block:net.blocks.1\"") != std::string::npos);
  CHECK(collapsed.find("\"block:net.blocks.1\" -> \"block:net.blocks.0\" [style=dashed") != std::string::npos);
  CHECK(collapsed.find("2 ops") != std::string::npos);
  CHECK(collapsed.find("cluster_net.blocks.0") == std::string::npos);
  opt.backward_edges = false;
  CHECK(graph::to_dot(tape(), opt).find("style=dashed") == std::string::npos);
  tape().clear();
}

TEST_CASE("clipcu graph on the tiny ViT: DOT with module clusters and one box per block and an SVG through dot") {
  const std::string dir = test::temp_dir("graph");
  const std::string base = test::clipcu_binary() + " graph --device cpu --config " + test::golden_path("clip_vit_tiny.config.json") +
                           " --depth 3 --train-step";
  std::string log;
  REQUIRE_MESSAGE(test::run_command(base + " --format dot --out " + dir + "/g.dot", &log) == 0, log);
  const std::string dot = slurp(dir + "/g.dot");
  CHECK(dot.find("digraph clipcu {") == 0);
  CHECK(std::count(dot.begin(), dot.end(), '{') == std::count(dot.begin(), dot.end(), '}'));
  for (const char* s : {"subgraph \"cluster_visual\"", "subgraph \"cluster_visual.transformer\"",
                        "subgraph \"cluster_text.transformer\"", "subgraph \"cluster_loss\"",
                        "\"block:visual.transformer.resblocks.0\"", "\"block:visual.transformer.resblocks.1\"",
                        "\"block:text.transformer.resblocks.1\"", "\"input:input.images\"", "\"input:input.text\"",
                        "label=\"clip_loss\\n[1]\""})
    CHECK_MESSAGE(dot.find(s) != std::string::npos, s);
  if (test::run_command("command -v dot") != 0) {
    MESSAGE("SKIPPED the SVG check: Graphviz's dot is not installed");
    return;
  }
  REQUIRE_MESSAGE(test::run_command(base + " --out " + dir + "/g.svg", &log) == 0, log);
  const std::string svg = slurp(dir + "/g.svg");
  CHECK(svg.find("<svg") != std::string::npos);
  CHECK(svg.find("resblocks.0") != std::string::npos);
}
