#include "engine/train/inspect.h"

#include <chrono>
#include <filesystem>

#include "engine/autograd.h"
#include "engine/data/image.h"
#include "engine/data/preprocess.h"
#include "engine/inspect.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "engine/text/tokenizer.h"

namespace clipcu::inspect {

namespace {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// "FILE" or "FILE:NAME" (the whole string is the file when that file exists).
std::pair<std::string, std::string> split_spec(const std::string& spec) {
  if (std::filesystem::exists(spec)) return {spec, ""};
  size_t colon = spec.rfind(':');
  if (colon == std::string::npos) return {spec, ""};
  return {spec.substr(0, colon), spec.substr(colon + 1)};
}

Tensor tensor_from(const std::string& spec, const std::vector<std::string>& defaults, const char* what) {
  auto [path, name] = split_spec(spec);
  st::File f = st::File::open(path);
  if (name.empty()) {
    for (const std::string& d : defaults)
      if (f.contains(d)) {
        name = d;
        break;
      }
    std::string tried;
    for (const std::string& d : defaults) tried += (tried.empty() ? "'" : ", '") + d + "'";
    CLIPCU_CHECK(!name.empty(),
                 path << ": no " << what << " tensor (looked for " << tried << "; name one with " << path << ":NAME)");
  }
  CLIPCU_CHECK(f.contains(name), path << ": no tensor named '" << name << "'");
  return f.get(name);
}

Tensor load_images(const InputSpec& spec, const models::ModelConfig& cfg) {
  const int64_t R = cfg.vision.image_size;
  std::vector<Tensor> parts;
  if (!spec.pixels.empty()) {
    Tensor p = tensor_from(spec.pixels, {"pixels", "input.images", "input.pixel_values"}, "image");
    CLIPCU_CHECK(is_floating(p.dtype()), spec.pixels << ": the images must be floating, got " << p.str());
    p = p.to(DType::F32);
    if (p.dim() == 3) p = p.view({1, p.size(0), p.size(1), p.size(2)});
    CLIPCU_CHECK(
        p.dim() == 4 && p.size(1) == 3 && p.size(2) == R && p.size(3) == R,
        spec.pixels << ": images " << shape_str(p.shape()) << ", the model takes [N, 3, " << R << ", " << R << "]");
    parts.push_back(p.clone());
  }
  for (const std::string& file : spec.images)
    parts.push_back(data::preprocess(data::decode_image_file(file), int(R)).view({1, 3, R, R}));
  if (parts.empty()) return Tensor();
  if (parts.size() == 1) return parts[0];
  NoGradGuard no_grad;
  return ops::concat(parts, 0);
}

Tensor load_text(const InputSpec& spec, const models::ModelConfig& cfg) {
  const int64_t T = cfg.text.context_length;
  std::vector<std::vector<int64_t>> rows;
  if (!spec.tokens.empty()) {
    Tensor t = tensor_from(spec.tokens, {"tokens", "input.text", "input.input_ids"}, "token id");
    CLIPCU_CHECK(t.dtype() == DType::I64 || t.dtype() == DType::I32,
                 spec.tokens << ": token ids must be I64 or I32, got " << t.str());
    if (t.dim() == 1) t = t.view({1, t.size(0)});
    CLIPCU_CHECK(t.dim() == 2 && t.size(1) >= 1 && t.size(1) <= T,
                 spec.tokens << ": token ids " << shape_str(t.shape()) << ", expected [M, T] with T <= " << T);
    const std::vector<int64_t> v = t.to_i64_vector();
    for (int64_t m = 0; m < t.size(0); ++m)
      rows.emplace_back(v.begin() + m * t.size(1), v.begin() + (m + 1) * t.size(1));
  }
  if (!spec.texts.empty()) {
    const text::Tokenizer tok(text::resolve_vocab_path(spec.vocab));
    for (const std::string& s : spec.texts) rows.push_back(tok.tokenize(s, T));
  }
  if (rows.empty()) return Tensor();
  size_t L = 0;
  for (const auto& r : rows) L = std::max(L, r.size());
  std::vector<int64_t> flat(rows.size() * L, 0);
  for (size_t m = 0; m < rows.size(); ++m) std::copy(rows[m].begin(), rows[m].end(), flat.begin() + long(m * L));
  return Tensor::from_ints(flat, {int64_t(rows.size()), int64_t(L)});
}

}  // namespace

Inputs random_inputs(const models::ModelConfig& cfg, int64_t batch, uint64_t seed, bool images, bool text) {
  CLIPCU_CHECK(batch > 0, "random inputs: the batch size must be positive, got " << batch);
  Inputs in;
  Rng rng(seed);
  if (images) {
    const int64_t R = cfg.vision.image_size;
    Rng r = rng.fork("images");
    in.images = Tensor::randn({batch, 3, R, R}, r);
    in.images.set_name("input.images");
  }
  if (text) {
    // As CLIP's tokenizer writes a row: start, ids, end (the highest id: what the tower pools),
    // zero padding. Content ids avoid the two special ids.
    const int64_t T = cfg.text.context_length, V = cfg.text.vocab_size;
    CLIPCU_CHECK(T >= 2 && V >= 4, "random inputs: context length " << T << " / vocabulary " << V << " too small");
    Rng r = rng.fork("text");
    std::vector<int64_t> ids(size_t(batch * T), 0);
    for (int64_t b = 0; b < batch; ++b) {
      int64_t* row = ids.data() + b * T;
      const int64_t n = int64_t(r.below(uint64_t(T - 1)));  // content tokens: 0 .. T-2
      row[0] = V - 2;
      for (int64_t i = 1; i <= n; ++i) row[i] = 1 + int64_t(r.below(uint64_t(V - 3)));
      row[n + 1] = V - 1;
    }
    in.text = Tensor::from_ints(ids, {batch, T});
    in.text.set_name("input.text");
  }
  return in;
}

Inputs load_inputs(const InputSpec& spec, const models::ModelConfig& cfg) {
  Inputs in;
  in.images = load_images(spec, cfg);
  in.text = load_text(spec, cfg);
  if (spec.random_batch > 0) {
    Inputs r = random_inputs(cfg, spec.random_batch, spec.seed, !in.images.defined(), !in.text.defined());
    if (!in.images.defined()) in.images = r.images;
    if (!in.text.defined()) in.text = r.text;
  }
  CLIPCU_CHECK(in.images.defined() || in.text.defined(),
               "no inputs: give --pixels or --image for the image tower, --tokens or --text for the text tower");
  if (in.images.defined()) in.images.set_name("input.images");
  if (in.text.defined()) in.text.set_name("input.text");
  return in;
}

StepResult run_step(models::CLIP& model, const Inputs& in, bool train_step) {
  CLIPCU_CHECK(grad_enabled(), "run_step records the step on the tape: grad mode must be on");
  CLIPCU_CHECK(in.images.defined() || in.text.defined(), "run_step: no inputs");
  if (train_step) {
    CLIPCU_CHECK(in.images.defined() && in.text.defined(),
                 "a training step needs images and texts (the contrastive loss pairs row i of both)");
    CLIPCU_CHECK(in.images.size(0) == in.text.size(0), "a training step needs as many images as texts, got "
                                                           << in.images.size(0) << " images and " << in.text.size(0)
                                                           << " texts");
  }
  const Device dev = model.logit_scale.device();
  // Images go to the model's device in its type (bf16 models get bf16 pixels); token ids stay
  // where they are (the text tower checks and pools them on the host and uploads them itself).
  auto on_device = [&](const Tensor& t, const char* name, bool floating) {
    if (!t.defined()) return t;
    Tensor d = floating ? nn::to_model_input(t, dev, model.logit_scale.dtype()) : t;
    if (d.name().empty()) d.set_name(name);
    return d;
  };
  const Tensor images = on_device(in.images, "input.images", true);
  const Tensor text = on_device(in.text, "input.text", false);

  tape().clear();
  model.train(train_step);
  model.zero_grad();
  StepResult r;
  r.train_step = train_step;
  const double t0 = now_seconds();
  tape().mark();
  if (images.defined()) r.image_features = model.encode_image(images);
  if (text.defined()) {
    NameScope scope("text");
    r.text_features = model.encode_text(text);
  }
  if (r.image_features.defined() && r.text_features.defined()) {
    if (train_step) {
      ops::ClipLossOut out;
      {
        NameScope scope("loss");
        out = model.loss(r.image_features, r.text_features);
      }
      r.loss = out.loss;
      r.logits_per_image = out.logits_per_image;
      backward(r.loss, Tensor(), /*retain=*/true);
    } else {
      NameScope scope("logits");
      r.logits_per_image = model.logits_per_image(r.image_features, r.text_features);
    }
  }
  // Waits for the device: the results are read back (cheap: features and a scalar).
  for (const Tensor* t : {&r.image_features, &r.text_features, &r.loss})
    if (t->defined() && !t->device().is_cpu()) (void)t->to(Device::cpu());
  r.seconds = now_seconds() - t0;
  return r;
}

st::NamedTensors collect_step(const Tape& tape, const models::CLIP& model, const Inputs& in, const StepResult& r,
                              const std::vector<std::string>& match) {
  st::NamedTensors values;
  auto add = [&](const std::string& name, const Tensor& t) {
    if (t.defined()) values.emplace_back(name, t);
  };
  add("input.images", in.images);
  add("input.text", in.text);
  add("image_features", r.image_features);
  add("text_features", r.text_features);
  add("logits_per_image", r.logits_per_image);
  add("loss", r.loss);
  const size_t leading = values.size();
  for (auto& nt : tape_tensors(tape)) values.push_back(std::move(nt));
  // Gradients of the results and of every tape tensor (the inputs have none).
  st::NamedTensors result_grads = gradients_of(st::NamedTensors(values.begin(), values.begin() + long(leading)));
  st::NamedTensors grads = gradients_of(st::NamedTensors(values.begin() + long(leading), values.end()));
  for (const auto& [name, p] : model.named_parameters())
    if (p.has_grad()) grads.emplace_back(grad_name(name), p.grad());
  st::NamedTensors all = std::move(values);
  for (auto& g : result_grads) all.push_back(std::move(g));
  for (auto& g : grads) all.push_back(std::move(g));
  st::NamedTensors out = filter(all, match);
  for (auto& [name, t] : out)
    if (!t.device().is_cpu()) t = t.to(Device::cpu());
  return out;
}

}  // namespace clipcu::inspect
