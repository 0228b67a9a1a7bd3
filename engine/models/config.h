// Model configuration in open_clip's JSON format (weights/configs/*.json):
//
//   { "embed_dim": 512, "quick_gelu": false,
//     "vision_cfg": { "image_size": 224, "layers": 12, "width": 768, "patch_size": 32,
//                     "head_width": 64, "mlp_ratio": 4.0 },
//     "text_cfg":   { "context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8,
//                     "layers": 12, "mlp_ratio": 4.0 } }
//
// vision_cfg.layers as a number means a VisionTransformer of that depth; a list of four means
// OpenAI's ModifiedResNet with that many Bottleneck blocks per stage (patch_size then null or
// absent). Vision heads follow open_clip: width / head_width for a ViT, width * 32 / head_width
// for a ResNet (the attention pool runs at 32x the stem width). open_clip fields this engine
// does not implement (ls_init_value, attentional_pool, pool_type, ...) are accepted only with
// their default value; anything else, an unknown field, a wrong type or an inconsistent value
// is a clipcu::Error that names the field ("vision_cfg.width").
//
// A few settings are not part of open_clip's format but are needed for checkpoints from
// elsewhere (HuggingFace): per-tower activation and LayerNorm epsilon, and text pooling at an
// end-of-text id. open_clip configs get OpenAI's values for them; config_to_json writes the
// ones that differ under an optional "clipcu" object (vision_act, text_act: "quick_gelu",
// "gelu" or "gelu_tanh"; vision_ln_eps, text_ln_eps; text_eos_id), which parse_config reads.
#pragma once
#include <array>
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>

#include "engine/nn/transformer.h"

namespace clipcu::models {

struct VisionConfig {
  int64_t image_size = 224;
  bool resnet = false;                      // layers was a list of four
  int64_t layers = 12;                      // ViT depth
  std::array<int64_t, 4> resnet_layers{};   // Bottleneck blocks per ResNet stage
  int64_t width = 768;                      // ViT width, or the ResNet stem width
  int64_t patch_size = 32;                  // ViT only (0 for a ResNet)
  int64_t head_width = 64;
  double mlp_ratio = 4.0;                   // ViT only
  nn::Activation act = nn::Activation::GELU;
  double ln_eps = 1e-5;

  int64_t heads() const;       // ViT: width / head_width; ResNet: width * 32 / head_width
  int64_t mlp_width() const;   // int(width * mlp_ratio), as open_clip computes it
  int64_t grid() const;        // ViT: image_size / patch_size (patches per side)
};

struct TextConfig {
  int64_t context_length = 77;
  int64_t vocab_size = 49408;
  int64_t width = 512;
  int64_t heads = 8;
  int64_t layers = 12;
  double mlp_ratio = 4.0;
  nn::Activation act = nn::Activation::GELU;
  double ln_eps = 1e-5;
  // Pooling: -1 pools the position of the highest token id (OpenAI's argmax: the end-of-text
  // token has the highest id of CLIP's vocabulary); otherwise the first position holding
  // eos_id (HuggingFace checkpoints with a modern eos_token_id).
  int64_t eos_id = -1;

  int64_t mlp_width() const;
};

struct ModelConfig {
  int64_t embed_dim = 512;
  bool quick_gelu = false;          // sets both towers' act (QuickGELU, else exact GELU)
  double init_logit_scale = 2.659260036932778;  // ln(1 / 0.07): the initial log logit scale
  VisionConfig vision;
  TextConfig text;
  std::string origin;               // the file it came from, for messages
};

// Parses open_clip's JSON; `origin` names the source in errors. Validates (validate_config).
ModelConfig parse_config(const nlohmann::json& j, const std::string& origin);
ModelConfig parse_config_text(const std::string& json_text, const std::string& origin);
ModelConfig load_config(const std::string& path);
// Consistency checks (divisibility, positive sizes, the ResNet's feature map reaching the
// attention pool at image_size / 32); throws naming the field.
void validate_config(const ModelConfig& c);
// Back to open_clip's JSON (the settings open_clip's format cannot hold are dropped).
nlohmann::json config_to_json(const ModelConfig& c);
std::string config_to_string(const ModelConfig& c);

}  // namespace clipcu::models
