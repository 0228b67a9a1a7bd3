// Whole CPU steps: one training step (forward, contrastive loss, backward, AdamW) and inference
// (images/s, texts/s) of small CLIP configs, on the CPU engine. Counters: samples per second and
// model FLOP/s (the profiler's formulas over the recorded tape, engine/profile.h).
#include <benchmark/benchmark.h>

#include <memory>
#include <string>

#include "engine/autograd.h"
#include "engine/models/clip.h"
#include "engine/models/config.h"
#include "engine/optim/adamw.h"
#include "engine/profile.h"
#include "engine/rng.h"

using namespace clipcu;

namespace {

// 0: the demo's model (32 px, 8x8 patches, width 96, 2+2 layers); 1: clip-tiny-cpu; 2: a tiny
// ModifiedResNet (the golden's shape).
models::ModelConfig config(int which) {
  switch (which) {
    case 0:
      return models::parse_config_text(R"({"embed_dim": 64, "quick_gelu": true,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 96, "patch_size": 4, "head_width": 48},
        "text_cfg": {"context_length": 16, "vocab_size": 1024, "width": 96, "heads": 2, "layers": 2}})",
                                       "demo");
    case 1: return models::load_config(std::string(CLIPCU_SOURCE_DIR) + "/weights/configs/clip-tiny-cpu.json");
    default:
      return models::parse_config_text(R"({"embed_dim": 32, "quick_gelu": true,
        "vision_cfg": {"image_size": 64, "layers": [1, 2, 1, 1], "width": 8, "head_width": 64},
        "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 64, "heads": 2, "layers": 2}})",
                                       "rn-tiny");
  }
}
const char* config_name(int which) { return which == 0 ? "demo-vit" : which == 1 ? "clip-tiny-cpu" : "rn-tiny"; }

struct Inputs {
  Tensor images, tokens;
};
Inputs make_inputs(const models::ModelConfig& c, int64_t B) {
  Rng rng(1);
  Inputs in;
  int64_t R = c.vision.image_size, T = c.text.context_length;
  in.images = Tensor::randn({B, 3, R, R}, rng);
  std::vector<int64_t> ids(size_t(B * T), 0);
  for (int64_t b = 0; b < B; ++b) {
    int64_t n = 3 + b % (T - 3);
    ids[size_t(b * T)] = c.text.vocab_size - 2;
    for (int64_t t = 1; t < n; ++t) ids[size_t(b * T + t)] = 1 + int64_t(rng.below(uint64_t(c.text.vocab_size - 3)));
    ids[size_t(b * T + n)] = c.text.vocab_size - 1;
  }
  in.tokens = Tensor::from_ints(ids, {B, T});
  return in;
}

void BM_train_step(benchmark::State& state) {
  int which = int(state.range(0));
  int64_t B = state.range(1);
  models::ModelConfig c = config(which);
  auto model = models::make_clip(c, 0);
  model->train();
  optim::AdamW opt(model->optimizer_params(), optim::AdamWConfig{});
  Inputs in = make_inputs(c, B);
  double flops = 0;
  for (auto _ : state) {
    tape().clear();
    auto out = model->loss(model->encode_image(in.images), model->encode_text(in.tokens));
    if (flops == 0) {
      for (const Node& n : tape().nodes()) {
        profile::Cost k = profile::node_cost(n);
        flops += k.flops_fwd + k.flops_bwd;
      }
    }
    backward(out.loss);
    opt.step(1e-4);
    model->zero_grad();
    benchmark::DoNotOptimize(out.loss.raw());
  }
  state.SetLabel(std::string(config_name(which)) + " batch " + std::to_string(B));
  state.counters["samples/s"] = benchmark::Counter(double(B), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["FLOP/s"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_inference(benchmark::State& state) {
  int which = int(state.range(0));
  int64_t B = state.range(1);
  bool text = state.range(2) != 0;
  models::ModelConfig c = config(which);
  auto model = models::make_clip(c, 0);
  model->eval();
  Inputs in = make_inputs(c, B);
  NoGradGuard ng;
  for (auto _ : state) {
    Tensor f = text ? model->encode_text(in.tokens) : model->encode_image(in.images);
    benchmark::DoNotOptimize(f.raw());
  }
  state.SetLabel(std::string(config_name(which)) + (text ? " texts" : " images"));
  state.counters[text ? "texts/s" : "images/s"] =
      benchmark::Counter(double(B), benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

BENCHMARK(BM_train_step)->ArgNames({"config", "B"})->Args({0, 32})->Args({0, 128})->Args({1, 128})->Args({2, 32})
    ->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_inference)->ArgNames({"config", "B", "text"})->Args({0, 256, 0})->Args({0, 256, 1})->Args({2, 64, 0})
    ->UseRealTime()->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
