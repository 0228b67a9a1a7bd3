// Model configs (engine/models/config.h): open_clip's JSON format, the configs shipped in
// weights/configs/, and the errors for malformed or inconsistent configs, each naming the field.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/models/clip.h"
#include "engine/models/config.h"
#include "tests/support.h"

using namespace clipcu;
using json = nlohmann::json;

namespace {

std::string config_dir() { return std::string(CLIPCU_SOURCE_DIR) + "/weights/configs"; }

models::ModelConfig shipped(const std::string& name) { return models::load_config(config_dir() + "/" + name + ".json"); }

// A valid ViT config to break one field at a time.
json base_vit() {
  return json::parse(R"({"embed_dim": 32, "quick_gelu": true,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 128, "patch_size": 8, "head_width": 64},
    "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 64, "heads": 2, "layers": 2}})");
}
json base_rn() {
  return json::parse(R"({"embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": [1, 2, 1, 1], "width": 8, "patch_size": null},
    "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 64, "heads": 2, "layers": 2}})");
}

models::ModelConfig parse(const json& j) { return models::parse_config(j, "test.json"); }

}  // namespace

TEST_CASE("shipped configs: open_clip's values, heads and activations as open_clip derives them") {
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator(config_dir())) {
    if (e.path().extension() != ".json") continue;
    INFO(e.path().string());
    CHECK_NOTHROW(models::load_config(e.path().string()));
    ++n;
  }
  CHECK(n >= 7);

  const models::ModelConfig b32 = shipped("ViT-B-32");
  CHECK(b32.embed_dim == 512);
  CHECK(!b32.vision.resnet);
  CHECK(b32.vision.layers == 12);
  CHECK(b32.vision.heads() == 12);
  CHECK(b32.vision.grid() == 7);
  CHECK(b32.vision.mlp_width() == 3072);
  CHECK(b32.vision.act == nn::Activation::GELU);  // open_clip's own ViT-B-32: exact GELU
  CHECK(b32.text.context_length == 77);
  CHECK(b32.text.vocab_size == 49408);
  CHECK(b32.text.eos_id == -1);
  CHECK(shipped("ViT-B-32-quickgelu").vision.act == nn::Activation::QuickGELU);  // OpenAI's weights
  CHECK(shipped("ViT-B-32-quickgelu").text.act == nn::Activation::QuickGELU);
  CHECK(shipped("ViT-B-16").vision.grid() == 14);
  const models::ModelConfig l14 = shipped("ViT-L-14");
  CHECK(l14.vision.heads() == 16);
  CHECK(l14.vision.grid() == 16);
  CHECK(l14.text.width == 768);
  CHECK(l14.text.heads == 12);
  const models::ModelConfig rn50 = shipped("RN50");
  CHECK(rn50.vision.resnet);
  CHECK(rn50.vision.resnet_layers == std::array<int64_t, 4>{3, 4, 6, 3});
  CHECK(rn50.vision.heads() == 32);  // 64 * 32 / 64
  CHECK(rn50.embed_dim == 1024);
  CHECK(shipped("RN101").vision.resnet_layers == std::array<int64_t, 4>{3, 4, 23, 3});
  CHECK(shipped("ViT-S-16").vision.heads() == 6);
  const models::ModelConfig tiny = shipped("clip-tiny-cpu");
  CHECK(tiny.vision.image_size <= 64);
  CHECK(tiny.vision.heads() * tiny.vision.head_width == tiny.vision.width);
}

TEST_CASE("configs: the golden configs parse, and a CLIP built from ViT-B-32 has OpenAI's parameter count") {
  CHECK(models::load_config(test::golden_path("clip_vit_tiny.config.json")).vision.heads() == 2);
  CHECK(models::load_config(test::golden_path("clip_rn_tiny.config.json")).vision.heads() == 4);  // 8 * 32 / 64
  // 151,277,313 parameters: OpenAI's ViT-B/32 (the architecture, not the activation, decides it)
  models::CLIP model(shipped("ViT-B-32"));
  int64_t n = 0;
  for (const Tensor& p : model.parameters()) n += p.numel();
  CHECK(n == 151277313);
}

