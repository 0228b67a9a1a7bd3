#include "engine/models/config.h"

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "engine/error.h"

namespace clipcu::models {

using json = nlohmann::json;

int64_t VisionConfig::heads() const { return resnet ? width * 32 / head_width : width / head_width; }
// open_clip: mlp_width = int(width * mlp_ratio). The small epsilon keeps ratios that come from a
// division (HuggingFace's intermediate_size / hidden_size) from truncating one below.
int64_t VisionConfig::mlp_width() const { return int64_t(std::floor(double(width) * mlp_ratio + 1e-6)); }
int64_t VisionConfig::grid() const { return patch_size > 0 ? image_size / patch_size : 0; }
int64_t TextConfig::mlp_width() const { return int64_t(std::floor(double(width) * mlp_ratio + 1e-6)); }

namespace {

// Reads the fields of one JSON object, remembering which it consumed so that the rest can be
// reported as unknown. Every error names the file and the dotted field path.
class Reader {
 public:
  Reader(const json& obj, std::string path, const std::string& origin) : obj_(obj), path_(std::move(path)), origin_(origin) {
    if (!obj_.is_object()) fail(path_, "must be a JSON object, got " + std::string(obj_.type_name()));
  }

  [[noreturn]] void fail(const std::string& field, const std::string& why) const {
    CLIPCU_FAIL(origin_ << ": " << field << ": " << why);
  }
  std::string field(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }

  // Present and not null.
  bool has(const std::string& key) {
    seen_.insert(key);
    return obj_.contains(key) && !obj_.at(key).is_null();
  }
  const json& at(const std::string& key) {
    if (!has(key)) fail(field(key), "missing (required)");
    return obj_.at(key);
  }

  int64_t integer(const std::string& key, const json& v) const {
    if (v.is_number_integer()) return v.get<int64_t>();
    // 224.0 is accepted (some tools write floats); 224.5 is not
    if (v.is_number_float()) {
      double d = v.get<double>();
      if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e15) return int64_t(d);
    }
    fail(field(key), "must be an integer, got " + v.dump());
  }
  int64_t positive(const std::string& key) {
    int64_t v = integer(key, at(key));
    if (v <= 0) fail(field(key), "must be positive, got " + std::to_string(v));
    return v;
  }
  int64_t positive_or(const std::string& key, int64_t fallback) { return has(key) ? positive(key) : fallback; }
  double number_or(const std::string& key, double fallback) {
    if (!has(key)) return fallback;
    const json& v = obj_.at(key);
    if (!v.is_number()) fail(field(key), "must be a number, got " + v.dump());
    double d = v.get<double>();
    if (!std::isfinite(d) || d <= 0) fail(field(key), "must be a positive number, got " + v.dump());
    return d;
  }
  bool boolean_or(const std::string& key, bool fallback) {
    if (!has(key)) return fallback;
    const json& v = obj_.at(key);
    if (!v.is_boolean()) fail(field(key), "must be true or false, got " + v.dump());
    return v.get<bool>();
  }
  // An open_clip feature this engine does not implement: accepted only at its default.
  void only_default(const std::string& key, const json& fallback) {
    seen_.insert(key);
    if (!obj_.contains(key)) return;
    const json& v = obj_.at(key);
    bool same = v == fallback || (v.is_number() && fallback.is_number() && v.get<double>() == fallback.get<double>());
    if (!same)
      fail(field(key), "= " + v.dump() + " is not supported by clipcu (only the default " + fallback.dump() + ")");
  }
  void no_unknown_fields() const {
    for (auto it = obj_.begin(); it != obj_.end(); ++it)
      if (!seen_.count(it.key())) fail(field(it.key()), "unknown field");
  }

