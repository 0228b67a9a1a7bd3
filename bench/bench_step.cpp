// Whole steps: one training step (forward, contrastive loss, backward, AdamW) and inference
// (images/s, texts/s) of CLIP configs.
//
// CPU (BM_train_step, BM_inference): small configs on the CPU engine. Counters: samples per
// second and model FLOP/s (the profiler's formulas over the recorded tape, engine/profile.h).
//
// GPU (BM_gpu_train_step, BM_gpu_inference; registered only when a GPU answers, otherwise they
// are skipped with a message on stderr): clip-tiny-cpu, ViT-B/32 and RN50 at batch 256, fp32
// and bf16, as the trainer runs them (batches uploaded through the pinned staging buffers,
// loss read back, global gradient norm with clipping, multi-tensor AdamW; bf16 with float32
// master weights). When a batch does not fit in the GPU's memory it is halved until it does
// (the label says the batch used). Counters: samples/s (images/s, texts/s), model FLOP/s, MFU
// = model FLOP/s over the card's dense bf16 tensor-core peak from profile::peak_bf16_flops's
// table by device name (H100 SXM and H200: 989.4 TFLOP/s; the same peak is the reference for
// fp32 runs too), and peak_GiB, the caching allocator's high-water mark during the benchmark
// (model, optimizer state, activations, workspace). --benchmark_format=json carries them all.
#include <benchmark/benchmark.h>

#include <cstdio>
#include <map>
#include <memory>
#include <string>

#include "engine/autograd.h"
#include "engine/models/clip.h"
#include "engine/models/config.h"
#include "engine/optim/adamw.h"
#include "engine/profile.h"
#include "engine/rng.h"
#include "engine/train/device_setup.h"

#ifdef CLIPCU_WITH_CUDA
#include "engine/cuda_runtime.h"
#endif

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

