// clipcu embed: CLIP features of images and texts with a trained model.
//
//   clipcu embed --config C.json --weights W.safetensors [--pixels P.safetensors]
//                [--tokens T.safetensors] [--image FILE]... [--text STR]... [--vocab V]
//                [--device auto|cpu|cuda] [--precision fp32|bf16] [--batch-size N] --out OUT.safetensors
//
// Writes image_features [N, E] and text_features [M, E] (projected, before normalization) and,
// when both towers ran, logits_per_image [N, M] = exp(logit_scale) * cosine similarities.
// Images come from --pixels (a safetensors file with `pixels` [N, 3, R, R] or [3, R, R],
// already normalized) then --image files (CLIP's eval preprocessing at the model's resolution);
// texts from --tokens (`tokens` [M, T] integer ids, T <= context length) then --text strings
// (CLIP's BPE tokenizer: --vocab, else $CLIPCU_VOCAB). --weights may be a HuggingFace CLIPModel
// directory (config.json inside; --config then optional); a file saved by clipcu carries its
// config in its metadata.
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/data/image.h"
#include "engine/data/preprocess.h"
#include "engine/models/checkpoint.h"
#include "engine/ops.h"
#include "engine/text/tokenizer.h"
#include "engine/train/device_setup.h"
#include "tools/command.h"
#include "weights/safetensors.h"

