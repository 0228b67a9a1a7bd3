// clipcu search: embed images once into an index, then find the best images for a text or an
// image query, with an HTML page of thumbnails and scores.
#include <cstdio>
#include <filesystem>

#include "engine/autograd.h"
#include "engine/data/image.h"
#include "engine/data/preprocess.h"
#include "engine/models/checkpoint.h"
#include "engine/text/tokenizer.h"
#include "engine/train/device_setup.h"
#include "engine/train/search.h"
#include "engine/train/trainer.h"
#include "tools/command.h"

namespace clipcu::tools {
namespace {

Command search_cmd("search", "Index images once, then search them by text or image", [](CLI::App& app) {
  struct Opts {
    std::string weights, config, index, vocab, html, device = "auto", precision = "fp32";
    std::vector<std::string> images, texts, query_images;
    int batch = 64, k = 8;
  };
  auto o = std::make_shared<Opts>();
  app.add_option("--weights", o->weights, "model weights (safetensors or HF directory)")->required();
  app.add_option("--config", o->config, "open_clip config (default: the one stored in the weights)");
  app.add_option("--index", o->index, "the index file (written by --images, read otherwise)")->required();
  app.add_option("--images", o->images, "build the index from these folders / image files / .txt lists");
  app.add_option("--text", o->texts, "text query (repeatable)");
  app.add_option("--query-image", o->query_images, "image query (repeatable)");
  app.add_option("--top-k", o->k, "results per query")->capture_default_str();
  app.add_option("--batch-size", o->batch, "batch size for indexing")->capture_default_str();
  app.add_option("--vocab", o->vocab, "BPE merges for text queries (default: $CLIPCU_VOCAB)");
  app.add_option("--html", o->html, "write an HTML page of the results with thumbnails");
  app.add_option("--device", o->device, "auto (a GPU when one answers, else the CPU) | cpu | cuda[:N]")
      ->capture_default_str();
  app.add_option("--precision", o->precision, "fp32 | bf16 (GPU only)")->capture_default_str();
  return [o]() {
    std::string cfg = o->config.empty() ? "" : train::find_model_config(o->config);
    const train::ComputeTarget target = train::resolve_target(o->device, o->precision);
    auto model = models::load_clip(o->weights, cfg);
    train::move_model(*model, target);
    model->eval();
    train::SearchIndex idx;
    if (!o->images.empty()) {
      idx = train::build_index(*model, train::collect_images(o->images), o->batch, o->weights);
      train::save_index(idx, o->index);
      std::printf("indexed %zu images into %s\n", idx.paths.size(), o->index.c_str());
    } else {
      idx = train::load_index(o->index);
    }
    CLIPCU_CHECK(idx.features.size(1) == model->config().embed_dim,
                 "index '" << o->index << "' has " << idx.features.size(1) << "-d features, the model "
                           << model->config().embed_dim << " (built with another model?)");
    std::vector<train::ResultRow> rows;
    NoGradGuard ng;
    if (!o->texts.empty()) {
      text::Tokenizer tok(text::resolve_vocab_path(o->vocab));
      Tensor ids = tok.tokenize_batch(o->texts, model->config().text.context_length);
      Tensor f = model->encode_text(ids).to(Device::cpu());  // the text tower uploads the ids
      for (size_t i = 0; i < o->texts.size(); ++i)
        rows.push_back({o->texts[i], train::top_k(idx, f.rows(int64_t(i), 1), o->k)});
    }
    for (const auto& q : o->query_images) {
      int R = int(model->config().vision.image_size);
      Tensor x = data::preprocess(data::decode_image_file(q), R).view({1, 3, R, R});
      Tensor f = model->encode_image(x).to(Device::cpu());  // brought to the model's device and type
      rows.push_back({q, train::top_k(idx, f, o->k)});
    }
    for (const auto& r : rows) {
      std::printf("query: %s\n", r.query.c_str());
      for (const auto& h : r.hits) std::printf("  %.4f  %s\n", h.score, idx.paths[size_t(h.index)].c_str());
    }
    if (!o->html.empty()) {
      train::write_results_html(o->html, "clipcu search", idx, rows);
      std::printf("wrote %s\n", o->html.c_str());
    }
    CLIPCU_CHECK(!rows.empty() || !o->images.empty(), "nothing to do: give --images to index, or --text/--query-image");
    return 0;
  };
});

}  // namespace
}  // namespace clipcu::tools