// ---------------------------------------------------------------- GPU
#ifdef CLIPCU_WITH_CUDA
namespace {

const Device kGpu = Device::cuda(0);

// 0: clip-tiny-cpu, 1: ViT-B-32, 2: RN50 (weights/configs).
const char* gpu_config_name(int which) { return which == 0 ? "clip-tiny-cpu" : which == 1 ? "ViT-B-32" : "RN50"; }

// One randomly initialized float32 host model per config, made once: initializing ViT-B/32 on
// the host takes seconds, copying it does not.
const models::CLIP& host_model(int which) {
  static std::map<int, std::unique_ptr<models::CLIP>> cache;
  auto it = cache.find(which);
  if (it == cache.end()) {
    const std::string path = std::string(CLIPCU_SOURCE_DIR) + "/weights/configs/" + gpu_config_name(which) + ".json";
    it = cache.emplace(which, models::make_clip(models::load_config(path), 0)).first;
  }
  return *it->second;
}

std::unique_ptr<models::CLIP> gpu_model(int which, DType dt) {
  const models::CLIP& h = host_model(which);
  auto m = std::make_unique<models::CLIP>(h.config());
  const auto src = h.state_dict(), dst = m->state_dict();
  for (size_t i = 0; i < src.size(); ++i) {
    Tensor d = dst[i].second;
    d.copy_from(src[i].second);
  }
  train::ComputeTarget t;
  t.device = kGpu;
  t.dtype = dt;
  t.precision = dt == DType::BF16 ? "bf16" : "fp32";
  train::move_model(*m, t);
  return m;
}

void sync() { cuda::synchronize(kGpu.index); }

std::string gpu_label(int which, int64_t B, int64_t asked, DType dt, const char* what) {
  std::string l = std::string(gpu_config_name(which)) + " " + (dt == DType::BF16 ? "bf16" : "fp32") + " " + what +
                  " batch " + std::to_string(B);
  if (B != asked) l += " (" + std::to_string(asked) + " did not fit)";
  const std::string name = train::device_name(kGpu);
  const double peak = profile::peak_bf16_flops(name);
  l += " on " + name;
  if (peak > 0) l += " (MFU vs " + std::to_string(int(peak / 1e12 + 0.5)) + " TFLOP/s dense bf16)";
  return l;
}

// Everything one GPU training benchmark holds; destroyed before a retry with a smaller batch.
struct GpuTrainer {
  std::unique_ptr<models::CLIP> model;
  std::unique_ptr<optim::AdamW> opt;
  Inputs in;
  DType dt = DType::F32;
  size_t logit_scale = 0;
  // One step as the trainer runs it; returns the loss. flops: the model FLOPs of the step
  // (forward + backward of every recorded op), when asked.
  double step(double* flops) {
    tape().clear();
    Tensor images = nn::to_model_input(in.images, kGpu, dt);
    ops::ClipLossOut out = model->loss(model->encode_image(images), model->encode_text(in.tokens));
    if (flops) {
      *flops = 0;
      for (const Node& n : tape().nodes()) {
        profile::Cost k = profile::node_cost(n);
        *flops += k.flops_fwd + k.flops_bwd;
      }
    }
    const double loss = out.loss.item();
    backward(out.loss);
    opt->clip_grad_norm(1.0);
    opt->step(1e-5);
    opt->clamp(logit_scale, 0.0, 4.6052);
    model->zero_grad();
    sync();
    return loss;
  }
};

// Builds the model and optimizer and runs one warm-up step at batch B, halving B on
// out-of-memory; returns the batch that fits (0: not even 1).
int64_t fit_trainer(GpuTrainer& t, int which, int64_t B, double* flops) {
  const DType dt = t.dt;
  for (; B >= 1; B /= 2) {
    try {
      t = GpuTrainer();
      t.dt = dt;
      t.model = gpu_model(which, t.dt);
      t.model->train();
      t.opt = std::make_unique<optim::AdamW>(t.model->optimizer_params(), optim::AdamWConfig{});
      t.logit_scale = t.opt->index_of("logit_scale");
      t.in = make_inputs(t.model->config(), B);
      t.step(flops);
      return B;
    } catch (const OutOfMemory&) {
      tape().clear();
      t = GpuTrainer();
      t.dt = dt;
      cuda::allocator(kGpu.index).empty_cache();
    }
  }
  return 0;
}

void BM_gpu_train_step(benchmark::State& state) {
  const int which = int(state.range(0));
  const int64_t asked = state.range(1);
  const DType dt = state.range(2) ? DType::BF16 : DType::F32;
  tape().clear();
  cuda::allocator(kGpu.index).empty_cache();
  train::reset_peak_memory(kGpu);
  GpuTrainer t;
  t.dt = dt;
  double flops = 0;
  const int64_t B = fit_trainer(t, which, asked, &flops);
  if (B == 0) {
    state.SkipWithError("out of GPU memory even at batch 1");
    return;
  }
  const uint64_t mallocs = train::memory_stats(kGpu).device_mallocs;
  for (auto _ : state) benchmark::DoNotOptimize(t.step(nullptr));
  const train::MemoryStats ms = train::memory_stats(kGpu);
  const double peak = profile::peak_bf16_flops(train::device_name(kGpu));
  state.SetLabel(gpu_label(which, B, asked, dt, "train step"));
  state.counters["samples/s"] = benchmark::Counter(double(B), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["FLOP/s"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
  if (peak > 0) state.counters["MFU"] = benchmark::Counter(flops / peak, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["peak_GiB"] = double(ms.peak_bytes) / double(1ull << 30);
  state.counters["batch"] = double(B);
  // cudaMalloc calls during the timed steps: 0 when the caching allocator does its job
  state.counters["timed_mallocs"] = double(ms.device_mallocs - mallocs);
  t = GpuTrainer();
  tape().clear();
}

void BM_gpu_inference(benchmark::State& state) {
  const int which = int(state.range(0));
  const int64_t asked = state.range(1);
  const DType dt = state.range(2) ? DType::BF16 : DType::F32;
  const bool text = state.range(3) != 0;
  tape().clear();
  cuda::allocator(kGpu.index).empty_cache();
  train::reset_peak_memory(kGpu);
  NoGradGuard ng;
  std::unique_ptr<models::CLIP> model;
  Inputs in;
  int64_t B = asked;
  auto run = [&] {
    Tensor f = text ? model->encode_text(in.tokens) : model->encode_image(nn::to_model_input(in.images, kGpu, dt));
    sync();
    return f;
  };
  for (; B >= 1; B /= 2) {
    try {
      model = gpu_model(which, dt);
      model->eval();
      in = make_inputs(model->config(), B);
      run();  // warm-up
      break;
    } catch (const OutOfMemory&) {
      model.reset();
      cuda::allocator(kGpu.index).empty_cache();
    }
  }
  if (B == 0) {
    state.SkipWithError("out of GPU memory even at batch 1");
    return;
  }
  for (auto _ : state) benchmark::DoNotOptimize(run().raw());
  state.SetLabel(gpu_label(which, B, asked, dt, text ? "texts" : "images"));
  state.counters[text ? "texts/s" : "images/s"] =
      benchmark::Counter(double(B), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["peak_GiB"] = double(train::memory_stats(kGpu).peak_bytes) / double(1ull << 30);
  state.counters["batch"] = double(B);
}

}  // namespace
#endif  // CLIPCU_WITH_CUDA

BENCHMARK(BM_train_step)->ArgNames({"config", "B"})->Args({0, 32})->Args({0, 128})->Args({1, 128})->Args({2, 32})
    ->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_inference)->ArgNames({"config", "B", "text"})->Args({0, 256, 0})->Args({0, 256, 1})->Args({2, 64, 0})
    ->UseRealTime()->Unit(benchmark::kMillisecond);

// The GPU benchmarks exist only where a GPU answers; elsewhere they are skipped, loudly.
static void register_gpu_benchmarks() {
  if (!cuda_available()) {
    std::fprintf(stderr, "bench_step: %s: the GPU benchmarks (BM_gpu_train_step, BM_gpu_inference) are SKIPPED\n",
#ifdef CLIPCU_WITH_CUDA
                 "no GPU answers"
#else
                 "this build has no CUDA backend"
#endif
    );
    return;
  }
#ifdef CLIPCU_WITH_CUDA
  // Fixed iteration counts (after the benchmark's own warm-up step or call): without them Google
  // Benchmark calls the whole function again to size its loop, building the model, its
  // optimizer and inputs and warming up two or three times per row (seconds each at ViT-B/32).
  constexpr int kTrainSteps = 10, kInferCalls = 20;
  auto* train_bm = benchmark::RegisterBenchmark("BM_gpu_train_step", BM_gpu_train_step);
  train_bm->ArgNames({"config", "B", "bf16"})->UseRealTime()->Iterations(kTrainSteps)->Unit(benchmark::kMillisecond);
  auto* infer_bm = benchmark::RegisterBenchmark("BM_gpu_inference", BM_gpu_inference);
  infer_bm->ArgNames({"config", "B", "bf16", "text"})
      ->UseRealTime()
      ->Iterations(kInferCalls)
      ->Unit(benchmark::kMillisecond);
  for (int which : {0, 1, 2})
    for (int bf16 : {0, 1}) {
      train_bm->Args({which, 256, bf16});
      for (int text : {0, 1}) infer_bm->Args({which, 256, bf16, text});
    }
#endif
}

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  register_gpu_benchmarks();
  benchmark::RunSpecifiedBenchmarks();
  return 0;
}
