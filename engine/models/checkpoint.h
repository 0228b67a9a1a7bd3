// Loading and saving whole CLIP models.
//
// Weights are safetensors under OpenAI/open_clip state-dict names (weights/state_dict.h); the
// architecture comes from an open_clip config: an explicit JSON file, else the config that
// save_clip() stores in the file's metadata ("open_clip_config"). A directory with config.json
// and model.safetensors is a HuggingFace CLIPModel and is imported (weights/hf_import.h).
// Shapes are never guessed from the tensors (DESIGN.md, convention 8).
#pragma once
#include <memory>
#include <string>

#include "engine/models/clip.h"

namespace clipcu::models {

// The metadata key under which save_clip() stores the open_clip config JSON.
inline constexpr const char* kConfigMetadataKey = "open_clip_config";

// Loads weights into an existing model (strict: missing, unexpected, mis-shaped tensors are
// errors naming them; F32/F16/BF16/F64 converted).
void load_weights(CLIP& model, const std::string& path);
// Saves the model's parameters and buffers (floating ones as F32, F16 or BF16) with its config.
void save_clip(const CLIP& model, const std::string& path, DType dtype = DType::F32);

// The config a checkpoint needs: `config_path` when given, else a HF directory's config.json,
// else the open_clip config in the weights file's metadata; otherwise an error asking for one.
ModelConfig resolve_config(const std::string& weights_path, const std::string& config_path = "");
// Builds and loads a model from weights (a safetensors file or a HF directory).
std::unique_ptr<CLIP> load_clip(const std::string& weights_path, const std::string& config_path = "");

// The open_clip config of a HuggingFace checkpoint directory, with its activations, LayerNorm
// epsilons and eos pooling applied.
ModelConfig hf_config(const std::string& dir);

}  // namespace clipcu::models
