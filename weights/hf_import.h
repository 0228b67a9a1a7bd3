// Import of HuggingFace CLIPModel checkpoints (a directory with config.json and
// model.safetensors, or a sharded model.safetensors.index.json, as transformers saves them).
//
// The result is the same model in OpenAI's layout, ready for the engine's CLIP:
//   - names: vision_model.embeddings.patch_embedding -> visual.conv1, class_embedding ->
//     visual.class_embedding, position_embedding.weight -> visual.positional_embedding,
//     pre_layrnorm / post_layernorm -> visual.ln_pre / ln_post, encoder.layers.i ->
//     transformer.resblocks.i (layer_norm1/2 -> ln_1/2, mlp.fc1/fc2 -> mlp.c_fc/c_proj,
//     self_attn.out_proj -> attn.out_proj), text_model.* likewise at the top level
//     (final_layer_norm -> ln_final);
//   - separate q/k/v projections are stacked into in_proj_weight [3W, W] / in_proj_bias [3W];
//   - the projections, HF Linear weights [E, W], are transposed to OpenAI's [W, E] matrices
//     (visual_projection -> visual.proj, text_projection -> text_projection);
//   - config.json becomes an open_clip config, plus what open_clip's format cannot say: each
//     tower's activation (hidden_act) and LayerNorm epsilon (layer_norm_eps), and text pooling
//     at the first eos_token_id (HF's rule; eos_token_id == 2, the legacy configs, means argmax).
// Everything is converted to F32. Missing or unexpected HF tensors and unsupported settings are
// errors naming them (HF's position_ids buffers, derivable, are skipped).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "weights/safetensors.h"

namespace clipcu::weights {

struct HFClipCheckpoint {
  nlohmann::json open_clip_config;  // embed_dim, quick_gelu, vision_cfg, text_cfg
  std::string vision_act, text_act;  // "quick_gelu", "gelu" (erf) or "gelu_tanh"
  double vision_ln_eps = 1e-5, text_ln_eps = 1e-5;
  int64_t text_eos_id = -1;          // -1: pool at the highest token id
  st::NamedTensors state_dict;       // OpenAI/open_clip names and layouts, F32
};

// A directory holding config.json and model.safetensors (or model.safetensors.index.json).
bool is_hf_clip_dir(const std::string& path);
// with_weights = false reads only config.json (state_dict stays empty).
HFClipCheckpoint import_hf_clip(const std::string& dir, bool with_weights = true);

}  // namespace clipcu::weights
