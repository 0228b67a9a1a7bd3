// Running one recorded step of a CLIP model for inspection (clipcu inspect, graph, profile).
//
// This is the model half; engine/inspect.h holds the names and the comparison of dumps, and
// engine/profile.h and engine/graph.h read the tape this leaves behind.
//
// run_step() clears the thread's tape and runs, with grad mode on so that every op is recorded:
//   image_features = model.encode_image(images)                    (module path "visual")
//   text_features  = model.encode_text(text)   under NameScope("text")
//   inference mode (BatchNorm running statistics):
//     logits_per_image = model.logits_per_image(...) under NameScope("logits")
//   training mode (train_step):
//     loss = model.loss(...) under NameScope("loss"), then backward with the tape retained.
// OpenAI's text tower has no module name of its own (its parameters sit at the top of the state
// dict), so the "text" scope is what gives its activations a prefix: "text.transformer.
// resblocks.0.attn.attention" next to the parameter "transformer.resblocks.0.attn.in_proj_weight".
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/models/clip.h"
#include "weights/safetensors.h"

namespace clipcu::inspect {

// Where the inputs come from. Files are safetensors "FILE" or "FILE:NAME"; without a name the
// images are the tensor called "pixels", "input.images" or "input.pixel_values" (in that
// order), the token ids "tokens", "input.text" or "input.input_ids" (so a golden io file works
// as it is). Image files get CLIP's eval preprocessing at the model's resolution; texts CLIP's
// BPE tokenizer (vocab: --vocab, else $CLIPCU_VOCAB).
struct InputSpec {
  std::string pixels, tokens;
  std::vector<std::string> images, texts;
  std::string vocab;
  // > 0: random inputs of this batch size for each tower not given otherwise (normal pixels;
  // ids as CLIP writes them: start token, random ids, the end token (the highest id), zeros).
  int64_t random_batch = 0;
  uint64_t seed = 0;
};

struct Inputs {
  Tensor images;  // [N, 3, R, R] F32, named "input.images"; undefined when absent
  Tensor text;    // [M, T] I64, named "input.text"; undefined when absent
};

Inputs load_inputs(const InputSpec& spec, const models::ModelConfig& cfg);
Inputs random_inputs(const models::ModelConfig& cfg, int64_t batch, uint64_t seed, bool images = true,
                     bool text = true);

struct StepResult {
  Tensor image_features, text_features, logits_per_image, loss;  // undefined when not computed
  // wall time of the forward (+ loss + backward)
  double seconds = 0;
  bool train_step = false;
};

// See the top of this file. Inputs are moved to the model's device. A training step needs both
// towers' inputs with the same batch size.
StepResult run_step(models::CLIP& model, const Inputs& in, bool train_step);

// Every named tensor of the step, in this order: the inputs, the results (image_features,
// text_features, logits_per_image, loss), the tape's tensors (engine/inspect.h: op outputs and
// module outputs), then "grad:<name>" for each of those with a gradient, then the parameters'
// gradients "grad:<state-dict name>"; filtered by the globs (empty: all). Moved to the host.
st::NamedTensors collect_step(const Tape& tape, const models::CLIP& model, const Inputs& in, const StepResult& r,
                              const std::vector<std::string>& match = {});

}  // namespace clipcu::inspect
