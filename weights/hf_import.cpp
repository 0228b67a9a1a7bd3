#include "weights/hf_import.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <vector>

namespace clipcu::weights {

namespace fs = std::filesystem;
using json = nlohmann::json;

bool is_hf_clip_dir(const std::string& path) {
  std::error_code ec;
  if (!fs::is_directory(path, ec)) return false;
  fs::path d(path);
  return fs::exists(d / "config.json", ec) &&
         (fs::exists(d / "model.safetensors", ec) || fs::exists(d / "model.safetensors.index.json", ec));
}

namespace {

json read_json(const fs::path& p) {
  std::ifstream f(p);
  CLIPCU_CHECK(f.good(), p.string() << ": cannot open");
  json j;
  try {
    j = json::parse(f);
  } catch (const json::exception& e) {
    CLIPCU_FAIL(p.string() << ": not valid JSON: " << e.what());
  }
  return j;
}

// A field of a HF sub-config, with transformers' class default when the file leaves it out.
class HFConfig {
 public:
  HFConfig(const json& j, std::string section, std::string origin)
      : j_(j), section_(std::move(section)), origin_(std::move(origin)) {}
  std::string field(const std::string& key) const { return section_.empty() ? key : section_ + "." + key; }
  [[noreturn]] void fail(const std::string& key, const std::string& why) const {
    CLIPCU_FAIL(origin_ << ": " << field(key) << ": " << why);
  }
  int64_t positive(const std::string& key, int64_t fallback) const {
    if (!j_.contains(key) || j_.at(key).is_null()) return fallback;
    const json& v = j_.at(key);
    if (!v.is_number_integer() || v.get<int64_t>() <= 0) fail(key, "must be a positive integer, got " + v.dump());
    return v.get<int64_t>();
  }
  int64_t integer(const std::string& key, int64_t fallback) const {
    if (!j_.contains(key) || j_.at(key).is_null()) return fallback;
    const json& v = j_.at(key);
    if (!v.is_number_integer()) fail(key, "must be an integer, got " + v.dump());
    return v.get<int64_t>();
  }
  double number(const std::string& key, double fallback) const {
    if (!j_.contains(key) || j_.at(key).is_null()) return fallback;
    const json& v = j_.at(key);
    if (!v.is_number() || !(v.get<double>() > 0)) fail(key, "must be a positive number, got " + v.dump());
    return v.get<double>();
  }
  std::string string(const std::string& key, const std::string& fallback) const {
    if (!j_.contains(key) || j_.at(key).is_null()) return fallback;
    const json& v = j_.at(key);
    if (!v.is_string()) fail(key, "must be a string, got " + v.dump());
    return v.get<std::string>();
  }
  // HF's activation names -> the engine's
  std::string activation(const std::string& key) const {
    std::string a = string(key, "quick_gelu");
    if (a == "quick_gelu") return "quick_gelu";
    if (a == "gelu") return "gelu";
    if (a == "gelu_new" || a == "gelu_pytorch_tanh" || a == "gelu_fast") return "gelu_tanh";
    fail(key, "activation '" + a + "' is not supported (quick_gelu, gelu, gelu_new, gelu_pytorch_tanh)");
  }
  // hidden / heads, checked
  int64_t head_width(int64_t hidden, int64_t heads) const {
    if (hidden % heads != 0)
      fail("num_attention_heads", std::to_string(heads) + " does not divide hidden_size " + std::to_string(hidden));
    return hidden / heads;
  }

