// The per-op profile (engine/profile.h): FLOP and byte counts of recorded ops equal the stated
// formulas exactly (linear, matmul, attention plain and causal, conv2d), the per-op, per-module
// and per-name tables add up to the total, and `clipcu profile` on the tiny ViT reports the
// formula's FLOPs for every linear layer and every vision attention.
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <tuple>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/profile.h"
#include "tests/support.h"

using namespace clipcu;

namespace {

Tensor input(const Shape& s, uint64_t seed, bool grad = true) {
  return test::make_input(s, test::Fill::Random, seed, grad, DType::F32);
}

const Node& last_node() {
  REQUIRE(tape().size() > 0);
  return tape().nodes().back();
}

}  // namespace

TEST_CASE("linear: 2MNK (+MN bias) forward and 2MNK per weight-or-input gradient (+MN bias) backward") {
  tape().clear();
  // M = 3 * 7 rows (leading dims flatten), K = 13, N = 5
  const int64_t M = 21, K = 13, N = 5;
  Tensor x = input({3, 7, K}, 1), w = input({N, K}, 2), b = input({N}, 3);
  ops::linear(x, w, b);
  profile::Cost c = profile::node_cost(last_node());
  CHECK(c.known);
  CHECK(c.flops_fwd == 2.0 * M * N * K + M * N);
  CHECK(c.flops_bwd == 2.0 * (2.0 * M * N * K) + M * N);
  CHECK(c.bytes_fwd == 4.0 * (M * K + N * K + N + M * N));
  // backward: output grad + inputs read, each input's gradient read and written
  CHECK(c.bytes_bwd == 4.0 * (M * N + (M * K + N * K + N) + 2 * (M * K + N * K + N)));

  // An input that needs no gradient (the first layer's data) costs no dx product.
  tape().clear();
  Tensor x0 = input({M, K}, 4, /*grad=*/false);
  ops::linear(x0, w);
  c = profile::node_cost(last_node());
  CHECK(c.flops_fwd == 2.0 * M * N * K);
  CHECK(c.flops_bwd == 2.0 * M * N * K);
  CHECK(profile::matmul_flops(M, N, K) == 2.0 * M * N * K);
  tape().clear();
}

TEST_CASE("matmul: 2MNK with either operand transposed") {
  tape().clear();
  const int64_t M = 6, N = 5, K = 11;
  ops::matmul(input({M, K}, 1), input({N, K}, 2), false, /*trans_b=*/true);
  CHECK(profile::node_cost(last_node()).flops_fwd == 2.0 * M * N * K);
  CHECK(profile::node_cost(last_node()).flops_bwd == 2.0 * 2.0 * M * N * K);
  ops::matmul(input({K, M}, 3), input({K, N}, 4, false), /*trans_a=*/true, false);
  CHECK(profile::node_cost(last_node()).flops_fwd == 2.0 * M * N * K);
  CHECK(profile::node_cost(last_node()).flops_bwd == 2.0 * M * N * K);  // only a needs a gradient
  tape().clear();
}

TEST_CASE("attention: 4 B H D Tq Tk forward and twice that backward with causal counting the unmasked pairs") {
  tape().clear();
  const int64_t B = 2, H = 3, Tq = 11, Tk = 7, D = 4;
  ops::attention(input({B, H, Tq, D}, 1), input({B, H, Tk, D}, 2), input({B, H, Tk, D}, 3));
  profile::Cost c = profile::node_cost(last_node());
  CHECK(c.flops_fwd == 4.0 * B * H * D * Tq * Tk);
  CHECK(c.flops_bwd == 8.0 * B * H * D * Tq * Tk);
  CHECK(profile::attention_flops(B, H, Tq, Tk, D, false) == c.flops_fwd);

  // Causal, T = 11: query i sees keys 0..i, 11 * 12 / 2 = 66 pairs. The node says so through its
  // "causal" attr (Tape::set_attr, as the op sets it right after recording); without the attr
  // the shapes alone cannot tell, and the full Tq * Tk is counted.
  const int64_t T = 11;
  ops::attention(input({B, H, T, D}, 4), input({B, H, T, D}, 5), input({B, H, T, D}, 6), /*causal=*/true);
  if (last_node().attr("causal") == 0) {
    CHECK(profile::node_cost(last_node()).flops_fwd == 4.0 * B * H * D * T * T);
    tape().set_attr("causal", 1);
  }
  c = profile::node_cost(last_node());
  CHECK(profile::attention_pairs(T, T, true) == 66.0);
  CHECK(c.flops_fwd == 4.0 * B * H * D * 66);
  CHECK(c.flops_bwd == 8.0 * B * H * D * 66);
  tape().clear();
}

TEST_CASE("conv2d: 2 N Cout Ho Wo Cin kh kw") {
  tape().clear();
  // x [2, 3, 9, 9], weight [5, 3, 3, 3], stride 2, padding 1 -> [2, 5, 5, 5]
  ops::conv2d(input({2, 3, 9, 9}, 1, false), input({5, 3, 3, 3}, 2), input({5}, 3), 2, 1);
  const Node& n = last_node();
  REQUIRE(n.outputs[0].shape() == Shape{2, 5, 5, 5});
  profile::Cost c = profile::node_cost(n);
  const double f = 2.0 * 2 * 5 * 5 * 5 * 3 * 3 * 3, bias = 2.0 * 5 * 5 * 5;
  CHECK(c.flops_fwd == f + bias);
  CHECK(c.flops_bwd == f + bias);  // dW and db; the images need no gradient
  CHECK(profile::conv2d_flops(2, 5, 5, 5, 3, 3, 3) == f);
  tape().clear();
}

