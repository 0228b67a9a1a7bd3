// clipcu profile: the per-op profile of one training step (forward, contrastive loss, backward).
//
//   clipcu profile --config C.json [--weights W] [--batch N] [--device auto|cpu|cuda]
//                  [--precision fp32|bf16]
//                  [--warmup K] [--depth D] [--top N] [--json OUT.json] [--peak-tflops P]
//
// Inputs are random (--batch, --seed) unless given as for `clipcu inspect`. For each op type,
// each module (paths cut to --depth components) and each named op: calls, forward and backward
// FLOPs and bytes (formulas in engine/profile.h), time, share of the step, FLOP/s; then the
// step's achieved FLOP/s and, on a GPU, its MFU against the card's dense bf16 peak. On a GPU
// the command sets CUDA_LAUNCH_BLOCKING=1 so that the per-op clocks time kernels, not launches.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "engine/profile.h"
#include "engine/train/device_setup.h"
#include "tools/command.h"
#include "tools/inspect_cli.h"

namespace clipcu::tools {
namespace {

struct ProfileArgs {
  ModelInputArgs m;
  int warmup = 1, depth = 3;
  size_t top = 25;
  std::string json;
  double peak_tflops = 0;
};

// The GPU's marketing name, from nvidia-smi (empty when it cannot be asked).
std::string gpu_name(int index) {
  std::string cmd = "nvidia-smi --query-gpu=name --format=csv,noheader -i " + std::to_string(index) + " 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return "";
  char buf[256] = {0};
  std::string name = std::fgets(buf, sizeof buf, p) ? buf : "";
  pclose(p);
  while (!name.empty() && (name.back() == '\n' || name.back() == '\r' || name.back() == ' ')) name.pop_back();
  return name;
}

int run_profile(ProfileArgs& a) {
  // Before anything touches CUDA: synchronous launches make the per-op clocks honest.
  setenv("CUDA_LAUNCH_BLOCKING", "1", 0);
  CLIPCU_CHECK(a.warmup >= 0, "profile: --warmup must be >= 0");
  CLIPCU_CHECK(a.depth >= 1, "profile: --depth must be >= 1");
  std::unique_ptr<models::CLIP> model = load_model(a.m);
  const inspect::Inputs in = inspect::load_inputs(a.m.inputs, model->config());
  for (int i = 0; i < a.warmup; ++i) {
    inspect::run_step(*model, in, /*train_step=*/true);
    tape().clear();
  }
  const inspect::StepResult r = inspect::run_step(*model, in, /*train_step=*/true);
  profile::StepProfile p = profile::profile_tape(tape(), r.seconds, a.depth);
  tape().clear();
  const Device device = model->logit_scale.device();
  if (device.is_cuda()) {
    p.gpu = true;
    p.device = train::device_name(device);
    if (p.device.empty() || p.device == device.str()) p.device = gpu_name(device.index);
    if (p.device.empty()) p.device = device.str();
    p.peak_flops = a.peak_tflops > 0 ? a.peak_tflops * 1e12 : profile::peak_bf16_flops(p.device);
  }
  std::printf("profile: one training step, batch %lld, %s, %s, loss %.6f\n\n", (long long)in.images.size(0),
              p.device.c_str(), a.m.precision.c_str(), r.loss.item());
  std::fputs(profile::format_profile(p, a.top).c_str(), stdout);
  if (!a.json.empty()) {
    nlohmann::json j = profile::to_json(p);
    j["batch"] = in.images.size(0);
    j["config"] = models::config_to_json(model->config());
    j["weights"] = a.m.weights;
    std::ofstream f(a.json);
    CLIPCU_CHECK(f, "profile: cannot write '" << a.json << "'");
    f << j.dump(1) << "\n";
    CLIPCU_CHECK(f.good(), "profile: writing '" << a.json << "' failed");
  }
  return 0;
}

Command profile_cmd(
    "profile", "per-op profile of one training step: calls, FLOPs, bytes, time, share, MFU", [](CLI::App& app) {
      auto a = std::make_shared<ProfileArgs>();
      add_model_input_options(app, a->m, /*default_batch=*/8);
      app.add_option("--warmup", a->warmup, "untimed steps first")->capture_default_str();
      app.add_option("--depth", a->depth, "module path components per module row")->capture_default_str();
      app.add_option("--top", a->top, "rows of the module and named-op tables (0: all)")->capture_default_str();
      app.add_option("--json", a->json, "write the whole profile as JSON");
      app.add_option("--peak-tflops", a->peak_tflops, "the GPU's dense bf16 peak in TFLOP/s (default: from its name)");
      return [a]() { return run_profile(*a); };
    });

}  // namespace
}  // namespace clipcu::tools
