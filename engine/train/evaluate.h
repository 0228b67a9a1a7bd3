// Evaluation of a CLIP model on a dataset: zero-shot classification (class names x prompt
// templates -> averaged normalized text embeddings; top-1/top-5) when the dataset has labels
// and classes are given, and image<->text retrieval over the dataset's (image, caption) pairs.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/data/dataset.h"
#include "engine/data/loader.h"
#include "engine/models/clip.h"
#include "engine/train/metrics.h"

namespace clipcu::train {

struct EvalOptions {
  int batch_size = 128;
  int workers = 2;
  int64_t max_samples = 0;  // 0: all
  std::vector<std::string> classes;    // zero-shot class names (empty: no zero-shot)
  std::vector<std::string> templates;  // prompts with "{}" for the class name (empty: "{}")
  bool progress = true;
};

struct EvalResult {
  int64_t n = 0;
  bool has_zeroshot = false;
  ZeroShotResult zeroshot;
  RetrievalResult retrieval;
  Tensor image_features, text_features;  // [n, E] as embedded (unnormalized)
  std::vector<std::string> captions;
  std::vector<int64_t> indices;  // dataset index of each row
  double seconds = 0;
  nlohmann::json to_json() const;  // zeroshot_top1, zeroshot_top5, i2t_r1, ..., n
};

// Embeds the dataset (inference mode, no gradients; the model's mode is restored after).
EvalResult evaluate(models::CLIP& model, std::shared_ptr<const data::Dataset> dataset, const data::TokenizeFn& tokenize,
                    const EvalOptions& opts);

// A prompt from a template with "{}": "a {}" + "orange circle" -> "an orange circle".
std::string fill_prompt(const std::string& tmpl, const std::string& class_name);

// Zero-shot classifier weights [C, E] for class names x templates.
Tensor zeroshot_classifier(models::CLIP& model, const data::TokenizeFn& tokenize,
                           const std::vector<std::string>& classes, const std::vector<std::string>& templates);

// classes.json / templates.json (JSON arrays of strings) in `dir`, when present.
std::vector<std::string> read_string_list(const std::string& path);

}  // namespace clipcu::train
