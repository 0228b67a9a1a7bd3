// clipcu demo: the main job. Makes the shapes data set, learns a BPE vocabulary from its
// captions, trains a small CLIP (GPU when present, else CPU), evaluates zero-shot
// classification and retrieval on the held-out split, and writes a report folder.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "engine/data/dataset.h"
#include "engine/data/shapes.h"
#include "engine/autograd.h"
#include "engine/models/checkpoint.h"
#include "engine/models/config.h"
#include "engine/text/bpe_trainer.h"
#include "engine/text/tokenizer.h"
#include "engine/train/device_setup.h"
#include "engine/train/evaluate.h"
#include "engine/train/plot.h"
#include "engine/train/search.h"
#include "engine/train/trainer.h"
#include "tools/command.h"

namespace clipcu::tools {
namespace {

namespace fs = std::filesystem;

struct DemoOptions {
  std::string out = "demo";
  std::string device = "auto";
  std::string precision = "fp32";
  uint64_t seed = 0;
  int64_t n = 20000;  // images made (train + held-out)
  int image_size = 32;
  int64_t steps = 1000;
  int batch = 128;
  double lr = 2e-3;
  int64_t warmup = 100;
  int workers = 1;
  std::string model;  // a config instead of the built-in demo model
};

// The demo model: a small ViT on an 8x8 grid of patches and a narrow text tower.
std::string demo_config_json(int64_t vocab_size, int image_size) {
  return R"({"embed_dim": 64, "quick_gelu": true,
  "vision_cfg": {"image_size": )" + std::to_string(image_size) + R"(, "layers": 2, "width": 96, "patch_size": )" +
         std::to_string(image_size / 8) + R"(, "head_width": 48},
  "text_cfg": {"context_length": 16, "vocab_size": )" + std::to_string(vocab_size) + R"(, "width": 96, "heads": 2, "layers": 2}})";
}

