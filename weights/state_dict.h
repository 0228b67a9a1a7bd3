// Whole-model weights as safetensors under state-dict names (OpenAI/open_clip's for CLIP).
//
// This layer knows files and names, not modules: a model hands over its own tensors as a
// name -> Tensor list (nn::Module::state_dict()), and loading copies the file's tensors into
// them in place (so optimizers and views that hold those tensors stay valid). Loading is
// strict: every tensor the model has must be in the file with the same shape, and every tensor
// in the file must belong to the model; all the problems are reported together, each by name.
// Floating tensors may be stored as F32, F16, BF16 or F64 and are converted to the model's
// dtype; integer buffers (BatchNorm's num_batches_tracked) accept any numeric dtype.
#pragma once
#include <map>
#include <set>
#include <string>

#include "weights/safetensors.h"

namespace clipcu::weights {

// Every tensor of a safetensors file as stored (zero-copy views of the mapping), in file order.
st::NamedTensors read_tensors(const st::File& file);

// Copies `source` into `targets`, converting dtypes. `origin` names the source in errors;
// names in `ignored` may appear in the source and are skipped (e.g. the int fields OpenAI's
// released state dicts carry: input_resolution, context_length, vocab_size). A 0-d tensor and a
// one-element [1] tensor count as the same shape (scalars such as logit_scale).
void assign_state_dict(const st::NamedTensors& targets, const st::NamedTensors& source, const std::string& origin,
                       const std::set<std::string>& ignored = {});

// read_tensors + assign_state_dict from a file.
void load_state_dict(const st::NamedTensors& targets, const std::string& path, const std::set<std::string>& ignored = {});

// Writes the tensors with floating ones stored as `float_dtype` (F32, F16 or BF16; rounded to
// nearest even) and integer ones as they are.
void save_state_dict(const std::string& path, const st::NamedTensors& tensors, DType float_dtype = DType::F32,
                     const std::map<std::string, std::string>& metadata = {});

}  // namespace clipcu::weights
