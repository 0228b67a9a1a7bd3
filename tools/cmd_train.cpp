// clipcu train: CLIP training with open_clip's flag names (engine/train/trainer.h).
#include <cstdio>
#include <sstream>

#include "engine/train/trainer.h"
#include "tools/command.h"

namespace clipcu::tools {
namespace {

std::vector<int64_t> parse_steps(const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(std::stoll(item));
  return out;
}

Command train_cmd("train", "Train a CLIP model (open_clip's flags)", [](CLI::App& app) {
  auto o = std::make_shared<train::TrainOptions>();
  auto nan_steps = std::make_shared<std::string>();
  app.add_option("--model", o->model, "config name from weights/configs (ViT-B-32, RN50, ...) or a JSON path")->required();
  app.add_option("--pretrained", o->pretrained, "fine-tune from these weights (safetensors or HF directory)");
  app.add_option("--train-data", o->train_data,
                 "CSV/TSV, tar shard pattern (shards-{000..009}.tar), 'synthetic', or a .safetensors with images+tokens")
      ->required();
  app.add_option("--val-data", o->val_data, "validation data (same forms; classes.json/templates.json beside it enable zero-shot)");
  app.add_option("--csv-separator", o->csv.separator, "CSV separator")->capture_default_str();
  app.add_option("--csv-img-key", o->csv.image_key, "CSV image path column")->capture_default_str();
  app.add_option("--csv-caption-key", o->csv.caption_key, "CSV caption column")->capture_default_str();
  app.add_option("--synthetic-samples", o->synthetic_samples, "size of the 'synthetic' training set")->capture_default_str();
  app.add_option("--vocab", o->vocab, "BPE merges file (default: $CLIPCU_VOCAB)");
  app.add_option("--batch-size", o->batch_size, "batch size")->capture_default_str();
  app.add_option("--epochs", o->epochs, "epochs (or --steps)");
  app.add_option("--steps", o->steps, "optimizer steps (overrides --epochs)");
  app.add_option("--lr", o->lr, "peak learning rate")->capture_default_str();
  app.add_option("--warmup", o->warmup, "linear warm-up steps")->capture_default_str();
  app.add_option("--lr-scheduler", o->lr_scheduler, "cosine | const | const-cooldown")->capture_default_str();
  app.add_option("--lr-cooldown-end-steps", o->lr_cooldown_steps, "const-cooldown: length of the cooldown");
  app.add_option("--wd", o->wd, "weight decay (not on gains, biases, 1-d params, logit_scale)")->capture_default_str();
  app.add_option("--beta1", o->beta1, "AdamW beta1")->capture_default_str();
  app.add_option("--beta2", o->beta2, "AdamW beta2 (default: 0.98 ViT, 0.999 ResNet)");
  app.add_option("--eps", o->eps, "AdamW eps (default: 1e-6 ViT, 1e-8 ResNet)");
  app.add_option("--grad-clip-norm", o->grad_clip_norm, "clip the global gradient norm (0: off)")->capture_default_str();
  app.add_option("--precision", o->precision,
                 "fp32 | bf16 (GPU only: bf16 weights and activations, float32 master weights in AdamW)")
      ->capture_default_str();
  app.add_option("--seed", o->seed, "seed for initialization, shuffling and augmentation")->capture_default_str();
  app.add_option("--device", o->device, "auto (a GPU when one answers, else the CPU) | cpu | cuda[:N]")
      ->capture_default_str();
  app.add_option("--workers", o->workers, "data loading threads")->capture_default_str();
  app.add_flag("!--no-augment", o->augment, "preprocess training images as for evaluation");
  app.add_option("--logs", o->logs, "folder of runs")->capture_default_str();
  app.add_option("--name", o->name, "run name (default: a timestamp); files go to LOGS/NAME/");
  app.add_option("--resume", o->resume, "'latest' or a checkpoint path");
  app.add_option("--save-frequency", o->save_frequency, "save a checkpoint every N epochs (0: off)")->capture_default_str();
  app.add_option("--save-every-n-steps", o->save_every_n_steps, "also save every N steps");
  app.add_option("--keep-checkpoints", o->keep_checkpoints, "checkpoints kept")->capture_default_str();
  app.add_option("--log-every-n-steps", o->log_every_n_steps, "metrics line every N steps")->capture_default_str();
  app.add_option("--val-frequency", o->val_frequency, "validate every N epochs")->capture_default_str();
  app.add_option("--val-every-n-steps", o->val_every_n_steps, "also validate every N steps");
  app.add_option("--val-max-samples", o->val_max_samples, "periodic validations use at most N samples (0: all; the final one uses all)");
  app.add_option("--max-consecutive-skips", o->max_consecutive_skips, "stop after N non-finite steps in a row")
      ->capture_default_str();
  app.add_flag("--quiet", o->quiet, "no progress line");
  app.add_option("--debug-inject-nan", *nan_steps, "testing aid: comma list of steps whose loss is made NaN")
      ->group("");
  app.add_option("--debug-stop-after", o->stop_after_steps, "testing aid: stop (with a checkpoint) after N steps")
      ->group("");
  return [o, nan_steps]() {
    o->inject_nan_steps = parse_steps(*nan_steps);
    train::TrainResult r = train::train(*o);
    std::printf("steps %lld, skipped %lld, train %.1f s, final loss %.4f%s\n", static_cast<long long>(r.steps),
                static_cast<long long>(r.skipped_steps), r.train_seconds, r.final_loss,
                r.interrupted ? " (interrupted)" : "");
    if (!r.weights_path.empty()) std::printf("weights: %s\n", r.weights_path.c_str());
    return r.interrupted ? 130 : 0;
  };
});

}  // namespace
}  // namespace clipcu::tools