 private:
  const json& j_;
  std::string section_, origin_;
};

// The tensors of one checkpoint (one file or several shards), read on demand by HF name.
class HFTensors {
 public:
  explicit HFTensors(const fs::path& dir) {
    fs::path single = dir / "model.safetensors";
    if (fs::exists(single)) {
      add_file(single);
    } else {
      fs::path index = dir / "model.safetensors.index.json";
      json j = read_json(index);
      CLIPCU_CHECK(j.contains("weight_map") && j.at("weight_map").is_object(),
                   index.string() << ": no weight_map object");
      std::set<std::string> shards;
      for (auto it = j.at("weight_map").begin(); it != j.at("weight_map").end(); ++it) {
        CLIPCU_CHECK(it.value().is_string(), index.string() << ": weight_map." << it.key() << " is not a file name");
        shards.insert(it.value().get<std::string>());
      }
      for (const std::string& s : shards) add_file(dir / s);
    }
  }

  // The tensor as F32 (converted from F16/BF16/F64); absent names are collected as missing.
  Tensor take(const std::string& name) {
    auto it = where_.find(name);
    if (it == where_.end()) {
      missing_.push_back(name);
      return Tensor();
    }
    used_.insert(name);
    const st::File& f = *files_[it->second];
    CLIPCU_CHECK(is_floating(f.entry(name).dtype), f.path() << ": tensor '" << name << "' is "
                                                            << dtype_name(f.entry(name).dtype) << ", not floating");
    return f.get(name, DType::F32);
  }

  // Throws naming every HF tensor that was expected but absent, or present but never used.
  void check_complete(const std::string& origin) const {
    std::vector<std::string> unexpected;
    for (const auto& [name, file] : where_) {
      // position_ids (arange buffers that older transformers versions saved) carry no weights
      bool derivable = name.size() >= 12 && name.compare(name.size() - 12, 12, "position_ids") == 0;
      if (!used_.count(name) && !derivable) unexpected.push_back(name);
    }
    if (missing_.empty() && unexpected.empty()) return;
    std::ostringstream msg;
    msg << origin << ": not the CLIPModel its config.json describes:";
    auto list = [&](const char* what, const std::vector<std::string>& v) {
      if (v.empty()) return;
      msg << "\n  " << what << " (" << v.size() << "): ";
      for (size_t i = 0; i < v.size() && i < 12; ++i) msg << (i ? ", " : "") << v[i];
      if (v.size() > 12) msg << " (and " << v.size() - 12 << " more)";
    };
    list("missing tensors", missing_);
    list("unexpected tensors", unexpected);
    CLIPCU_FAIL(msg.str());
  }

 private:
  std::vector<std::unique_ptr<st::File>> files_;
  std::map<std::string, size_t> where_;
  std::set<std::string> used_;
  std::vector<std::string> missing_;