int run_demo(const DemoOptions& o) {
  auto t_start = std::chrono::steady_clock::now();
  // the flags are checked before anything is made (a clear error for --device cuda without a GPU)
  const train::ComputeTarget target = train::resolve_target(o.device, o.precision);
  fs::create_directories(o.out);
  std::string data_dir = o.out + "/data";
  std::printf("clipcu demo -> %s\n", o.out.c_str());

  // 1. data
  data::MakeShapesOptions mo;
  mo.out_dir = data_dir;
  mo.n = uint64_t(o.n);
  mo.seed = o.seed;
  mo.image_size = o.image_size;
  mo.format = "csv";
  mo.val_fraction = 0.1;
  auto t0 = std::chrono::steady_clock::now();
  data::MakeShapesResult shapes = data::make_shapes(mo);
  double make_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[1/5] shapes: %llu training + %llu held-out images at %d px in %.1f s\n",
              static_cast<unsigned long long>(shapes.n_train), static_cast<unsigned long long>(shapes.n_val),
              o.image_size, make_s);

  // 2. vocabulary from the training captions
  t0 = std::chrono::steady_clock::now();
  auto train_ds = data::open_dataset(shapes.train_spec);
  std::vector<std::string> captions;
  for (size_t i = 0; i < train_ds->size(); ++i) captions.push_back(train_ds->caption(i));
  text::BpeTrainOptions bo;
  bo.vocab_size = 1024;
  text::BpeTrainResult bpe = text::train_bpe(captions, bo);
  std::string vocab = o.out + "/vocab.txt.gz";
  text::write_merges(vocab, bpe.merges);
  std::printf("[2/5] BPE vocabulary: %lld tokens (%zu merges) from %lld captions in %.1f s\n",
              static_cast<long long>(bpe.vocab_size), bpe.merges.size(), static_cast<long long>(bpe.captions),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());

  // 3. train
  train::TrainOptions to;
  if (o.model.empty()) {
    to.model_config = models::parse_config_text(demo_config_json(bpe.vocab_size, o.image_size), "demo model");
  } else {
    to.model = o.model;
  }
  to.train_data = shapes.train_spec;
  to.val_data = shapes.val_spec;
  to.vocab = vocab;
  to.batch_size = o.batch;
  to.steps = o.steps;
  to.lr = o.lr;
  to.warmup = o.warmup;
  to.wd = 0.1;
  to.seed = o.seed;
  to.device = o.device;
  to.precision = o.precision;
  to.workers = o.workers;
  to.augment = false;
  to.logs = o.out;
  to.name = "run";
  to.log_every_n_steps = 20;
  to.save_every_n_steps = 0;
  to.save_frequency = 0;
  to.val_frequency = 0;
  to.val_every_n_steps = std::max<int64_t>(o.steps / 4, 1);  // a few points on the validation curve
  to.val_max_samples = 0;  // every point on the whole held-out split, so the points compare
  to.classes = data::ShapesGenerator::class_names();
  to.templates = data::ShapesGenerator::prompt_templates();
  std::printf("[3/5] training %lld steps of %d on %s\n", static_cast<long long>(o.steps), o.batch,
              target.describe().c_str());
  train::TrainResult tr = train::train(to);
  if (tr.interrupted) return 130;

  // 4. evaluate on the held-out split (the trainer's final validation did exactly that)
  nlohmann::json metrics = tr.last_val;
  metrics.erase("kind");
  metrics["train_seconds"] = tr.train_seconds;
  metrics["train_steps"] = tr.steps;
  metrics["batch_size"] = o.batch;
  metrics["final_loss"] = tr.final_loss;
  metrics["chance_top1"] = 1.0 / double(to.classes.size());
  metrics["device"] = target.device.str();
  metrics["precision"] = target.precision;
  if (target.device.is_cuda()) {
    metrics["gpu"] = train::device_name(target.device);
    metrics["gpu_peak_bytes"] = train::memory_stats(target.device).peak_bytes;
  }
  std::printf("[4/5] held-out: zero-shot top-1 %.3f top-5 %.3f, image->text R@1 %.3f, text->image R@1 %.3f\n",
              metrics.value("zeroshot_top1", 0.0), metrics.value("zeroshot_top5", 0.0), metrics.value("i2t_r1", 0.0),
              metrics.value("t2i_r1", 0.0));

  // 5. report
  auto model = models::load_clip(tr.weights_path);
  train::move_model(*model, target);
  auto val_ds = data::open_dataset(shapes.val_spec);
  std::vector<std::string> val_paths;
  for (size_t i = 0; i < std::min<size_t>(val_ds->size(), 600); ++i) val_paths.push_back(val_ds->name(i));
  train::SearchIndex idx = train::build_index(*model, val_paths, 128, tr.weights_path, false);
  text::Tokenizer tok(vocab);
  std::vector<std::string> queries = {"a red circle", "a large blue square", "a small green triangle in the top left",
                                      "a yellow star", "a purple cross in the center", "an orange circle in the bottom right"};
  std::vector<train::ResultRow> rows;
  {
    NoGradGuard ng;
    Tensor f = model->encode_text(tok.tokenize_batch(queries, model->config().text.context_length)).to(Device::cpu());
    for (size_t i = 0; i < queries.size(); ++i) rows.push_back({queries[i], train::top_k(idx, f.rows(int64_t(i), 1), 6)});
  }
  train::write_results_html(o.out + "/retrieval.html", "clipcu demo: text -> image retrieval on held-out shapes", idx, rows);
  std::string plot_note;
  try {
    train::plot_metrics(tr.run_dir + "/metrics.jsonl", o.out + "/loss.png");
  } catch (const Error& e) {
    plot_note = e.what();
    std::fprintf(stderr, "clipcu: warning: no loss plot: %s\n", e.what());
  }
  metrics["total_seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  {
    std::ofstream f(o.out + "/metrics.json");
    f << metrics.dump(1) << "\n";
  }
  std::printf("[5/5] report: %s/metrics.json, %s/loss.png, %s/retrieval.html, weights %s\n", o.out.c_str(),
              o.out.c_str(), o.out.c_str(), tr.weights_path.c_str());
  std::printf("\nsummary: zero-shot color x shape top-1 %.1f%% (top-5 %.1f%%, chance %.1f%%) on %lld held-out images; "
              "retrieval R@1 i2t %.1f%% t2i %.1f%%; trained %lld steps in %.0f s, total %.0f s\n",
              100 * metrics.value("zeroshot_top1", 0.0), 100 * metrics.value("zeroshot_top5", 0.0),
              100 * metrics["chance_top1"].get<double>(), static_cast<long long>(metrics.value("n", 0)),
              100 * metrics.value("i2t_r1", 0.0), 100 * metrics.value("t2i_r1", 0.0),
              static_cast<long long>(tr.steps), tr.train_seconds, metrics["total_seconds"].get<double>());
  return 0;
}

Command demo_cmd("demo", "The main job: make shapes data, train a small CLIP, evaluate, write a report", [](CLI::App& app) {
  auto o = std::make_shared<DemoOptions>();
  app.add_option("--out", o->out, "report folder")->capture_default_str();
  app.add_option("--device", o->device, "auto (a GPU when one answers, else the CPU) | cpu | cuda[:N]")
      ->capture_default_str();
  app.add_option("--precision", o->precision, "fp32 | bf16 (GPU only)")->capture_default_str();
  app.add_option("--seed", o->seed, "seed of data, initialization and shuffling")->capture_default_str();
  app.add_option("--n", o->n, "images to make (10% held out)")->capture_default_str();
  app.add_option("--image-size", o->image_size, "image size in pixels")->capture_default_str();
  app.add_option("--steps", o->steps, "training steps")->capture_default_str();
  app.add_option("--batch-size", o->batch, "batch size")->capture_default_str();
  app.add_option("--lr", o->lr, "peak learning rate")->capture_default_str();
  app.add_option("--warmup", o->warmup, "warm-up steps")->capture_default_str();
  app.add_option("--workers", o->workers, "data loading threads")->capture_default_str();
  app.add_option("--model", o->model, "train this config instead of the built-in demo model (its vocab_size must fit)");
  return [o]() { return run_demo(*o); };
});

}  // namespace
}  // namespace clipcu::tools
