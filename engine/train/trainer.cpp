#include "engine/train/trainer.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>

#include "engine/autograd.h"
#include "engine/data/loader.h"
#include "engine/data/shapes.h"
#include "engine/models/checkpoint.h"
#include "engine/optim/adamw.h"
#include "engine/optim/schedule.h"
#include "engine/text/tokenizer.h"
#include "engine/train/checkpoint.h"
#include "engine/train/device_setup.h"
#include "engine/train/evaluate.h"
#include "engine/train/progress.h"
#include "weights/safetensors.h"
#include "weights/state_dict.h"

namespace clipcu::train {

namespace fs = std::filesystem;

namespace {

std::atomic<bool> g_interrupt{false};
extern "C" void on_sigint(int) {
  g_interrupt = true;
  std::signal(SIGINT, SIG_DFL);  // a second Ctrl-C ends the process at once
}

// Installs the SIGINT handler for the duration of a run.
struct SigintGuard {
  void (*prev)(int);
  SigintGuard() : prev(std::signal(SIGINT, on_sigint)) { g_interrupt = false; }
  ~SigintGuard() { std::signal(SIGINT, prev); }
};

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string timestamp_name() {
  std::time_t t = std::time(nullptr);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y_%m_%d-%H_%M_%S", std::localtime(&t));
  return buf;
}

// Pre-made tensors as a training source (parity checks): batches taken in order, cycling.
struct TensorSource {
  Tensor images, tokens;
  int64_t n = 0;
  explicit TensorSource(const std::string& path) {
    st::File f = st::File::open(path);
    CLIPCU_CHECK(f.contains("images") && f.contains("tokens"),
                 "training tensors '" << path << "' need `images` [N,3,R,R] and `tokens` [N,T]");
    images = f.get("images", DType::F32);
    tokens = f.get("tokens", DType::I64);
    CLIPCU_CHECK(images.dim() == 4 && tokens.dim() == 2 && images.size(0) == tokens.size(0),
                 "training tensors '" << path << "': images " << images.str() << " and tokens " << tokens.str()
                                      << " must be [N,3,R,R] and [N,T]");
    n = images.size(0);
  }
};

// The training data, behind one interface: a loader over a dataset, or pre-made tensors.
struct TrainSource {
  std::unique_ptr<data::Loader> loader;
  std::unique_ptr<TensorSource> tensors;
  int batch = 0;
  int64_t batches_per_epoch() const { return loader ? loader->batches_per_epoch() : tensors->n / batch; }
};

struct StepBatch {
  Tensor images, tokens;
  int64_t epoch = 0;
  data::Position position;
};

StepBatch next_batch(TrainSource& src, int64_t step) {
  StepBatch b;
  if (src.tensors) {
    int64_t start = (step * src.batch) % src.tensors->n;
    b.images = src.tensors->images.rows(start, src.batch);
    b.tokens = src.tensors->tokens.rows(start, src.batch);
    b.epoch = step * src.batch / src.tensors->n;
    return b;
  }
  auto nb = src.loader->next();
  CLIPCU_CHECK(nb.has_value(), "training data ended unexpectedly (the loader is endless)");
  b.images = nb->images;
  b.tokens = nb->tokens;
  b.epoch = nb->epoch;
  b.position = nb->position;
  return b;
}

// The model's state as float32 host tensors under prefix + state-dict name: parameters from the
// optimizer (a bf16 model's float32 masters), buffers converted; integer buffers as they are.
// On the CPU in float32 these are the model's own tensors, as before.
st::NamedTensors host_state(const models::CLIP& model, optim::AdamW& opt, const std::string& prefix) {
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < opt.params().size(); ++i) index[opt.params()[i].name] = i;
  st::NamedTensors out;
  for (const auto& [name, t] : model.state_dict()) {
    auto it = index.find(name);
    Tensor v = it != index.end() ? opt.master(it->second) : t;
    v = v.to(Device::cpu());
    if (is_floating(v.dtype()) && v.dtype() != DType::F32 && v.dtype() != DType::F64) v = v.to(DType::F32);
    out.emplace_back(prefix + name, v);
  }
  return out;
}

nlohmann::json options_json(const TrainOptions& o) {
  nlohmann::json j;
  j["model"] = o.model;
  j["pretrained"] = o.pretrained;
  j["train_data"] = o.train_data;
  j["val_data"] = o.val_data;
  j["batch_size"] = o.batch_size;
  j["epochs"] = o.epochs;
  j["steps"] = o.steps;
  j["lr"] = o.lr;
  j["warmup"] = o.warmup;
  j["lr_scheduler"] = o.lr_scheduler;
  j["wd"] = o.wd;
  j["beta1"] = o.beta1;
  j["beta2"] = o.beta2;
  j["eps"] = o.eps;
  j["grad_clip_norm"] = o.grad_clip_norm;
  j["precision"] = o.precision;
  j["seed"] = o.seed;
  j["device"] = o.device;
  j["workers"] = o.workers;
  j["augment"] = o.augment;
  j["vocab"] = o.vocab;
  return j;
}

}  // namespace