  void add_file(const fs::path& p) {
    files_.push_back(std::make_unique<st::File>(st::File::open(p.string())));
    for (const st::Entry& e : files_.back()->entries()) {
      CLIPCU_CHECK(where_.emplace(e.name, files_.size() - 1).second,
                   p.string() << ": tensor '" << e.name << "' appears in two shards");
    }
  }
};

// Rows of same-width matrices stacked: [W, K] x n -> [n W, K]; vectors [W] x n -> [n W].
Tensor stack_rows(const std::vector<Tensor>& parts, const std::string& what) {
  int64_t rows = 0;
  Shape s0 = parts.at(0).shape();
  for (const Tensor& p : parts) {
    CLIPCU_CHECK(p.dim() == int64_t(s0.size()) && p.dim() >= 1 && p.dim() <= 2 && (p.dim() == 1 || p.size(1) == s0[1]),
                 what << ": q/k/v projections of different shapes (" << shape_str(s0) << ", " << shape_str(p.shape())
                      << ")");
    rows += p.size(0);
  }
  Shape out_shape = s0;
  out_shape[0] = rows;
  Tensor out = Tensor::empty(out_shape, DType::F32);
  char* dst = static_cast<char*>(out.raw());
  for (const Tensor& p : parts) {
    std::memcpy(dst, p.raw(), p.nbytes());
    dst += p.nbytes();
  }
  return out;
}

// [E, W] (a HF Linear weight) -> [W, E] (OpenAI's projection matrix, used as x @ proj).
Tensor transpose2d(const Tensor& t, const std::string& what) {
  CLIPCU_CHECK(t.dim() == 2, what << ": expected a 2-d projection weight, got " << shape_str(t.shape()));
  const int64_t R = t.size(0), C = t.size(1);
  Tensor out = Tensor::empty({C, R}, DType::F32);
  const float* src = t.data<float>();  // [R, C]
  float* dst = out.data<float>();      // [C, R]
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; ++c) dst[c * R + r] = src[r * C + c];
  return out;
}

// One tower's encoder layers: HF names under `hf` ("text_model.encoder.layers") to OpenAI's
// under `oa` ("transformer.resblocks").
void map_layers(HFTensors& in, st::NamedTensors& out, const std::string& hf, const std::string& oa, int64_t layers) {
  for (int64_t i = 0; i < layers; ++i) {
    const std::string h = hf + "." + std::to_string(i) + ".", o = oa + "." + std::to_string(i) + ".";
    auto put = [&](const std::string& from, const std::string& to) {
      Tensor t = in.take(h + from);
      if (t.defined()) out.emplace_back(o + to, t);
    };
    std::vector<Tensor> w, b;
    for (const char* p : {"q_proj", "k_proj", "v_proj"}) {  // nn.MultiheadAttention's order
      w.push_back(in.take(h + "self_attn." + p + ".weight"));
      b.push_back(in.take(h + "self_attn." + p + ".bias"));
    }
    bool all = true;
    for (size_t k = 0; k < 3; ++k) all = all && w[k].defined() && b[k].defined();
    if (all) {
      out.emplace_back(o + "attn.in_proj_weight", stack_rows(w, h + "self_attn"));
      out.emplace_back(o + "attn.in_proj_bias", stack_rows(b, h + "self_attn"));
    }
    put("self_attn.out_proj.weight", "attn.out_proj.weight");
    put("self_attn.out_proj.bias", "attn.out_proj.bias");
    put("layer_norm1.weight", "ln_1.weight");
    put("layer_norm1.bias", "ln_1.bias");
    put("layer_norm2.weight", "ln_2.weight");
    put("layer_norm2.bias", "ln_2.bias");
    put("mlp.fc1.weight", "mlp.c_fc.weight");
    put("mlp.fc1.bias", "mlp.c_fc.bias");
    put("mlp.fc2.weight", "mlp.c_proj.weight");
    put("mlp.fc2.bias", "mlp.c_proj.bias");
  }
}

}  // namespace

