// The trainer: `clipcu train` and the demo drive CLIP training through this.
//
// One step: next batch -> encode_image, encode_text -> clip_loss (normalization, scaled logits,
// symmetric cross entropy) -> backward over the tape -> global gradient norm (clipped when
// asked) -> AdamW (open_clip's weight-decay exclusions) -> logit scale clamped to [0, ln 100].
// A non-finite loss or gradient norm skips the update (logged, counted); after
// `max_consecutive_skips` in a row training stops with an error and the last checkpoint intact.
// Ctrl-C (SIGINT) finishes the step in flight, saves a checkpoint and returns cleanly.
//
// Everything of a run goes under <logs>/<name>/: params.json (the options), metrics.jsonl
// (one JSON object per logged step and per validation), checkpoints/ckpt-*.{safetensors,json},
// and at the end weights.safetensors (the model under the state-dict names `embed` reads, with
// its config in the metadata).
//
// Resuming (--resume latest|PATH) restores the parameters, BatchNorm buffers, AdamW moments and
// step count, the loader position and the step counter: on the CPU a run stopped at step k and
// resumed reaches the same parameters at step n, bit for bit, as an uninterrupted run.
//
// Devices (--device auto|cpu|cuda[:N], --precision fp32|bf16; engine/train/device_setup.h):
// auto is the GPU when one answers. On a GPU the model, its optimizer state and every
// activation live on the device; batches are uploaded through pinned staging buffers (images
// converted to the model's type on the device; token ids are checked and pooled on the host by
// the text tower and uploaded by it); the loss and the gradient norm are read back each
// step (the NaN handling above is the same on both devices). bf16: parameters and activations
// in bf16, float32 master weights in AdamW (the logit-scale clamp acts on the master). Memory
// comes from the caching allocator: no cudaMalloc inside a step after the first; its peak is
// logged (metrics gpu_peak_bytes, the progress line, the end of the run). Checkpoints and
// weights.safetensors are always float32 on the host (a bf16 run saves its masters), so a run
// resumes on another device or precision.
#pragma once
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "engine/data/dataset.h"
#include "engine/models/clip.h"
#include "engine/models/config.h"

namespace clipcu::train {

struct TrainOptions {
  // model: a config name from weights/configs ("ViT-B-32"), or a path to an open_clip JSON
  std::string model;
  std::optional<models::ModelConfig> model_config;  // overrides `model` (the demo builds one)
  std::string pretrained;                            // fine-tune from these weights
  // data: a CSV/TSV, a tar shard pattern ("shards-{000..009}.tar"), "synthetic" (the shapes
  // generator streamed from memory), or a .safetensors with `images` [N,3,R,R] (already
  // normalized) and `tokens` [N,T] (taken in order, no shuffling: for parity checks)
  std::string train_data;
  std::string val_data;
  data::CsvOptions csv;
  int64_t synthetic_samples = 100000;  // size of the "synthetic" training set
  uint64_t synthetic_seed = 0;
  std::string vocab;  // BPE merges (--vocab, else CLIPCU_VOCAB)

  int batch_size = 64;
  int64_t epochs = 0;  // one of epochs / steps
  int64_t steps = 0;
  double lr = 5e-4;
  int64_t warmup = 0;
  std::string lr_scheduler = "cosine";
  int64_t lr_cooldown_steps = 0;
  double wd = 0.2;
  double beta1 = 0.9;
  double beta2 = -1;  // < 0: open_clip's default for the tower (ViT 0.98, ResNet 0.999)
  double eps = -1;    // < 0: ViT 1e-6, ResNet 1e-8
  double grad_clip_norm = 0;  // 0: no clipping
  std::string precision = "fp32";
  uint64_t seed = 0;
  std::string device = "auto";
  int workers = 2;
  bool augment = true;

  std::string logs = "./logs";
  std::string name;  // default: a timestamp
  std::string resume;  // "", "latest" or a checkpoint path
  int64_t save_every_n_steps = 0;  // 0: only at the end (and every save_frequency epochs)
  int64_t save_frequency = 1;      // epochs (open_clip); 0 disables per-epoch saves
  int keep_checkpoints = 3;
  int64_t log_every_n_steps = 10;
  int64_t val_every_n_steps = 0;
  int64_t val_frequency = 1;  // epochs
  int64_t val_max_samples = 0;  // periodic validations use at most this many (0: all); the final one uses all
  int64_t max_consecutive_skips = 10;
  std::vector<int64_t> inject_nan_steps;  // testing aid: make the loss NaN at these steps
  int64_t stop_after_steps = 0;           // testing aid: stop (saving) after this many steps of this run
  bool quiet = false;
  // zero-shot classes and prompt templates for validation; empty: taken from classes.json and
  // templates.json beside the validation data, or from the shapes generator for "synthetic"
  std::vector<std::string> classes, templates;
};

struct TrainResult {
  int64_t steps = 0;          // the step counter at the end
  int64_t skipped_steps = 0;  // non-finite updates skipped
  double train_seconds = 0;   // wall time of this run's steps (validation excluded)
  double final_loss = 0;      // mean loss over the last logged window
  std::string run_dir, weights_path;
  bool interrupted = false;
  nlohmann::json last_val;  // the last validation record (empty when none ran)
};

// Resolves a model name (weights/configs/<name>.json, $CLIPCU_CONFIGS/<name>.json) or a path.
std::string find_model_config(const std::string& name_or_path);

TrainResult train(const TrainOptions& opts);

}  // namespace clipcu::train