TEST_CASE("configs: round trip through JSON, including the clipcu extensions") {
  for (const json& j : {base_vit(), base_rn()}) {
    models::ModelConfig c = parse(j);
    models::ModelConfig back = parse(models::config_to_json(c));
    CHECK(models::config_to_string(back) == models::config_to_string(c));
  }
  json j = base_vit();
  j["clipcu"] = {{"vision_act", "gelu_tanh"}, {"text_ln_eps", 1e-6}, {"text_eos_id", 63}};
  models::ModelConfig c = parse(j);
  CHECK(c.vision.act == nn::Activation::GELUTanh);
  CHECK(c.text.act == nn::Activation::QuickGELU);
  CHECK(c.text.ln_eps == 1e-6);
  CHECK(c.text.eos_id == 63);
  models::ModelConfig back = parse(models::config_to_json(c));
  CHECK(back.vision.act == nn::Activation::GELUTanh);
  CHECK(back.text.ln_eps == 1e-6);
  CHECK(back.text.eos_id == 63);
  // accepted spellings: defaults of open_clip options, integral floats, an explicit null patch size
  j = base_vit();
  j["vision_cfg"]["ls_init_value"] = nullptr;
  j["vision_cfg"]["patch_dropout"] = 0.0;
  j["vision_cfg"]["image_size"] = 32.0;
  j["text_cfg"]["pool_type"] = "argmax";
  j["custom_text"] = false;
  CHECK(parse(j).vision.image_size == 32);
  j = base_vit();
  j["vision_cfg"]["mlp_ratio"] = 2.5;
  CHECK(parse(j).vision.mlp_width() == 320);
}