 private:
  const json& obj_;
  std::string path_;
  const std::string& origin_;
  std::set<std::string> seen_;
};

void parse_vision(Reader& r, VisionConfig& v) {
  v.image_size = r.positive("image_size");
  const json& layers = r.at("layers");
  if (layers.is_array()) {
    v.resnet = true;
    if (layers.size() != 4)
      r.fail(r.field("layers"), "a ResNet needs a list of 4 stage depths, got " + std::to_string(layers.size()) +
                                     " (" + layers.dump() + ")");
    for (size_t i = 0; i < 4; ++i) {
      std::string key = "layers[" + std::to_string(i) + "]";
      v.resnet_layers[i] = r.integer(key, layers[i]);
      if (v.resnet_layers[i] <= 0) r.fail(r.field(key), "must be positive, got " + layers[i].dump());
    }
    v.layers = 0;
  } else {
    v.resnet = false;
    v.layers = r.integer("layers", layers);
    if (v.layers <= 0) r.fail(r.field("layers"), "must be positive, got " + layers.dump());
  }
  v.width = r.positive("width");
  v.head_width = r.positive_or("head_width", 64);
  v.mlp_ratio = r.number_or("mlp_ratio", 4.0);
  if (v.resnet) {
    if (r.has("patch_size"))
      r.fail(r.field("patch_size"), "must be null for a ResNet (vision_cfg.layers is a list)");
    v.patch_size = 0;
  } else {
    v.patch_size = r.positive("patch_size");
  }
  // open_clip options this engine does not implement, accepted at their defaults
  r.only_default("ls_init_value", nullptr);
  r.only_default("patch_dropout", 0.0);
  r.only_default("attentional_pool", false);
  r.only_default("no_ln_pre", false);
  r.only_default("pos_embed_type", "learnable");
  r.only_default("final_ln_after_pool", false);
  r.only_default("pool_type", "tok");
  r.only_default("output_tokens", false);
  r.only_default("act_kwargs", nullptr);
  r.only_default("norm_kwargs", nullptr);
  r.only_default("timm_model_name", nullptr);
  r.no_unknown_fields();
}

void parse_text(Reader& r, TextConfig& t) {
  t.context_length = r.positive("context_length");
  t.vocab_size = r.positive("vocab_size");
  t.width = r.positive("width");
  t.heads = r.positive("heads");
  t.layers = r.positive("layers");
  t.mlp_ratio = r.number_or("mlp_ratio", 4.0);
  r.only_default("ls_init_value", nullptr);
  r.only_default("embed_cls", false);
  r.only_default("no_causal_mask", false);
  r.only_default("final_ln_after_pool", false);
  r.only_default("pool_type", "argmax");
  r.only_default("proj_bias", false);
  r.only_default("proj_type", "linear");
  r.only_default("output_tokens", false);
  r.only_default("act_kwargs", nullptr);
  r.only_default("norm_kwargs", nullptr);
  r.only_default("hf_model_name", nullptr);
  r.only_default("hf_tokenizer_name", nullptr);
  // The padding id only matters with embed_cls; CLIP's tokenizer pads with 0.
  r.only_default("pad_id", 0);
  r.no_unknown_fields();
}

nn::Activation parse_activation(Reader& r, const std::string& key) {
  const json& v = r.at(key);
  if (v.is_string()) {
    for (nn::Activation a : {nn::Activation::QuickGELU, nn::Activation::GELU, nn::Activation::GELUTanh})
      if (v.get<std::string>() == nn::activation_name(a)) return a;
  }
  r.fail(r.field(key), "must be \"quick_gelu\", \"gelu\" or \"gelu_tanh\", got " + v.dump());
}

// The settings open_clip's format has no field for (see config.h), written by config_to_json
// only when they differ from what open_clip implies.
void parse_extensions(Reader& r, ModelConfig& c) {
  if (r.has("vision_act")) c.vision.act = parse_activation(r, "vision_act");
  if (r.has("text_act")) c.text.act = parse_activation(r, "text_act");
  c.vision.ln_eps = r.number_or("vision_ln_eps", c.vision.ln_eps);
  c.text.ln_eps = r.number_or("text_ln_eps", c.text.ln_eps);
  if (r.has("text_eos_id")) {
    c.text.eos_id = r.integer("text_eos_id", r.at("text_eos_id"));
    if (c.text.eos_id < 0) r.fail(r.field("text_eos_id"), "must be >= 0");
  }
  r.no_unknown_fields();
}

std::string origin_of(const ModelConfig& c) { return c.origin.empty() ? std::string("model config") : c.origin; }

}  // namespace

