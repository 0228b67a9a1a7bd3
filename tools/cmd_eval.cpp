// clipcu eval: zero-shot classification and image/text retrieval of a model on a dataset.
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "engine/data/shapes.h"
#include "engine/models/checkpoint.h"
#include "engine/text/tokenizer.h"
#include "engine/train/device_setup.h"
#include "engine/train/evaluate.h"
#include "engine/train/trainer.h"
#include "tools/command.h"

namespace clipcu::tools {
namespace {

namespace fs = std::filesystem;

Command eval_cmd("eval", "Zero-shot classification and image<->text retrieval on a dataset", [](CLI::App& app) {
  struct Opts {
    std::string weights, config, data, classes, templates, vocab, out, device = "auto", precision = "fp32";
    data::CsvOptions csv;
    train::EvalOptions eval;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("--weights", o->weights, "model weights (safetensors, or a HuggingFace CLIP directory)")->required();
  app.add_option("--config", o->config, "open_clip config (name or path; default: the one stored in the weights)");
  app.add_option("--data", o->data, "CSV/TSV, tar shard pattern, or 'synthetic'")->required();
  app.add_option("--csv-separator", o->csv.separator, "CSV separator")->capture_default_str();
  app.add_option("--csv-img-key", o->csv.image_key, "CSV image column")->capture_default_str();
  app.add_option("--csv-caption-key", o->csv.caption_key, "CSV caption column")->capture_default_str();
  app.add_option("--classes", o->classes, "JSON list of class names (default: classes.json beside the data)");
  app.add_option("--templates", o->templates, "JSON list of prompt templates with {} (default: templates.json beside the data)");
  app.add_option("--vocab", o->vocab, "BPE merges (default: $CLIPCU_VOCAB)");
  app.add_option("--batch-size", o->eval.batch_size, "batch size")->capture_default_str();
  app.add_option("--workers", o->eval.workers, "data loading threads")->capture_default_str();
  app.add_option("--max-samples", o->eval.max_samples, "evaluate at most N samples (0: all)");
  app.add_option("--out", o->out, "write the metrics as JSON here");
  app.add_option("--device", o->device, "auto (a GPU when one answers, else the CPU) | cpu | cuda[:N]")
      ->capture_default_str();
  app.add_option("--precision", o->precision, "fp32 | bf16 (GPU only)")->capture_default_str();
  return [o]() {
    std::string cfg = o->config.empty() ? "" : train::find_model_config(o->config);
    const train::ComputeTarget target = train::resolve_target(o->device, o->precision);
    auto model = models::load_clip(o->weights, cfg);
    train::move_model(*model, target);
    text::Tokenizer tok(text::resolve_vocab_path(o->vocab));
    int64_t ctx = model->config().text.context_length;
    data::TokenizeFn tokenize = [&tok, ctx](const std::string& s) { return tok.tokenize(s, ctx); };
    std::shared_ptr<data::Dataset> ds;
    fs::path base;
    if (o->data == "synthetic") {
      ds = std::make_shared<data::ShapesDataset>(int(model->config().vision.image_size), 0, 100000, 1000);
      o->eval.classes = data::ShapesGenerator::class_names();
      o->eval.templates = data::ShapesGenerator::prompt_templates();
    } else {
      ds = data::open_dataset(o->data, o->csv);
      base = fs::path(o->data).parent_path();
    }
    std::string cls = !o->classes.empty() ? o->classes : (base / "classes.json").string();
    std::string tpl = !o->templates.empty() ? o->templates : (base / "templates.json").string();
    if (!o->classes.empty() || (o->data != "synthetic" && fs::is_regular_file(cls)))
      o->eval.classes = train::read_string_list(cls);
    if (!o->templates.empty() || (o->data != "synthetic" && fs::is_regular_file(tpl)))
      o->eval.templates = train::read_string_list(tpl);
    train::EvalResult r = train::evaluate(*model, ds, tokenize, o->eval);
    nlohmann::json j = r.to_json();
    if (r.has_zeroshot)
      std::printf("zero-shot top-1 %.4f top-5 %.4f (%lld images, %zu classes)\n", r.zeroshot.top1, r.zeroshot.top5,
                  static_cast<long long>(r.n), o->eval.classes.size());
    std::printf("image->text R@1 %.4f R@5 %.4f R@10 %.4f mean rank %.2f\n", r.retrieval.i2t_r1, r.retrieval.i2t_r5,
                r.retrieval.i2t_r10, r.retrieval.i2t_mean_rank);
    std::printf("text->image R@1 %.4f R@5 %.4f R@10 %.4f mean rank %.2f\n", r.retrieval.t2i_r1, r.retrieval.t2i_r5,
                r.retrieval.t2i_r10, r.retrieval.t2i_mean_rank);
    if (!o->out.empty()) {
      std::ofstream f(o->out);
      CLIPCU_CHECK(f, "cannot write '" << o->out << "'");
      f << j.dump(1) << "\n";
    }
    return 0;
  };
});

}  // namespace
}  // namespace clipcu::tools