HFClipCheckpoint import_hf_clip(const std::string& dir_str, bool with_weights) {
  fs::path dir(dir_str);
  const std::string cfg_path = (dir / "config.json").string();
  CLIPCU_CHECK(is_hf_clip_dir(dir_str), dir_str << ": not a HuggingFace checkpoint directory (needs config.json and "
                                                   "model.safetensors or model.safetensors.index.json)");
  json cfg = read_json(dir / "config.json");
  CLIPCU_CHECK(cfg.is_object(), cfg_path << ": not a JSON object");
  if (cfg.contains("model_type") && cfg.at("model_type") != "clip")
    CLIPCU_FAIL(cfg_path << ": model_type " << cfg.at("model_type").dump()
                         << " is not supported (a CLIPModel checkpoint has \"clip\")");
  static const json empty = json::object();
  const json& tj = cfg.contains("text_config") && cfg.at("text_config").is_object() ? cfg.at("text_config") : empty;
  const json& vj = cfg.contains("vision_config") && cfg.at("vision_config").is_object() ? cfg.at("vision_config") : empty;
  HFConfig top(cfg, "", cfg_path), tc(tj, "text_config", cfg_path), vc(vj, "vision_config", cfg_path);

  // transformers' CLIPConfig / CLIPTextConfig / CLIPVisionConfig defaults where a field is absent
  const int64_t E = top.positive("projection_dim", 512);
  const int64_t tW = tc.positive("hidden_size", 512), tH = tc.positive("num_attention_heads", 8);
  const int64_t tL = tc.positive("num_hidden_layers", 12), tI = tc.positive("intermediate_size", 2048);
  const int64_t ctx = tc.positive("max_position_embeddings", 77), V = tc.positive("vocab_size", 49408);
  const int64_t vW = vc.positive("hidden_size", 768), vH = vc.positive("num_attention_heads", 12);
  const int64_t vL = vc.positive("num_hidden_layers", 12), vI = vc.positive("intermediate_size", 3072);
  const int64_t R = vc.positive("image_size", 224), P = vc.positive("patch_size", 32);
  if (vc.positive("num_channels", 3) != 3) vc.fail("num_channels", "only 3-channel (RGB) images are supported");

  HFClipCheckpoint out;
  out.vision_act = vc.activation("hidden_act");
  out.text_act = tc.activation("hidden_act");
  out.vision_ln_eps = vc.number("layer_norm_eps", 1e-5);
  out.text_ln_eps = tc.number("layer_norm_eps", 1e-5);
  const int64_t eos = tc.integer("eos_token_id", 49407);
  out.text_eos_id = eos == 2 ? -1 : eos;  // transformers: eos_token_id == 2 marks legacy configs -> argmax

  json vis = {{"image_size", R},
              {"layers", vL},
              {"width", vW},
              {"patch_size", P},
              {"head_width", vc.head_width(vW, vH)},
              {"mlp_ratio", double(vI) / double(vW)}};
  tc.head_width(tW, tH);
  json txt = {{"context_length", ctx}, {"vocab_size", V}, {"width", tW},
              {"heads", tH},           {"layers", tL},    {"mlp_ratio", double(tI) / double(tW)}};
  out.open_clip_config = {{"embed_dim", E},
                          {"quick_gelu", out.vision_act == "quick_gelu" && out.text_act == "quick_gelu"},
                          {"vision_cfg", vis},
                          {"text_cfg", txt}};
  if (!with_weights) return out;

  HFTensors in(dir);
  st::NamedTensors& sd = out.state_dict;
  auto put = [&](const std::string& from, const std::string& to) {
    Tensor t = in.take(from);
    if (t.defined()) sd.emplace_back(to, t);
  };
  // image tower
  put("vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight");
  put("vision_model.embeddings.class_embedding", "visual.class_embedding");
  put("vision_model.embeddings.position_embedding.weight", "visual.positional_embedding");
  put("vision_model.pre_layrnorm.weight", "visual.ln_pre.weight");  // sic: HF's spelling
  put("vision_model.pre_layrnorm.bias", "visual.ln_pre.bias");
  map_layers(in, sd, "vision_model.encoder.layers", "visual.transformer.resblocks", vL);
  put("vision_model.post_layernorm.weight", "visual.ln_post.weight");
  put("vision_model.post_layernorm.bias", "visual.ln_post.bias");
  if (Tensor t = in.take("visual_projection.weight"); t.defined())
    sd.emplace_back("visual.proj", transpose2d(t, "visual_projection.weight"));
  // text tower
  put("text_model.embeddings.token_embedding.weight", "token_embedding.weight");
  put("text_model.embeddings.position_embedding.weight", "positional_embedding");
  map_layers(in, sd, "text_model.encoder.layers", "transformer.resblocks", tL);
  put("text_model.final_layer_norm.weight", "ln_final.weight");
  put("text_model.final_layer_norm.bias", "ln_final.bias");
  if (Tensor t = in.take("text_projection.weight"); t.defined())
    sd.emplace_back("text_projection", transpose2d(t, "text_projection.weight"));
  put("logit_scale", "logit_scale");
  in.check_complete(dir_str);
  return out;
}

}  // namespace clipcu::weights