std::string find_model_config(const std::string& name_or_path) {
  CLIPCU_CHECK(!name_or_path.empty(), "no model given (--model NAME or a path to an open_clip config JSON)");
  if (fs::is_regular_file(name_or_path)) return name_or_path;
  std::vector<std::string> dirs;
  if (const char* e = std::getenv("CLIPCU_CONFIGS")) dirs.push_back(e);
#ifdef CLIPCU_SOURCE_DIR
  dirs.push_back(std::string(CLIPCU_SOURCE_DIR) + "/weights/configs");
#endif
  dirs.push_back("weights/configs");
  for (const auto& d : dirs) {
    std::string p = d + "/" + name_or_path + ".json";
    if (fs::is_regular_file(p)) return p;
  }
  std::string known;
  for (const auto& d : dirs) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(d, ec))
      if (e.path().extension() == ".json") known += (known.empty() ? "" : ", ") + e.path().stem().string();
    if (!known.empty()) break;
  }
  CLIPCU_FAIL("unknown model '" << name_or_path << "': not a file, and not a config in weights/configs"
                                << (known.empty() ? std::string() : " (known: " + known + ")"));
}

TrainResult train(const TrainOptions& o) {
  CLIPCU_CHECK(o.batch_size >= 1, "--batch-size must be at least 1, got " << o.batch_size);
  CLIPCU_CHECK(o.steps > 0 || o.epochs > 0, "give --steps or --epochs");
  CLIPCU_CHECK(!o.train_data.empty(), "no --train-data given");
  // auto: the GPU when one answers; errors name the reason (no GPU, no CUDA backend, bf16 on a CPU)
  const ComputeTarget target = resolve_target(o.device, o.precision);
  const Device device = target.device;

  // ---- model
  models::ModelConfig cfg = o.model_config ? *o.model_config : models::load_config(find_model_config(o.model));
  std::unique_ptr<models::CLIP> model;
  if (!o.pretrained.empty()) {
    model = std::make_unique<models::CLIP>(cfg);
    models::load_weights(*model, o.pretrained);
  } else {
    model = models::make_clip(cfg, o.seed);
  }
  // The float32 values as loaded or initialized: a bf16 model's master weights start from them
  // (handles to the host tensors, which move_model replaces in the model).
  std::vector<Tensor> initial_values = model->parameters();
  move_model(*model, target);
  model->train();
  const bool resnet = cfg.vision.resnet;
  if (!o.quiet) std::fprintf(stderr, "clipcu: training on %s\n", target.describe().c_str());

  // ---- data
  TrainSource src;
  src.batch = o.batch_size;
  std::unique_ptr<text::Tokenizer> tokenizer;
  data::TokenizeFn tokenize;
  auto make_tokenizer = [&] {
    std::string vocab = text::resolve_vocab_path(o.vocab);
    tokenizer = std::make_unique<text::Tokenizer>(vocab);
    CLIPCU_CHECK(tokenizer->vocab_size() <= cfg.text.vocab_size,
                 "the vocabulary '" << vocab << "' has " << tokenizer->vocab_size()
                                    << " tokens but the model's text_cfg.vocab_size is " << cfg.text.vocab_size);
    int64_t ctx = cfg.text.context_length;
    const text::Tokenizer* tk = tokenizer.get();
    tokenize = [tk, ctx](const std::string& s) { return tk->tokenize(s, ctx); };
  };
  const bool synthetic = o.train_data == "synthetic";
  std::shared_ptr<data::Dataset> train_ds, val_ds;
  std::vector<std::string> classes = o.classes, templates = o.templates;
  if (ends_with(o.train_data, ".safetensors")) {
    src.tensors = std::make_unique<TensorSource>(o.train_data);
    CLIPCU_CHECK(src.tensors->n >= o.batch_size && src.tensors->n % o.batch_size == 0,
                 "training tensors '" << o.train_data << "' hold " << src.tensors->n
                                      << " samples: the batch size must divide them");
    CLIPCU_CHECK(src.tensors->images.size(2) == cfg.vision.image_size,
                 "training tensors are " << src.tensors->images.size(2) << " px, the model takes "
                                         << cfg.vision.image_size);
  } else {
    make_tokenizer();
    if (synthetic) {
      train_ds = std::make_shared<data::ShapesDataset>(int(cfg.vision.image_size), o.synthetic_seed, 0,
                                                       uint64_t(o.synthetic_samples));
    } else {
      train_ds = data::open_dataset(o.train_data, o.csv);
    }
  }
  if (!o.val_data.empty()) {
    if (!tokenizer) make_tokenizer();
    if (o.val_data == "synthetic") {
      val_ds = std::make_shared<data::ShapesDataset>(int(cfg.vision.image_size), o.synthetic_seed,
                                                     uint64_t(o.synthetic_samples), 1000);
      if (classes.empty()) classes = data::ShapesGenerator::class_names();
      if (templates.empty()) templates = data::ShapesGenerator::prompt_templates();
    } else {
      val_ds = data::open_dataset(o.val_data, o.csv);
      fs::path base = fs::path(o.val_data).parent_path();
      if (classes.empty() && fs::is_regular_file(base / "classes.json"))
        classes = read_string_list((base / "classes.json").string());
      if (templates.empty() && fs::is_regular_file(base / "templates.json"))
        templates = read_string_list((base / "templates.json").string());
    }
  }

  // ---- run folder
  TrainResult result;
  std::string name = o.name.empty() ? timestamp_name() : o.name;
  result.run_dir = o.logs + "/" + name;
  fs::create_directories(result.run_dir);
  CheckpointManager ckpts(result.run_dir + "/checkpoints", o.keep_checkpoints);

  // ---- optimizer
  optim::AdamWConfig ac;
  ac.lr = o.lr;
  ac.beta1 = o.beta1;
  ac.beta2 = o.beta2 >= 0 ? o.beta2 : (resnet ? 0.999 : 0.98);
  ac.eps = o.eps >= 0 ? o.eps : (resnet ? 1e-8 : 1e-6);
  ac.weight_decay = o.wd;
  optim::AdamW opt(model->optimizer_params(), ac);
  if (opt.has_masters())
    for (size_t i = 0; i < initial_values.size(); ++i) opt.set_value(i, initial_values[i]);
  initial_values.clear();  // the host copies of a GPU model are not needed any more
  initial_values.shrink_to_fit();
  // parameter name -> optimizer index: checkpoints hold the optimizer's (master) weights
  std::map<std::string, size_t> param_index;
  for (size_t i = 0; i < opt.params().size(); ++i) param_index[opt.params()[i].name] = i;
  const size_t logit_scale_index = opt.index_of("logit_scale");

  // ---- resume
  int64_t step = 0, skipped_total = 0;
  data::Position start_pos;
  if (!o.resume.empty()) {
    std::optional<LoadedCheckpoint> c;
    if (o.resume == "latest") {
      c = CheckpointManager::load_latest(ckpts.dir());
      CLIPCU_CHECK(c.has_value(), "--resume latest: no usable checkpoint in '" << ckpts.dir() << "'");
    } else {
      c = CheckpointManager::load(o.resume);
    }
    for (auto& [pname, t] : model->state_dict()) {
      std::string key = "model." + pname;
      CLIPCU_CHECK(c->tensors.contains(key), "checkpoint '" << c->path << "' has no tensor '" << key << "'");
      Tensor v = c->tensors.get(key);
      CLIPCU_CHECK(v.shape() == t.shape(), "checkpoint '" << c->path << "': '" << key << "' is " << v.str()
                                                          << ", the model has " << t.str());
      auto pi = param_index.find(pname);
      if (pi != param_index.end()) {
        opt.set_value(pi->second, v);  // the parameter, and a bf16 model's float32 master
      } else {
        Tensor dst = t;
        dst.copy_from(v);
      }
    }
    for (size_t i = 0; i < opt.params().size(); ++i) {
      const std::string& pname = opt.params()[i].name;
      opt.exp_avg()[i].copy_from(c->tensors.get("optim.exp_avg." + pname));
      opt.exp_avg_sq()[i].copy_from(c->tensors.get("optim.exp_avg_sq." + pname));
    }
    opt.set_steps(c->meta.at("optimizer_steps").get<int64_t>());
    step = c->step;
    skipped_total = c->meta.value("skipped_steps", int64_t(0));
    start_pos.epoch = c->meta.at("loader_epoch").get<int64_t>();
    start_pos.index = c->meta.at("loader_index").get<int64_t>();
    if (!o.quiet) std::fprintf(stderr, "resumed from %s at step %lld\n", c->path.c_str(), static_cast<long long>(step));
  }

  if (train_ds) {
    data::LoaderOptions lo;
    lo.batch_size = o.batch_size;
    lo.image_size = int(cfg.vision.image_size);
    lo.context_length = int(cfg.text.context_length);
    lo.augment = o.augment;
    lo.shuffle = true;
    lo.drop_last = true;
    lo.epochs = 0;  // endless: the step count decides
    lo.seed = o.seed;
    lo.workers = o.workers;
    src.loader = std::make_unique<data::Loader>(train_ds, lo, tokenize, start_pos);
    CLIPCU_CHECK(src.loader->batches_per_epoch() > 0, "training data " << train_ds->describe() << " has fewer than "
                                                                       << o.batch_size << " samples (one batch)");
  }
  const int64_t per_epoch = src.batches_per_epoch();
  const int64_t total = o.steps > 0 ? o.steps : o.epochs * per_epoch;
  CLIPCU_CHECK(step <= total, "the checkpoint is at step " << step << ", past the run's " << total << " steps");

  optim::ScheduleConfig sc;
  sc.kind = optim::parse_lr_schedule(o.lr_scheduler);
  sc.base_lr = o.lr;
  sc.warmup = o.warmup;
  sc.total_steps = total;
  sc.cooldown_steps = o.lr_cooldown_steps;

  {
    nlohmann::json pj = options_json(o);
    pj["model_config"] = nlohmann::json::parse(models::config_to_string(cfg));
    pj["total_steps"] = total;
    pj["device"] = device.str();
    if (device.is_cuda()) pj["gpu"] = device_name(device);
    write_file_atomic(result.run_dir + "/params.json", pj.dump(1) + "\n");
  }
  std::ofstream metrics(result.run_dir + "/metrics.jsonl", std::ios::app);
  CLIPCU_CHECK(metrics, "cannot write '" << result.run_dir << "/metrics.jsonl'");

  data::Position pos = start_pos;
  auto save_checkpoint = [&](int64_t at_step, int64_t consecutive) {
    st::NamedTensors ts = host_state(*model, opt, "model.");
    for (size_t i = 0; i < opt.params().size(); ++i) {
      ts.emplace_back("optim.exp_avg." + opt.params()[i].name, opt.exp_avg()[i]);
      ts.emplace_back("optim.exp_avg_sq." + opt.params()[i].name, opt.exp_avg_sq()[i]);
    }
    nlohmann::json meta;
    meta["optimizer_steps"] = opt.steps();
    meta["loader_epoch"] = pos.epoch;
    meta["loader_index"] = pos.index;
    meta["skipped_steps"] = skipped_total;
    meta["consecutive_skips"] = consecutive;
    meta["model_config"] = nlohmann::json::parse(models::config_to_string(cfg));
    meta["options"] = options_json(o);
    return ckpts.save(at_step, ts, meta);
  };

  // periodic validations may look at a subset (--val-max-samples); the final one sees everything
  auto run_validation = [&](int64_t at_step, bool final) {
    if (!val_ds) return;
    EvalOptions eo;
    eo.batch_size = std::max(o.batch_size, 64);
    eo.workers = o.workers;
    eo.max_samples = final ? 0 : o.val_max_samples;
    eo.classes = classes;
    eo.templates = templates;
    eo.progress = !o.quiet;
    EvalResult r = evaluate(*model, val_ds, tokenize, eo);
    nlohmann::json j = r.to_json();
    j["kind"] = "val";
    j["step"] = at_step;
    metrics << j.dump() << "\n" << std::flush;
    result.last_val = j;
    if (!o.quiet) {
      std::fprintf(stderr, "val step %lld: %s%s i2t R@1 %.3f t2i R@1 %.3f (n=%lld)\n", static_cast<long long>(at_step),
                   r.has_zeroshot ? "zero-shot top1 " : "",
                   r.has_zeroshot ? (std::to_string(r.zeroshot.top1).substr(0, 5) + " ").c_str() : "",
                   r.retrieval.i2t_r1, r.retrieval.t2i_r1, static_cast<long long>(r.n));
    }
  };

  // ---- the loop
  SigintGuard sigint;
  Progress progress("train", total, stderr, std::max<int64_t>(o.log_every_n_steps, 1));
  int64_t consecutive_skips = 0, window_steps = 0, window_samples = 0, run_steps = 0;
  double window_loss = 0, window_seconds = 0, last_grad_norm = 0;
  const double max_log_scale = std::log(100.0);
  tape().clear();
  while (step < total) {
    auto t0 = std::chrono::steady_clock::now();
    double lr = optim::learning_rate(sc, step);
    StepBatch b = next_batch(src, step);
    // Images go to the device through the pinned staging buffers (and to bf16 there in bf16
    // mode); the text tower reads the token ids on the host and uploads them.
    Tensor images = nn::to_model_input(b.images, device, target.dtype), tokens = b.tokens;
    Tensor fi = model->encode_image(images);
    Tensor ft = model->encode_text(tokens);
    bool inject = std::find(o.inject_nan_steps.begin(), o.inject_nan_steps.end(), step) != o.inject_nan_steps.end();
    if (inject) fi = ops::scale(fi, NAN);
    ops::ClipLossOut out;
    {
      NameScope loss_scope("loss");
      out = model->loss(fi, ft);
    }
    double loss = out.loss.item();
    bool ok = std::isfinite(loss);
    double gnorm = NAN;
    if (ok) {
      backward(out.loss);
      gnorm = o.grad_clip_norm > 0 ? opt.clip_grad_norm(o.grad_clip_norm) : opt.grad_norm();
      ok = std::isfinite(gnorm);
    } else {
      tape().clear();
    }
    if (ok) {
      opt.step(lr);
      opt.clamp(logit_scale_index, 0.0, max_log_scale);  // on the master weight in bf16 mode
      consecutive_skips = 0;
      last_grad_norm = gnorm;
    } else {
      ++skipped_total;
      ++consecutive_skips;
      nlohmann::json j{{"kind", "skip"}, {"step", step}, {"loss", std::isfinite(loss) ? loss : -1.0},
                       {"grad_norm_finite", std::isfinite(gnorm)}, {"consecutive", consecutive_skips}};
      metrics << j.dump() << "\n" << std::flush;
      std::fprintf(stderr, "\nclipcu: warning: step %lld: non-finite %s, update skipped (%lld in a row)\n",
                   static_cast<long long>(step), std::isfinite(loss) ? "gradient norm" : "loss",
                   static_cast<long long>(consecutive_skips));
    }
    model->zero_grad();
    pos = b.position;
    ++step;
    ++run_steps;
    double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    result.train_seconds += dt;
    window_seconds += dt;
    window_samples += images.size(0);
    if (std::isfinite(loss)) {
      window_loss += loss;
      ++window_steps;
    }
    if (consecutive_skips >= o.max_consecutive_skips) {
      metrics.flush();
      CLIPCU_FAIL("training stopped: " << consecutive_skips << " consecutive steps had a non-finite loss or gradient "
                                       << "(last at step " << step - 1 << "); the last good checkpoint in '"
                                       << ckpts.dir() << "' is intact. Try a lower --lr or --grad-clip-norm.");
    }
    double scale = std::exp(opt.master(logit_scale_index).item());
    if (step % std::max<int64_t>(o.log_every_n_steps, 1) == 0 || step == total) {
      double mean_loss = window_steps ? window_loss / double(window_steps) : NAN;
      nlohmann::json j{{"kind", "train"},        {"step", step},           {"epoch", b.epoch},
                       {"loss", mean_loss},      {"lr", lr},               {"logit_scale", scale},
                       {"grad_norm", last_grad_norm},
                       {"samples_per_s", window_seconds > 0 ? double(window_samples) / window_seconds : 0.0},
                       {"skipped", skipped_total}};
      if (device.is_cuda()) {
        const MemoryStats ms = memory_stats(device);
        j["gpu_peak_bytes"] = ms.peak_bytes;  // the caching allocator's high-water mark
        j["gpu_mallocs"] = ms.device_mallocs;  // flat after the first step: no cudaMalloc in a step
      }
      metrics << j.dump() << "\n" << std::flush;
      result.final_loss = mean_loss;
      window_loss = 0, window_steps = 0, window_samples = 0, window_seconds = 0;
    }
    if (!o.quiet) {
      char f[160];
      double sps = result.train_seconds > 0 ? double(run_steps) * double(o.batch_size) / result.train_seconds : 0.0;
      std::string extra = skipped_total ? " skipped " + std::to_string(skipped_total) : "";
      if (device.is_cuda()) extra += " mem " + format_bytes(memory_stats(device).peak_bytes);
      std::snprintf(f, sizeof f, "%.0f samples/s loss %.4f lr %.2e scale %.1f%s", sps, loss, lr, scale, extra.c_str());
      progress.update(step, f);
    }
    bool epoch_end = per_epoch > 0 && step % per_epoch == 0;
    bool last = step == total;
    bool interrupted = g_interrupt.load();
    bool stop_now = o.stop_after_steps > 0 && run_steps >= o.stop_after_steps;
    // A checkpoint is never taken right after a skipped step: a non-finite forward may have
    // reached state that the skip does not undo (BatchNorm running statistics), and the last
    // good checkpoint must stay the newest one.
    bool save_point = (o.save_every_n_steps > 0 && step % o.save_every_n_steps == 0) ||
                      (epoch_end && o.save_frequency > 0 && (step / per_epoch) % o.save_frequency == 0) || last ||
                      interrupted || stop_now;
    if (save_point && consecutive_skips == 0) {
      save_checkpoint(step, consecutive_skips);
    }
    if (!last && ((o.val_every_n_steps > 0 && step % o.val_every_n_steps == 0) ||
                  (epoch_end && o.val_frequency > 0 && (step / per_epoch) % o.val_frequency == 0 && o.steps == 0))) {
      run_validation(step, false);
    }
    if (interrupted || stop_now) {
      if (!o.quiet) progress.finish("stopped");
      result.interrupted = interrupted;
      if (interrupted)
        std::fprintf(stderr, "clipcu: interrupted at step %lld: checkpoint saved in %s; continue with --resume latest\n",
                     static_cast<long long>(step), ckpts.dir().c_str());
      result.steps = step;
      result.skipped_steps = skipped_total;
      return result;
    }
  }
  if (!o.quiet) progress.finish();
  run_validation(step, true);
  result.steps = step;
  result.skipped_steps = skipped_total;
  result.weights_path = result.run_dir + "/weights.safetensors";
  // float32 on the host: the masters of a bf16 model, not their rounded copies
  weights::save_state_dict(result.weights_path, host_state(*model, opt, ""), DType::F32,
                           {{models::kConfigMetadataKey, models::config_to_string(cfg)}});
  if (!o.quiet) {
    if (device.is_cuda())
      std::fprintf(stderr, "peak GPU memory %s (caching allocator)\n", format_bytes(memory_stats(device).peak_bytes).c_str());
    std::fprintf(stderr, "wrote %s\n", result.weights_path.c_str());
  }
  return result;
}

}  // namespace clipcu::train