ModelConfig parse_config(const json& j, const std::string& origin) {
  ModelConfig c;
  c.origin = origin;
  Reader top(j, "", c.origin);
  c.embed_dim = top.positive("embed_dim");
  c.quick_gelu = top.boolean_or("quick_gelu", false);
  if (top.has("init_logit_scale")) {
    const json& v = top.at("init_logit_scale");
    if (!v.is_number()) top.fail("init_logit_scale", "must be a number, got " + v.dump());
    c.init_logit_scale = v.get<double>();
  }
  top.only_default("custom_text", false);
  top.only_default("init_logit_bias", nullptr);
  top.only_default("multimodal_cfg", nullptr);
  top.only_default("cast_dtype", nullptr);
  {
    Reader vr(top.at("vision_cfg"), "vision_cfg", c.origin);
    parse_vision(vr, c.vision);
  }
  {
    Reader tr(top.at("text_cfg"), "text_cfg", c.origin);
    parse_text(tr, c.text);
  }
  const nn::Activation act = c.quick_gelu ? nn::Activation::QuickGELU : nn::Activation::GELU;
  c.vision.act = act;
  c.text.act = act;
  if (top.has("clipcu")) {
    Reader er(top.at("clipcu"), "clipcu", c.origin);
    parse_extensions(er, c);
  }
  top.no_unknown_fields();
  validate_config(c);
  return c;
}

ModelConfig parse_config_text(const std::string& text, const std::string& origin) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    CLIPCU_FAIL(origin << ": not valid JSON: " << e.what());
  }
  return parse_config(j, origin);
}

ModelConfig load_config(const std::string& path) {
  std::ifstream f(path);
  CLIPCU_CHECK(f.good(), path << ": cannot open the model config");
  std::stringstream ss;
  ss << f.rdbuf();
  return parse_config_text(ss.str(), path);
}

// The feature map side that reaches ModifiedResNet's attention pool from an R x R image:
// the stem's 3x3 stride-2 conv (padding 1), then four 2x average pools (stem, layer2..4).
static int64_t resnet_final_side(int64_t R) {
  int64_t s = (R - 1) / 2 + 1;
  for (int i = 0; i < 4; ++i) s /= 2;
  return s;
}

