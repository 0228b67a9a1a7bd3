// HuggingFace CLIPModel import (weights/hf_import.h): the golden hf_clip_tiny checkpoint, saved
// by transformers 5.17, gives transformers' own features and logits; names, q/k/v stacking and
// projection transposes; configs with other activations, legacy eos ids, sharded and 16-bit
// files; and the errors for checkpoints that do not match their config.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/models/checkpoint.h"
#include "tests/support.h"
#include "weights/hf_import.h"
#include "weights/state_dict.h"

using namespace clipcu;
using namespace clipcu::test;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// Forward values: float32 against transformers run in float64 from the same float32 weights,
// ~1e-5 (golden README). From F16 weights: F16 rounds each weight by up to 2^-11 (5e-4
// relative), which moves features by a few 1e-4; 2e-3 leaves a margin of about three.
constexpr double kForwardTol = 1e-5;
constexpr double kF16Tol = 2e-3;

std::string hf_dir() { return golden_path("hf/hf_clip_tiny"); }

json hf_config_json() {
  std::ifstream f(hf_dir() + "/config.json");
  return json::parse(f);
}

// A copy of the golden checkpoint with an edited config and/or tensors, in a fresh directory.
std::string make_variant(const std::string& tag, const json& config, const st::NamedTensors& tensors) {
  const std::string dir = temp_dir("hf_" + tag);
  std::ofstream(dir + "/config.json") << config.dump(2);
  st::save(dir + "/model.safetensors", tensors);
  return dir;
}

st::NamedTensors hf_tensors() {
  const st::File& f = golden("hf/hf_clip_tiny/model.safetensors");
  st::NamedTensors out;
  for (const st::Entry& e : f.entries()) out.emplace_back(e.name, f.get(e.name));
  return out;
}

Tensor find(const st::NamedTensors& list, const std::string& name) {
  for (const auto& [n, t] : list)
    if (n == name) return t;
  FAIL("no tensor " << name);
  return Tensor();
}

}  // namespace

TEST_CASE("hf_clip_tiny: features and logits match transformers' CLIPModel") {
  auto model = models::load_clip(hf_dir());  // config from the directory's config.json
  model->eval();
  NoGradGuard no_grad;
  const st::File& io = golden("hf/hf_clip_tiny.io.safetensors");
  WorstError worst{"hf_clip_tiny features and logits", 0.0, {}};
  const Tensor fi = model->encode_image(io.get("input.pixel_values"));
  const Tensor ft = model->encode_text(io.get("input.input_ids"));
  const Tensor logits = model->logits_per_image(fi, ft);
  for (auto [name, ours] : {std::pair{"image_features", fi}, {"text_features", ft}, {"logits_per_image", logits}}) {
    const double e = rel_err(ours, io.get(name));
    worst.add(name, e);
    CHECK_MESSAGE(e <= kForwardTol, name << ": rel err " << e);
  }
}

TEST_CASE("hf import: config, names, q/k/v stacking and projection layouts") {
  const weights::HFClipCheckpoint hf = weights::import_hf_clip(hf_dir());
  const models::ModelConfig cfg = models::hf_config(hf_dir());
  CHECK(cfg.embed_dim == 32);
  CHECK(cfg.vision.width == 128);
  CHECK(cfg.vision.heads() == 2);
  CHECK(cfg.vision.mlp_width() == 512);
  CHECK(cfg.vision.patch_size == 8);
  CHECK(cfg.text.context_length == 16);
  CHECK(cfg.text.heads == 2);
  CHECK(cfg.text.mlp_width() == 256);
  CHECK(cfg.text.eos_id == 63);  // pooled at the first eos_token_id, HF's rule
  CHECK(cfg.vision.act == nn::Activation::QuickGELU);
  CHECK(cfg.text.ln_eps == 1e-5);

  const st::NamedTensors src = hf_tensors();
  const st::NamedTensors& sd = hf.state_dict;
  // the model the config describes takes exactly these tensors
  models::CLIP model(cfg);
  CHECK(sd.size() == model.state_dict().size());
  // in_proj = [q; k; v] rows
  const Tensor in_w = find(sd, "visual.transformer.resblocks.1.attn.in_proj_weight");
  const Tensor in_b = find(sd, "transformer.resblocks.0.attn.in_proj_bias");
  const char* qkv[] = {"q_proj", "k_proj", "v_proj"};
  for (int i = 0; i < 3; ++i) {
    INFO(qkv[i]);
    CHECK(rel_err(in_w.rows(i * 128, 128),
                  find(src, std::string("vision_model.encoder.layers.1.self_attn.") + qkv[i] + ".weight")) == 0.0);
    CHECK(rel_err(in_b.rows(i * 64, 64),
                  find(src, std::string("text_model.encoder.layers.0.self_attn.") + qkv[i] + ".bias")) == 0.0);
  }
  // projections: HF Linear [E, W] -> OpenAI matrix [W, E]
  const Tensor proj = find(sd, "visual.proj"), hf_proj = find(src, "visual_projection.weight");
  REQUIRE(proj.shape() == Shape{128, 32});
  const std::vector<float> a = proj.to_f32_vector(), b = hf_proj.to_f32_vector();
  bool transposed = true;
  for (int w = 0; w < 128; ++w)
    for (int e = 0; e < 32; ++e) transposed = transposed && a[size_t(w * 32 + e)] == b[size_t(e * 128 + w)];
  CHECK(transposed);
  CHECK(rel_err(find(sd, "visual.ln_pre.weight"), find(src, "vision_model.pre_layrnorm.weight")) == 0.0);
  CHECK(rel_err(find(sd, "positional_embedding"), find(src, "text_model.embeddings.position_embedding.weight")) == 0.0);
  CHECK(rel_err(find(sd, "transformer.resblocks.1.mlp.c_proj.weight"),
                find(src, "text_model.encoder.layers.1.mlp.fc2.weight")) == 0.0);
}