TEST_CASE("the tables add up: by op and by module and by name all sum to the total") {
  tape().clear();
  Tensor x = input({4, 8}, 1), w1 = input({16, 8}, 2), w2 = input({3, 16}, 3);
  {
    NameScope a("net");
    Tensor h;
    {
      NameScope b("fc"), b0("0");  // one component per NameScope
      h = ops::relu(ops::linear(x, w1));
    }
    NameScope c("fc"), c1("1");
    Tensor y = ops::sum_all(ops::linear(h, w2));
    backward(y, Tensor(), /*retain=*/true);
  }
  profile::StepProfile p = profile::profile_tape(tape(), 1.0, /*depth=*/2);
  auto sum = [](const std::vector<profile::Row>& rows) {
    double f = 0, b = 0;
    int64_t calls = 0;
    for (const auto& r : rows) f += r.cost.flops_fwd, b += r.cost.bytes_fwd + r.cost.bytes_bwd, calls += r.calls;
    return std::make_tuple(f, b, calls);
  };
  const auto total =
      std::make_tuple(p.total.cost.flops_fwd, p.total.cost.bytes_fwd + p.total.cost.bytes_bwd, p.total.calls);
  CHECK(sum(p.by_op) == total);
  CHECK(sum(p.by_module) == total);
  CHECK(sum(p.by_name) == total);
  CHECK(p.total.calls == 4);
  CHECK(p.total.cost.flops_fwd == 2.0 * 4 * 16 * 8 + 4 * 16 + 2.0 * 4 * 3 * 16 + 4 * 3);
  // modules at depth 2: "net.fc.0" and "net.fc.1" (a numeric index stays with its list)
  std::set<std::string> modules;
  for (const auto& r : p.by_module) modules.insert(r.key);
  CHECK(modules == std::set<std::string>{"net.fc.0", "net.fc.1"});
  std::vector<std::string> names;
  for (const auto& r : p.by_name) names.push_back(r.key);
  CHECK(names == std::vector<std::string>{"net.fc.0.linear", "net.fc.0.relu", "net.fc.1.linear", "net.fc.1.sum_all"});
  CHECK(p.unknown_ops.empty());
  // JSON and table render
  nlohmann::json j = profile::to_json(p);
  CHECK(j["by_name"].size() == 4);
  CHECK(j["total"]["flops_fwd"].get<double>() == p.total.cost.flops_fwd);
  CHECK(profile::format_profile(p).find("on the CPU") != std::string::npos);
  tape().clear();
}

TEST_CASE("peak table: dense bf16 by GPU name") {
  CHECK(profile::peak_bf16_flops("NVIDIA H100 80GB HBM3") == doctest::Approx(989.4e12));
  CHECK(profile::peak_bf16_flops("NVIDIA H100 PCIe") == doctest::Approx(756e12));
  CHECK(profile::peak_bf16_flops("NVIDIA H200") == doctest::Approx(989.4e12));
  CHECK(profile::peak_bf16_flops("NVIDIA A100-SXM4-80GB") == doctest::Approx(312e12));
  CHECK(profile::peak_bf16_flops("NVIDIA L40S") == doctest::Approx(362.05e12));
  CHECK(profile::peak_bf16_flops("some CPU") == 0);
}

TEST_CASE("clipcu profile on the tiny ViT: every linear and vision attention has the formula's FLOPs") {
  const std::string dir = test::temp_dir("profile");
  const std::string json = dir + "/p.json";
  const std::string cmd = test::clipcu_binary() + " profile --device cpu --config " +
                          test::golden_path("clip_vit_tiny.config.json") + " --batch 3 --warmup 0 --json " + json;
  std::string out;
  REQUIRE_MESSAGE(test::run_command(cmd, &out) == 0, out);
  CHECK(out.find("achieved:") != std::string::npos);
  std::ifstream f(json);
  nlohmann::json j = nlohmann::json::parse(f);
  // The tiny ViT (config): vision width 128, 2 layers, 2 heads of 64, 32 px / 8 px patches -> 17
  // tokens; text width 64, 2 layers, 2 heads of 32, 16 tokens; MLPs 4x wide; every linear has a bias.
  const int64_t B = 3, Tv = 17, Wv = 128, Tt = 16, Wt = 64;
  auto linear_fwd = [](double M, double N, double K) { return 2 * M * N * K + M * N; };
  auto block_linears = [&](double M, double W) {
    return linear_fwd(M, 3 * W, W) + linear_fwd(M, W, W) + linear_fwd(M, 4 * W, W) + linear_fwd(M, W, 4 * W);
  };
  const double expect_linear = 2 * block_linears(B * Tv, Wv) + 2 * block_linears(B * Tt, Wt);
  double linear = -1, named_sum = 0;
  for (const auto& r : j["by_op"])
    if (r["name"] == "linear") linear = r["flops_fwd"].get<double>();
  CHECK(linear == expect_linear);
  int vision_attn = 0;
  for (const auto& r : j["by_name"]) {
    named_sum += r["flops_fwd"].get<double>();
    const std::string name = r["name"];
    if (name.rfind("visual.transformer.resblocks.", 0) == 0 && name.find(".attn.attention") != std::string::npos) {
      ++vision_attn;
      CHECK(r["flops_fwd"].get<double>() == profile::attention_flops(B, 2, Tv, Tv, 64, false));
      CHECK(r["flops_fwd"].get<double>() == 4.0 * B * 2 * 64 * Tv * Tv);
    }
  }
  CHECK(vision_attn == 2);
  CHECK(named_sum == doctest::Approx(j["total"]["flops_fwd"].get<double>()).epsilon(1e-12));
  CHECK(j["gpu"] == false);
  CHECK(j["step_seconds"].get<double>() > 0);
}