void validate_config(const ModelConfig& c) {
  const std::string o = origin_of(c);
  auto fail = [&](const std::string& field, const std::string& why) { CLIPCU_FAIL(o << ": " << field << ": " << why); };
  auto pos = [&](int64_t v, const char* field) {
    if (v <= 0) fail(field, "must be positive, got " + std::to_string(v));
  };
  pos(c.embed_dim, "embed_dim");
  const VisionConfig& v = c.vision;
  pos(v.image_size, "vision_cfg.image_size");
  pos(v.width, "vision_cfg.width");
  pos(v.head_width, "vision_cfg.head_width");
  if (!(v.mlp_ratio > 0)) fail("vision_cfg.mlp_ratio", "must be positive");
  if (!(v.ln_eps > 0)) fail("vision layer_norm_eps", "must be positive");
  if (v.resnet) {
    for (int i = 0; i < 4; ++i) pos(v.resnet_layers[i], "vision_cfg.layers");
    const int64_t pool_width = v.width * 32;
    if (pool_width % v.head_width != 0)
      fail("vision_cfg.head_width", "the ResNet's attention pool width (32 x vision_cfg.width = " +
                                        std::to_string(pool_width) + ") is not divisible by vision_cfg.head_width (" +
                                        std::to_string(v.head_width) + ")");
    const int64_t side = resnet_final_side(v.image_size), expect = v.image_size / 32;
    if (expect < 1 || side != expect)
      fail("vision_cfg.image_size", std::to_string(v.image_size) + " gives a " + std::to_string(side) + "x" +
                                        std::to_string(side) + " feature map at the attention pool, which expects " +
                                        std::to_string(expect) + "x" + std::to_string(expect) +
                                        " (image_size / 32): use a multiple of 32");
  } else {
    pos(v.layers, "vision_cfg.layers");
    pos(v.patch_size, "vision_cfg.patch_size");
    if (v.width % v.head_width != 0)
      fail("vision_cfg.width", std::to_string(v.width) + " is not divisible by vision_cfg.head_width (" +
                                   std::to_string(v.head_width) + ")");
    if (v.patch_size > v.image_size)
      fail("vision_cfg.patch_size", std::to_string(v.patch_size) + " is larger than vision_cfg.image_size (" +
                                        std::to_string(v.image_size) + ")");
    if (v.mlp_width() < 1) fail("vision_cfg.mlp_ratio", "gives an MLP width below 1");
  }
  const TextConfig& t = c.text;
  pos(t.context_length, "text_cfg.context_length");
  pos(t.vocab_size, "text_cfg.vocab_size");
  pos(t.width, "text_cfg.width");
  pos(t.heads, "text_cfg.heads");
  pos(t.layers, "text_cfg.layers");
  if (!(t.mlp_ratio > 0) || t.mlp_width() < 1) fail("text_cfg.mlp_ratio", "must give an MLP width of at least 1");
  if (!(t.ln_eps > 0)) fail("text layer_norm_eps", "must be positive");
  if (t.width % t.heads != 0)
    fail("text_cfg.width", std::to_string(t.width) + " is not divisible by text_cfg.heads (" + std::to_string(t.heads) + ")");
  if (t.eos_id >= t.vocab_size)
    fail("text eos_token_id", std::to_string(t.eos_id) + " is outside the vocabulary (text_cfg.vocab_size " +
                                  std::to_string(t.vocab_size) + ")");
}

json config_to_json(const ModelConfig& c) {
  json vis;
  vis["image_size"] = c.vision.image_size;
  if (c.vision.resnet) {
    vis["layers"] = c.vision.resnet_layers;
    vis["patch_size"] = nullptr;
  } else {
    vis["layers"] = c.vision.layers;
    vis["patch_size"] = c.vision.patch_size;
    vis["mlp_ratio"] = c.vision.mlp_ratio;
  }
  vis["width"] = c.vision.width;
  vis["head_width"] = c.vision.head_width;
  json txt;
  txt["context_length"] = c.text.context_length;
  txt["vocab_size"] = c.text.vocab_size;
  txt["width"] = c.text.width;
  txt["heads"] = c.text.heads;
  txt["layers"] = c.text.layers;
  txt["mlp_ratio"] = c.text.mlp_ratio;
  json j;
  j["embed_dim"] = c.embed_dim;
  j["quick_gelu"] = c.quick_gelu;
  if (c.init_logit_scale != ModelConfig().init_logit_scale) j["init_logit_scale"] = c.init_logit_scale;
  j["vision_cfg"] = vis;
  j["text_cfg"] = txt;
  const nn::Activation implied = c.quick_gelu ? nn::Activation::QuickGELU : nn::Activation::GELU;
  json ext = json::object();
  if (c.vision.act != implied) ext["vision_act"] = nn::activation_name(c.vision.act);
  if (c.text.act != implied) ext["text_act"] = nn::activation_name(c.text.act);
  if (c.vision.ln_eps != 1e-5) ext["vision_ln_eps"] = c.vision.ln_eps;
  if (c.text.ln_eps != 1e-5) ext["text_ln_eps"] = c.text.ln_eps;
  if (c.text.eos_id >= 0) ext["text_eos_id"] = c.text.eos_id;
  if (!ext.empty()) j["clipcu"] = ext;
  return j;
}

std::string config_to_string(const ModelConfig& c) { return config_to_json(c).dump(1); }

}  // namespace clipcu::models