TEST_CASE("hf import: activations, layer-norm eps and eos pooling come from config.json") {
  const st::NamedTensors tensors = hf_tensors();
  json c = hf_config_json();
  c["vision_config"]["hidden_act"] = "gelu";
  c["text_config"]["hidden_act"] = "gelu_pytorch_tanh";
  c["text_config"]["layer_norm_eps"] = 1e-6;
  c["text_config"]["eos_token_id"] = 2;  // transformers' legacy marker: pool at argmax
  models::ModelConfig cfg = models::hf_config(make_variant("acts", c, tensors));
  CHECK(cfg.vision.act == nn::Activation::GELU);
  CHECK(cfg.text.act == nn::Activation::GELUTanh);
  CHECK(!cfg.quick_gelu);
  CHECK(cfg.text.ln_eps == 1e-6);
  CHECK(cfg.vision.ln_eps == 1e-5);
  CHECK(cfg.text.eos_id == -1);
  // these settings survive a save in clipcu's format (they travel in the "clipcu" config object)
  models::CLIP model(cfg);
  const std::string saved = temp_dir("hf_saved") + "/model.safetensors";
  models::save_clip(model, saved);
  const models::ModelConfig back = models::resolve_config(saved);
  CHECK(back.text.act == nn::Activation::GELUTanh);
  CHECK(back.text.ln_eps == 1e-6);
  CHECK(back.text.eos_id == -1);

  // eos pooling: the first position holding eos_id; argmax pooling: the highest id
  models::ModelConfig eos_cfg = models::hf_config(hf_dir());
  eos_cfg.text.eos_id = 5;
  models::CLIP eos_model(eos_cfg);
  const Tensor ids = Tensor::from_ints({3, 5, 9, 5, 0, 62, 1, 5, 63, 5}, {2, 5});
  CHECK(eos_model.text().pool_positions(ids).to_i64_vector() == std::vector<int64_t>{1, 2});
  models::ModelConfig argmax_cfg = eos_cfg;
  argmax_cfg.text.eos_id = -1;
  models::CLIP argmax_model(argmax_cfg);
  CHECK(argmax_model.text().pool_positions(ids).to_i64_vector() == std::vector<int64_t>{2, 3});
  CHECK_THROWS_WITH_AS(eos_model.text().pool_positions(Tensor::from_ints({1, 2, 3}, {1, 3})),
                       doctest::Contains("token row 0 has no end-of-text token (id 5)"), Error);
}