TEST_CASE("configs: malformed or inconsistent configs are errors naming the field") {
  auto expect_error = [](json j, const std::string& field_and_reason) {
    INFO(j.dump());
    CHECK_THROWS_WITH_AS(parse(j), doctest::Contains(field_and_reason.c_str()), Error);
  };
  json j;
  // missing fields
  j = base_vit(), j.erase("embed_dim"), expect_error(j, "embed_dim: missing");
  j = base_vit(), j.erase("vision_cfg"), expect_error(j, "vision_cfg: missing");
  j = base_vit(), j["vision_cfg"].erase("width"), expect_error(j, "vision_cfg.width: missing");
  j = base_vit(), j["vision_cfg"].erase("patch_size"), expect_error(j, "vision_cfg.patch_size: missing");
  j = base_vit(), j["text_cfg"].erase("heads"), expect_error(j, "text_cfg.heads: missing");
  j = base_vit(), j["text_cfg"].erase("context_length"), expect_error(j, "text_cfg.context_length: missing");
  // ResNet stage list of the wrong length or content
  j = base_rn(), j["vision_cfg"]["layers"] = {3, 4, 6}, expect_error(j, "vision_cfg.layers: a ResNet needs a list of 4");
  j = base_rn(), j["vision_cfg"]["layers"] = {3, 4, 6, 3, 1}, expect_error(j, "vision_cfg.layers: a ResNet needs a list of 4");
  j = base_rn(), j["vision_cfg"]["layers"] = {3, 0, 6, 3}, expect_error(j, "vision_cfg.layers[1]: must be positive");
  j = base_rn(), j["vision_cfg"]["layers"] = {3, "x", 6, 3}, expect_error(j, "vision_cfg.layers[1]: must be an integer");
  j = base_rn(), j["vision_cfg"]["patch_size"] = 16, expect_error(j, "vision_cfg.patch_size: must be null for a ResNet");
  j = base_rn(), j["vision_cfg"]["image_size"] = 63, expect_error(j, "vision_cfg.image_size: 63 gives a 2x2 feature map");
  j = base_rn(), j["vision_cfg"]["head_width"] = 48, expect_error(j, "vision_cfg.head_width: the ResNet's attention pool width");
  // divisibility
  j = base_vit(), j["vision_cfg"]["width"] = 100, expect_error(j, "vision_cfg.width: 100 is not divisible by vision_cfg.head_width (64)");
  j = base_vit(), j["vision_cfg"]["head_width"] = 48, expect_error(j, "vision_cfg.width: 128 is not divisible by vision_cfg.head_width (48)");
  j = base_vit(), j["text_cfg"]["heads"] = 3, expect_error(j, "text_cfg.width: 64 is not divisible by text_cfg.heads (3)");
  j = base_vit(), j["vision_cfg"]["patch_size"] = 33, expect_error(j, "vision_cfg.patch_size: 33 is larger than");
  // types and values
  j = base_vit(), j["vision_cfg"]["width"] = "128", expect_error(j, "vision_cfg.width: must be an integer");
  j = base_vit(), j["vision_cfg"]["width"] = 127.5, expect_error(j, "vision_cfg.width: must be an integer");
  j = base_vit(), j["text_cfg"]["layers"] = -1, expect_error(j, "text_cfg.layers: must be positive");
  j = base_vit(), j["embed_dim"] = 0, expect_error(j, "embed_dim: must be positive");
  j = base_vit(), j["vision_cfg"]["layers"] = 0, expect_error(j, "vision_cfg.layers: must be positive");
  j = base_vit(), j["quick_gelu"] = "yes", expect_error(j, "quick_gelu: must be true or false");
  j = base_vit(), j["vision_cfg"]["mlp_ratio"] = -4, expect_error(j, "vision_cfg.mlp_ratio: must be a positive number");
  j = base_vit(), j["text_cfg"] = 5, expect_error(j, "text_cfg: must be a JSON object");
  // unknown fields and open_clip features this engine does not implement
  j = base_vit(), j["vision_cfg"]["widht"] = 128, expect_error(j, "vision_cfg.widht: unknown field");
  j = base_vit(), j["extra"] = 1, expect_error(j, "extra: unknown field");
  j = base_vit(), j["text_cfg"]["pool_type"] = "last", expect_error(j, "text_cfg.pool_type: = \"last\" is not supported");
  j = base_vit(), j["vision_cfg"]["ls_init_value"] = 1e-5, expect_error(j, "vision_cfg.ls_init_value");
  j = base_vit(), j["vision_cfg"]["timm_model_name"] = "vit", expect_error(j, "vision_cfg.timm_model_name");
  j = base_vit(), j["clipcu"] = {{"vision_act", "relu"}}, expect_error(j, "clipcu.vision_act: must be");
  j = base_vit(), j["clipcu"] = {{"text_eos_id", 64}}, expect_error(j, "text eos_token_id: 64 is outside the vocabulary");

  // files
  const std::string dir = test::temp_dir("config_errors");
  CHECK_THROWS_WITH_AS(models::load_config(dir + "/absent.json"), doctest::Contains("absent.json: cannot open"), Error);
  std::ofstream(dir + "/broken.json") << "{\"embed_dim\": 32,";
  CHECK_THROWS_WITH_AS(models::load_config(dir + "/broken.json"), doctest::Contains("broken.json: not valid JSON"), Error);
  std::ofstream(dir + "/bad_width.json") << R"({"embed_dim": 8, "vision_cfg": {"image_size": 32, "layers": 1,
      "width": 100, "patch_size": 8}, "text_cfg": {"context_length": 4, "vocab_size": 8, "width": 8, "heads": 2,
      "layers": 1}})";
  CHECK_THROWS_WITH_AS(models::load_config(dir + "/bad_width.json"), doctest::Contains("bad_width.json: vision_cfg.width"),
                       Error);
}