namespace clipcu::tools {
namespace {

struct EmbedArgs {
  std::string config, weights, pixels, tokens, vocab, out, device = "auto", precision = "fp32";
  std::vector<std::string> images, texts;
  int64_t batch_size = 64;
};

// The images to embed, [N, 3, R, R] F32 on the host.
Tensor gather_images(const EmbedArgs& a, int64_t R) {
  std::vector<Tensor> parts;
  if (!a.pixels.empty()) {
    st::File f = st::File::open(a.pixels);
    CLIPCU_CHECK(f.contains("pixels"), a.pixels << ": no tensor named 'pixels' (expected [N, 3, R, R] or [3, R, R])");
    CLIPCU_CHECK(is_floating(f.entry("pixels").dtype), a.pixels << ": 'pixels' must be floating, got "
                                                                << dtype_name(f.entry("pixels").dtype));
    Tensor p = f.get("pixels", DType::F32);
    if (p.dim() == 3) p = p.view({1, p.size(0), p.size(1), p.size(2)});
    CLIPCU_CHECK(p.dim() == 4 && p.size(1) == 3 && p.size(2) == R && p.size(3) == R,
                 a.pixels << ": 'pixels' is " << shape_str(p.shape()) << ", the model takes [N, 3, " << R << ", " << R
                          << "]");
    parts.push_back(p);
  }
  for (const std::string& file : a.images) {
    Tensor chw = data::preprocess(data::decode_image_file(file), int(R));  // [3, R, R]
    parts.push_back(chw.view({1, 3, R, R}));
  }
  if (parts.empty()) return Tensor();
  return parts.size() == 1 ? parts[0] : ops::concat(parts, 0);
}

// The token rows to embed, [M, T] I64 on the host (shorter rows zero padded to the longest).
Tensor gather_tokens(const EmbedArgs& a, int64_t context_length) {
  std::vector<std::vector<int64_t>> rows;
  if (!a.tokens.empty()) {
    st::File f = st::File::open(a.tokens);
    CLIPCU_CHECK(f.contains("tokens"), a.tokens << ": no tensor named 'tokens' (expected [M, T] integer ids)");
    const DType dt = f.entry("tokens").dtype;
    CLIPCU_CHECK(dt == DType::I64 || dt == DType::I32, a.tokens << ": 'tokens' must be I64 or I32, got " << dtype_name(dt));
    Tensor t = f.get("tokens");
    if (t.dim() == 1) t = t.view({1, t.size(0)});
    CLIPCU_CHECK(t.dim() == 2 && t.size(1) >= 1, a.tokens << ": 'tokens' is " << shape_str(t.shape()) << ", expected [M, T]");
    std::vector<int64_t> v = t.to_i64_vector();
    for (int64_t m = 0; m < t.size(0); ++m) rows.emplace_back(v.begin() + m * t.size(1), v.begin() + (m + 1) * t.size(1));
  }
  if (!a.texts.empty()) {
    const text::Tokenizer tok(text::resolve_vocab_path(a.vocab));
    for (const std::string& s : a.texts) rows.push_back(tok.tokenize(s, context_length));
  }
  if (rows.empty()) return Tensor();
  size_t T = 0;
  for (const auto& r : rows) T = std::max(T, r.size());
  std::vector<int64_t> flat(rows.size() * T, 0);
  for (size_t m = 0; m < rows.size(); ++m) std::copy(rows[m].begin(), rows[m].end(), flat.begin() + m * T);
  return Tensor::from_ints(flat, {int64_t(rows.size()), int64_t(T)});
}

// Runs `encode` over `x` in chunks of batch_size rows; the results stacked on the host.
// (The model brings each chunk to its device and type: nn::to_model_input.)
template <class F> Tensor encode_in_batches(const Tensor& x, int64_t batch_size, F&& encode) {
  std::vector<Tensor> outs;
  for (int64_t start = 0; start < x.size(0); start += batch_size) {
    const int64_t n = std::min(batch_size, x.size(0) - start);
    outs.push_back(encode(x.rows(start, n)).to(Device::cpu()).to(DType::F32));
  }
  return outs.size() == 1 ? outs[0] : ops::concat(outs, 0);
}

int run_embed(const EmbedArgs& a) {
  const train::ComputeTarget target = train::resolve_target(a.device, a.precision);
  CLIPCU_CHECK(!a.pixels.empty() || !a.tokens.empty() || !a.images.empty() || !a.texts.empty(),
               "embed: nothing to embed (give --pixels, --image, --tokens or --text)");
  std::unique_ptr<models::CLIP> model = models::load_clip(a.weights, a.config);
  model->eval();
  train::move_model(*model, target);
  NoGradGuard no_grad;
  const models::ModelConfig& cfg = model->config();

  Tensor images = gather_images(a, cfg.vision.image_size);
  Tensor tokens = gather_tokens(a, cfg.text.context_length);
  st::NamedTensors out;
  Tensor fi, ft;
  if (images.defined()) {
    fi = encode_in_batches(images, a.batch_size, [&](const Tensor& x) { return model->encode_image(x); });
    out.emplace_back("image_features", fi);
  }
  if (tokens.defined()) {
    ft = encode_in_batches(tokens, a.batch_size, [&](const Tensor& x) { return model->encode_text(x); });
    out.emplace_back("text_features", ft);
  }
  if (fi.defined() && ft.defined()) {
    out.emplace_back("logits_per_image", model->logits_per_image(fi, ft));
  }
  st::save(a.out, out, {{"weights", a.weights}, {models::kConfigMetadataKey, models::config_to_string(cfg)}});
  std::fprintf(stderr, "embed: %lld images, %lld texts -> %s\n", (long long)(fi.defined() ? fi.size(0) : 0),
               (long long)(ft.defined() ? ft.size(0) : 0), a.out.c_str());
  return 0;
}

Command embed_cmd("embed", "CLIP features of images and texts (image_features, text_features, logits_per_image)",
                  [](CLI::App& app) {
                    auto a = std::make_shared<EmbedArgs>();
                    app.add_option("--config", a->config,
                                   "open_clip model config (JSON); optional for a HuggingFace directory or a file "
                                   "saved by clipcu");
                    app.add_option("--weights", a->weights, "safetensors weights, or a HuggingFace CLIPModel directory")
                        ->required();
                    app.add_option("--pixels", a->pixels, "safetensors with 'pixels' [N, 3, R, R] (normalized)");
                    app.add_option("--tokens", a->tokens, "safetensors with 'tokens' [M, T] integer ids");
                    app.add_option("--image", a->images, "an image file (repeatable)");
                    app.add_option("--text", a->texts, "a text (repeatable)");
                    app.add_option("--vocab", a->vocab, "BPE merges file for --text; default $CLIPCU_VOCAB");
                    app.add_option("--device", a->device,
                                   "auto (a GPU when one answers, else the CPU), cpu or cuda[:N]")
                        ->default_val("auto");
                    app.add_option("--precision", a->precision, "fp32, or bf16 (GPU only); features are saved as F32")
                        ->default_val("fp32");
                    app.add_option("--batch-size", a->batch_size, "rows per forward pass")
                        ->default_val(64)
                        ->check(CLI::Range(int64_t(1), int64_t(1) << 20));
                    app.add_option("--out", a->out, "output safetensors")->required();
                    return [a]() { return run_embed(*a); };
                  });

}  // namespace
}  // namespace clipcu::tools
