// Options shared by `clipcu inspect`, `clipcu graph` and `clipcu profile`: the model (config,
// weights, device) and the inputs (engine/train/inspect.h).
#pragma once
#include <CLI/CLI.hpp>
#include <memory>
#include <string>
#include <vector>

#include "engine/models/checkpoint.h"
#include "engine/models/clip.h"
#include "engine/models/config.h"
#include "engine/train/device_setup.h"
#include "engine/train/inspect.h"

namespace clipcu::tools {

struct ModelInputArgs {
  std::string config, weights, device = "auto", precision = "fp32";
  inspect::InputSpec inputs;
  bool train_step = false;
  uint64_t model_seed = 0;
};

inline void add_model_input_options(CLI::App& app, ModelInputArgs& a, int64_t default_batch) {
  app.add_option("--config", a.config,
                 "open_clip model config (JSON); optional with a HuggingFace directory or a file saved by clipcu");
  app.add_option(
      "--weights", a.weights,
      "safetensors weights or a HuggingFace CLIPModel directory (absent: random initialization, --init-seed)");
  app.add_option("--init-seed", a.model_seed, "seed of the random initialization when no --weights are given");
  app.add_option("--device", a.device, "auto (a GPU when one answers, else the CPU), cpu, cuda or cuda:N")
      ->capture_default_str();
  app.add_option("--precision", a.precision, "fp32, or bf16 (GPU only: bf16 weights and activations)")
      ->capture_default_str();
  app.add_option("--pixels", a.inputs.pixels,
                 "images: safetensors FILE[:NAME] with [N, 3, R, R] normalized pixels (NAME defaults to pixels, "
                 "input.images or input.pixel_values)");
  app.add_option("--tokens", a.inputs.tokens,
                 "texts: safetensors FILE[:NAME] with [M, T] token ids (NAME defaults to tokens, input.text or "
                 "input.input_ids)");
  app.add_option("--image", a.inputs.images, "an image file (CLIP's eval preprocessing; repeatable)");
  app.add_option("--text", a.inputs.texts, "a text (CLIP's BPE tokenizer; repeatable)");
  app.add_option("--vocab", a.inputs.vocab, "BPE merges file for --text (default: $CLIPCU_VOCAB)");
  a.inputs.random_batch = default_batch;
  app.add_option("--batch", a.inputs.random_batch, "batch size of random inputs for a tower given no input (0: none)")
      ->capture_default_str();
  app.add_option("--seed", a.inputs.seed, "seed of the random inputs");
}

inline std::unique_ptr<models::CLIP> load_model(const ModelInputArgs& a) {
  std::unique_ptr<models::CLIP> model;
  if (!a.weights.empty()) {
    model = models::load_clip(a.weights, a.config);
  } else {
    CLIPCU_CHECK(!a.config.empty(), "give --config (and --weights, or the model is randomly initialized)");
    model = models::make_clip(models::load_config(a.config), a.model_seed);
  }
  train::move_model(*model, train::resolve_target(a.device, a.precision));
  return model;
}

}  // namespace clipcu::tools
