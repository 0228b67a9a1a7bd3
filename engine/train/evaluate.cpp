#include "engine/train/evaluate.h"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <sstream>

#include "engine/autograd.h"
#include "engine/train/progress.h"

namespace clipcu::train {

nlohmann::json EvalResult::to_json() const {
  nlohmann::json j;
  j["n"] = n;
  if (has_zeroshot) {
    j["zeroshot_top1"] = zeroshot.top1;
    j["zeroshot_top5"] = zeroshot.top5;
  }
  const RetrievalResult& r = retrieval;
  j["i2t_r1"] = r.i2t_r1, j["i2t_r5"] = r.i2t_r5, j["i2t_r10"] = r.i2t_r10;
  j["t2i_r1"] = r.t2i_r1, j["t2i_r5"] = r.t2i_r5, j["t2i_r10"] = r.t2i_r10;
  j["i2t_mean_rank"] = r.i2t_mean_rank, j["t2i_mean_rank"] = r.t2i_mean_rank;
  j["i2t_median_rank"] = r.i2t_median_rank, j["t2i_median_rank"] = r.t2i_median_rank;
  j["eval_seconds"] = seconds;
  return j;
}

std::vector<std::string> read_string_list(const std::string& path) {
  std::ifstream in(path);
  CLIPCU_CHECK(in, "cannot open '" << path << "'");
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, false);
  CLIPCU_CHECK(!j.is_discarded() && j.is_array(), "'" << path << "' is not a JSON array of strings");
  std::vector<std::string> out;
  for (const auto& e : j) {
    CLIPCU_CHECK(e.is_string(), "'" << path << "' holds a value that is not a string");
    out.push_back(e.get<std::string>());
  }
  return out;
}

std::string fill_prompt(const std::string& tmpl, const std::string& class_name) {
  size_t at = tmpl.find("{}");
  CLIPCU_CHECK(at != std::string::npos, "prompt template '" << tmpl << "' has no {} for the class name");
  // English article: "a {}" + "orange circle" reads "an orange circle", as the captions say
  bool article = at >= 2 && tmpl.compare(at - 2, 2, "a ") == 0 && (at == 2 || tmpl[at - 3] == ' ');
  bool vowel = !class_name.empty() && std::string("aeiouAEIOU").find(class_name[0]) != std::string::npos;
  std::string out = tmpl.substr(0, at);
  if (article && vowel) {
    out.pop_back();  // "a " -> "an "
    out.append("n ");
  }
  out.append(class_name).append(tmpl, at + 2, std::string::npos);
  return out;
}

Tensor zeroshot_classifier(models::CLIP& model, const data::TokenizeFn& tokenize,
                           const std::vector<std::string>& classes, const std::vector<std::string>& templates_in) {
  std::vector<std::string> templates = templates_in.empty() ? std::vector<std::string>{"{}"} : templates_in;
  CLIPCU_CHECK(!classes.empty(), "zero-shot evaluation needs at least one class name");
  int64_t ctx = model.config().text.context_length;
  std::vector<int64_t> ids;
  for (const auto& c : classes)
    for (const auto& t : templates) {
      std::vector<int64_t> row = tokenize(fill_prompt(t, c));
      CLIPCU_CHECK(int64_t(row.size()) == ctx, "tokenizer returned " << row.size() << " ids, context is " << ctx);
      ids.insert(ids.end(), row.begin(), row.end());
    }
  int64_t n = int64_t(classes.size() * templates.size());
  Tensor tokens = Tensor::from_ints(ids, {n, ctx});  // the text tower uploads them
  NoGradGuard ng;
  // the metrics run on the host in float32 (bf16 or GPU features are brought back first)
  Tensor feats;
  if (model.logit_scale.device().is_cpu()) {
    feats = model.encode_text(tokens).to(DType::F32);
  } else {
    // classes x templates can be tens of thousands of prompts: bounded batches on a GPU
    const int64_t chunk = 1024;
    feats = Tensor::empty({n, model.config().embed_dim}, DType::F32);
    for (int64_t at = 0; at < n; at += chunk) {
      const int64_t m = std::min(chunk, n - at);
      feats.rows(at, m).copy_from(model.encode_text(tokens.rows(at, m)).to(Device::cpu()).to(DType::F32));
    }
  }
  return class_embeddings(feats, int64_t(classes.size()), int64_t(templates.size()));
}

EvalResult evaluate(models::CLIP& model, std::shared_ptr<const data::Dataset> dataset, const data::TokenizeFn& tokenize,
                    const EvalOptions& opts) {
  auto t0 = std::chrono::steady_clock::now();
  bool was_training = model.training();
  model.eval();
  NoGradGuard ng;
  data::LoaderOptions lo;
  lo.batch_size = opts.batch_size;
  lo.image_size = int(model.config().vision.image_size);
  lo.context_length = int(model.config().text.context_length);
  lo.augment = false;
  lo.shuffle = false;
  lo.drop_last = false;
  lo.epochs = 1;
  lo.workers = opts.workers;
  data::Loader loader(dataset, lo, tokenize);
  int64_t limit = opts.max_samples > 0 ? std::min<int64_t>(opts.max_samples, int64_t(dataset->size()))
                                       : int64_t(dataset->size());
  EvalResult r;
  std::vector<Tensor> img, txt;
  std::vector<int64_t> labels;
  Progress progress("eval", limit);
  Device dev = model.logit_scale.device();
  while (r.n < limit) {
    auto b = loader.next();
    if (!b) break;
    int64_t take = std::min<int64_t>(b->size(), limit - r.n);
    if (take <= 0) break;
    // images through the pinned staging buffers in the model's type; token ids stay on the host
    // (the text tower checks and pools them there and uploads them)
    Tensor images = nn::to_model_input(b->images.rows(0, take), dev, model.logit_scale.dtype());
    Tensor tokens = b->tokens.rows(0, take);
    img.push_back(model.encode_image(images).to(Device::cpu()));
    txt.push_back(model.encode_text(tokens).to(Device::cpu()));
    for (int64_t i = 0; i < take; ++i) {
      r.captions.push_back(b->captions[size_t(i)]);
      r.indices.push_back(b->indices[size_t(i)]);
      labels.push_back(b->labels[size_t(i)]);
    }
    r.n += take;
    if (opts.progress) progress.update(r.n);
  }
  if (opts.progress) progress.finish();
  CLIPCU_CHECK(r.n > 0, "evaluation: no sample of " << dataset->describe() << " could be loaded");
  auto cat = [](const std::vector<Tensor>& parts) {
    int64_t rows = 0, e = parts[0].size(1);
    for (const auto& p : parts) rows += p.size(0);
    Tensor out = Tensor::empty({rows, e}, DType::F32);
    int64_t at = 0;
    for (const auto& p : parts) {
      out.rows(at, p.size(0)).copy_from(p.to(DType::F32));
      at += p.size(0);
    }
    return out;
  };
  r.image_features = cat(img);
  r.text_features = cat(txt);
  r.retrieval = retrieval(r.image_features, r.text_features);
  bool labelled = !labels.empty();
  for (int64_t y : labels) labelled = labelled && y >= 0;
  if (labelled && !opts.classes.empty()) {
    Tensor cls = zeroshot_classifier(model, tokenize, opts.classes, opts.templates);
    r.zeroshot = zero_shot(r.image_features, cls, labels);
    r.has_zeroshot = true;
  }
  model.train(was_training);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace clipcu::train
