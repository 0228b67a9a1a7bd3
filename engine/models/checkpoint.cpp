#include "engine/models/checkpoint.h"

#include <nlohmann/json.hpp>
#include <set>

#include "weights/hf_import.h"
#include "weights/state_dict.h"

namespace clipcu::models {

using json = nlohmann::json;

// Integer fields of OpenAI's released state dicts (clip.load removes them too).
static const std::set<std::string> kOpenAIExtras = {"input_resolution", "context_length", "vocab_size"};

static nn::Activation activation_from(const std::string& name) {
  if (name == "quick_gelu") return nn::Activation::QuickGELU;
  if (name == "gelu") return nn::Activation::GELU;
  if (name == "gelu_tanh") return nn::Activation::GELUTanh;
  CLIPCU_FAIL("unknown activation '" << name << "'");
}

static ModelConfig config_of(const weights::HFClipCheckpoint& hf, const std::string& dir) {
  ModelConfig c = parse_config(hf.open_clip_config, dir + "/config.json");
  c.vision.act = activation_from(hf.vision_act);
  c.text.act = activation_from(hf.text_act);
  c.vision.ln_eps = hf.vision_ln_eps;
  c.text.ln_eps = hf.text_ln_eps;
  c.text.eos_id = hf.text_eos_id;
  validate_config(c);
  return c;
}

ModelConfig hf_config(const std::string& dir) { return config_of(weights::import_hf_clip(dir, false), dir); }

// The first field where two configs' JSON forms differ ("vision_cfg.width"), or "".
static std::string first_difference(const json& a, const json& b, const std::string& path = "") {
  if (a.is_object() && b.is_object()) {
    std::set<std::string> keys;
    for (auto it = a.begin(); it != a.end(); ++it) keys.insert(it.key());
    for (auto it = b.begin(); it != b.end(); ++it) keys.insert(it.key());
    for (const std::string& k : keys) {
      const std::string p = path.empty() ? k : path + "." + k;
      if (!a.contains(k) || !b.contains(k)) return p;
      std::string d = first_difference(a.at(k), b.at(k), p);
      if (!d.empty()) return d;
    }
    return "";
  }
  if (a.is_number() && b.is_number()) return a.get<double>() == b.get<double>() ? "" : path;
  return a == b ? "" : path;
}

ModelConfig resolve_config(const std::string& weights_path, const std::string& config_path) {
  if (weights::is_hf_clip_dir(weights_path)) {
    ModelConfig c = hf_config(weights_path);
    if (!config_path.empty()) {
      // Only open_clip's fields are compared: the settings open_clip's format cannot hold
      // (activations per tower, eps, eos pooling) come from the checkpoint's config.json.
      json ours = config_to_json(c), theirs = config_to_json(load_config(config_path));
      ours.erase("clipcu");
      theirs.erase("clipcu");
      std::string d = first_difference(ours, theirs);
      CLIPCU_CHECK(d.empty(), config_path << ": " << d << " disagrees with the HuggingFace checkpoint's "
                                          << weights_path << "/config.json");
    }
    return c;
  }
  if (!config_path.empty()) return load_config(config_path);
  st::File f = st::File::open(weights_path);
  auto it = f.metadata().find(kConfigMetadataKey);
  CLIPCU_CHECK(it != f.metadata().end(),
               weights_path << ": no model config: pass one (--config, an open_clip JSON such as "
                               "weights/configs/ViT-B-32.json); this file has no '"
                            << kConfigMetadataKey << "' metadata");
  return parse_config_text(it->second, weights_path + " (metadata " + kConfigMetadataKey + ")");
}

void load_weights(CLIP& model, const std::string& path) {
  if (weights::is_hf_clip_dir(path)) {
    weights::HFClipCheckpoint hf = weights::import_hf_clip(path);
    weights::assign_state_dict(model.state_dict(), hf.state_dict, path + " (imported from HuggingFace names)");
    return;
  }
  weights::load_state_dict(model.state_dict(), path, kOpenAIExtras);
}

void save_clip(const CLIP& model, const std::string& path, DType dtype) {
  weights::save_state_dict(path, model.state_dict(), dtype, {{kConfigMetadataKey, config_to_string(model.config())}});
}

std::unique_ptr<CLIP> load_clip(const std::string& weights_path, const std::string& config_path) {
  auto model = std::make_unique<CLIP>(resolve_config(weights_path, config_path));
  load_weights(*model, weights_path);
  return model;
}

}  // namespace clipcu::models
