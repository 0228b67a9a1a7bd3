// clipcu inspect: one forward (and with --train-step the contrastive loss and the backward) with
// every intermediate written under its name.
//
//   clipcu inspect --config C.json --weights W.safetensors (--pixels P | --image F...)
//                  (--tokens T | --text S...) [--train-step] [--match GLOB]... [--list]
//                  --out DUMP.safetensors
//
// Names (docs/inspect.md): input.images, input.text, image_features, text_features,
// logits_per_image, loss; every op output "<module path>.<op>[#k]"; every module output
// "<module path>"; "grad:<name>" for gradients, "grad:<parameter>" for parameter gradients.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "engine/inspect.h"
#include "engine/models/config.h"
#include "tools/command.h"
#include "tools/inspect_cli.h"
#include "weights/safetensors.h"

namespace clipcu::tools {
namespace {

struct InspectArgs {
  ModelInputArgs m;
  std::vector<std::string> match;
  std::string out;
  bool list = false;
};

int run_inspect(InspectArgs& a) {
  CLIPCU_CHECK(!a.out.empty() || a.list, "inspect: give --out DUMP.safetensors (or --list)");
  std::unique_ptr<models::CLIP> model = load_model(a.m);
  const inspect::Inputs in = inspect::load_inputs(a.m.inputs, model->config());
  const inspect::StepResult r = inspect::run_step(*model, in, a.m.train_step);
  st::NamedTensors dump = inspect::collect_step(tape(), *model, in, r, a.match);
  tape().clear();
  size_t grads = 0;
  for (const auto& [name, t] : dump) grads += name.rfind(inspect::kGradPrefix, 0) == 0 ? 1 : 0;
  if (a.list)
    for (const auto& [name, t] : dump)
      std::printf("%s %s %s\n", name.c_str(), std::string(dtype_name(t.dtype())).c_str(), shape_str(t.shape()).c_str());
  if (!a.out.empty()) {
    CLIPCU_CHECK(!dump.empty(), "inspect: no tensor name matches the --match patterns");
    std::string patterns;
    for (const std::string& p : a.match) patterns += (patterns.empty() ? "" : " ") + p;
    st::save(a.out, dump,
             {{"mode", a.m.train_step ? "train-step" : "inference"},
              {"weights", a.m.weights},
              {"device", model->logit_scale.device().str()},
              {"precision", a.m.precision},
              {"match", patterns.empty() ? "*" : patterns},
              {"names", "docs/inspect.md"},
              {models::kConfigMetadataKey, models::config_to_string(model->config())}});
  }
  std::fprintf(stderr, "inspect: %s step, %zu tensors (%zu activations, %zu gradients)%s%s, %.3f s\n",
               a.m.train_step ? "training" : "inference", dump.size(), dump.size() - grads, grads,
               a.out.empty() ? "" : " -> ", a.out.c_str(), r.seconds);
  if (r.loss.defined()) std::fprintf(stderr, "inspect: loss %.6f\n", r.loss.item());
  return 0;
}

Command inspect_cmd("inspect",
                    "run one forward (--train-step: and backward) and dump every named activation and gradient",
                    [](CLI::App& app) {
                      auto a = std::make_shared<InspectArgs>();
                      add_model_input_options(app, a->m, /*default_batch=*/0);
                      app.add_flag("--train-step", a->m.train_step,
                                   "training mode: contrastive loss and backward, gradients dumped as grad:<name>");
                      app.add_option("--match", a->match,
                                     "keep names matching this glob (fnmatch; '*' crosses dots; repeatable)");
                      app.add_flag("--list", a->list, "print the names, dtypes and shapes to stdout");
                      app.add_option("--out", a->out, "the dump (safetensors)");
                      return [a]() { return run_inspect(*a); };
                    });

}  // namespace
}  // namespace clipcu::tools