TEST_CASE("hf import: sharded and 16-bit checkpoints") {
  const st::NamedTensors tensors = hf_tensors();
  const weights::HFClipCheckpoint ref = weights::import_hf_clip(hf_dir());
  // two shards and an index, as transformers writes large models
  const std::string dir = temp_dir("hf_sharded");
  std::ofstream(dir + "/config.json") << hf_config_json().dump(2);
  st::NamedTensors a(tensors.begin(), tensors.begin() + 30), b(tensors.begin() + 30, tensors.end());
  st::save(dir + "/model-00001-of-00002.safetensors", a);
  st::save(dir + "/model-00002-of-00002.safetensors", b);
  json index = {{"metadata", json::object()}, {"weight_map", json::object()}};
  for (const auto& [n, t] : a) index["weight_map"][n] = "model-00001-of-00002.safetensors";
  for (const auto& [n, t] : b) index["weight_map"][n] = "model-00002-of-00002.safetensors";
  std::ofstream(dir + "/model.safetensors.index.json") << index.dump();
  CHECK(weights::is_hf_clip_dir(dir));
  const weights::HFClipCheckpoint sharded = weights::import_hf_clip(dir);
  REQUIRE(sharded.state_dict.size() == ref.state_dict.size());
  for (size_t i = 0; i < ref.state_dict.size(); ++i) {
    CHECK(sharded.state_dict[i].first == ref.state_dict[i].first);
    CHECK(rel_err(sharded.state_dict[i].second, ref.state_dict[i].second) == 0.0);
  }
  // F16 weights (as many hub checkpoints ship) and an old transformers' position_ids buffer
  st::NamedTensors half;
  for (const auto& [n, t] : tensors) half.emplace_back(n, t.to(DType::F16));
  half.emplace_back("text_model.embeddings.position_ids", Tensor::arange({1, 16}, DType::I64));
  auto model = models::load_clip(make_variant("f16", hf_config_json(), half));
  model->eval();
  NoGradGuard no_grad;
  const st::File& io = golden("hf/hf_clip_tiny.io.safetensors");
  check_close(model->encode_image(io.get("input.pixel_values")), io.get("image_features"), kF16Tol,
              "image features from F16 weights");
  check_close(model->encode_text(io.get("input.input_ids")), io.get("text_features"), kF16Tol,
              "text features from F16 weights");
}

TEST_CASE("hf import: checkpoints that do not match their config are errors naming the tensor or field") {
  const st::NamedTensors tensors = hf_tensors();
  st::NamedTensors missing, extra = tensors;
  for (const auto& [n, t] : tensors)
    if (n != "text_model.final_layer_norm.bias") missing.emplace_back(n, t);
  extra.emplace_back("text_model.encoder.layers.2.layer_norm1.weight", Tensor::ones({64}));
  CHECK_THROWS_WITH_AS(weights::import_hf_clip(make_variant("missing", hf_config_json(), missing)),
                       doctest::Contains("missing tensors (1): text_model.final_layer_norm.bias"), Error);
  CHECK_THROWS_WITH_AS(weights::import_hf_clip(make_variant("extra", hf_config_json(), extra)),
                       doctest::Contains("unexpected tensors (1): text_model.encoder.layers.2.layer_norm1.weight"),
                       Error);
  json c = hf_config_json();
  c["vision_config"]["num_hidden_layers"] = 3;  // the file has 2
  CHECK_THROWS_WITH_AS(weights::import_hf_clip(make_variant("layers", c, tensors)),
                       doctest::Contains("vision_model.encoder.layers.2.self_attn.q_proj.weight"), Error);
  c = hf_config_json();
  c["projection_dim"] = 16;  // mis-shaped projections, named by their OpenAI names
  CHECK_THROWS_WITH_AS(models::load_clip(make_variant("proj", c, tensors)),
                       doctest::Contains("visual.proj is [128, 32] in the file, the model has [128, 16]"), Error);
  c = hf_config_json();
  c["text_config"]["hidden_act"] = "relu";
  CHECK_THROWS_WITH_AS(models::hf_config(make_variant("relu", c, tensors)),
                       doctest::Contains("text_config.hidden_act: activation 'relu' is not supported"), Error);
  c = hf_config_json();
  c["vision_config"]["num_attention_heads"] = 3;
  CHECK_THROWS_WITH_AS(models::hf_config(make_variant("heads", c, tensors)),
                       doctest::Contains("vision_config.num_attention_heads: 3 does not divide hidden_size 128"), Error);
  c = hf_config_json();
  c["model_type"] = "siglip";
  CHECK_THROWS_WITH_AS(models::hf_config(make_variant("siglip", c, tensors)),
                       doctest::Contains("model_type \"siglip\" is not supported"), Error);
  // an explicit open_clip config must agree with the checkpoint's
  const std::string other = temp_dir("hf_other_cfg") + "/c.json";
  json oc = models::config_to_json(models::hf_config(hf_dir()));
  oc["text_cfg"]["width"] = 32;
  std::ofstream(other) << oc.dump();
  CHECK_THROWS_WITH_AS(models::resolve_config(hf_dir(), other), doctest::Contains("text_cfg.width disagrees"), Error);
  oc["text_cfg"]["width"] = 64;
  oc.erase("clipcu");  // a plain open_clip config: eos pooling still comes from config.json
  std::ofstream(other) << oc.dump();
  CHECK(models::resolve_config(hf_dir(), other).text.eos_id == 63);
  CHECK(!weights::is_hf_clip_dir(golden_path("clip_vit_tiny.weights.safetensors")));
}
