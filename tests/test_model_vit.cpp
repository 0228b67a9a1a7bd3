// The ViT CLIP (VisionTransformer + text transformer): parity with OpenAI's clip/model.py on the
// clip_vit_tiny golden (inference, training step 0 with every gradient, three AdamW steps), and
// the same model at a shape no golden has (odd widths, 3 and 5 heads, patch 5, GELU, an MLP
// ratio of 2.5): weights round trips in F32/F16/BF16 and a float64 gradient check through the
// whole model, module paths on the tape, initialization, and malformed weights files.
#include <doctest/doctest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "engine/models/vision_transformer.h"
#include "engine/rng.h"
#include "tests/model_golden.h"
#include "weights/state_dict.h"

using namespace clipcu;
using namespace clipcu::test;

namespace {

// A shape unlike the goldens': vision 48 wide with 3 heads of 16, patch 5 on 15 px (a 3x3
// grid), 3 layers, MLP 120 wide, exact GELU; text 40 wide with 5 heads, context 7, vocab 50.
models::ModelConfig odd_vit_config() {
  return models::parse_config(nlohmann::json::parse(R"({
    "embed_dim": 24, "quick_gelu": false,
    "vision_cfg": {"image_size": 15, "layers": 3, "width": 48, "patch_size": 5, "head_width": 16,
                   "mlp_ratio": 2.5},
    "text_cfg": {"context_length": 7, "vocab_size": 50, "width": 40, "heads": 5, "layers": 2}})"),
                              "odd_vit_config");
}

}  // namespace

TEST_CASE("clip_vit_tiny: inference-mode features and logits match OpenAI's model") {
  check_golden_eval("clip_vit_tiny");
}

TEST_CASE("clip_vit_tiny: training step 0, every gradient, three AdamW steps match OpenAI's model") {
  check_golden_training("clip_vit_tiny");
}

TEST_CASE("ViT CLIP: state-dict names, tape module paths, optimizer groups") {
  auto model = load_golden_model("clip_vit_tiny");
  const auto sd = model->state_dict();
  const st::File& w = golden("clip_vit_tiny.weights.safetensors");
  CHECK(sd.size() == w.entries().size());
  for (const auto& [name, t] : sd) {
    CHECK_MESSAGE(w.contains(name), name);
    CHECK(t.name() == name);  // parameters carry their state-dict path
  }
  // Every forward op is recorded under its module's path.
  tape().clear();
  Tensor fi = model->encode_image(golden("clip_vit_tiny.io.safetensors").get("input.images", DType::F32));
  Tensor ft = model->encode_text(golden("clip_vit_tiny.io.safetensors").get("input.text"));
  bool vis_attn = false, txt_attn = false, txt_mlp = false;
  for (const Node& n : tape().nodes()) {
    vis_attn |= n.op == "attention" && n.scope == "visual.transformer.resblocks.1.attn";
    txt_attn |= n.op == "attention" && n.scope == "transformer.resblocks.0.attn";
    txt_mlp |= n.scope == "transformer.resblocks.1.mlp.c_fc";
  }
  CHECK(vis_attn);
  CHECK(txt_attn);
  CHECK(txt_mlp);
  tape().clear();
  // open_clip's decay rule: matrices decay; gains, biases, embeddings' 1-d vectors and logit_scale do not
  for (const auto& p : model->optimizer_params()) {
    const bool expect = p.param.dim() >= 2 && p.name.find("ln") == std::string::npos;
    CHECK_MESSAGE(p.decay == expect, p.name);
  }
}

TEST_CASE("ViT CLIP of an unseen shape: weights round trip in F32, F16 and BF16") {
  const models::ModelConfig cfg = odd_vit_config();
  CHECK(cfg.vision.heads() == 3);
  CHECK(cfg.vision.mlp_width() == 120);
  auto model = models::make_clip(cfg, 7);
  model->eval();
  Rng rng(5);
  const Tensor images = Tensor::randn({3, 3, 15, 15}, rng);
  const Tensor tokens = test::clip_tokens(3, 7, 50, 9);
  NoGradGuard no_grad;
  const Tensor fi = model->encode_image(images), ft = model->encode_text(tokens);
  CHECK(fi.shape() == Shape{3, 24});
  CHECK(ft.shape() == Shape{3, 24});
  const std::string dir = temp_dir("vit_roundtrip");
  for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
    INFO(dtype_name(dt));
    const std::string path = dir + "/odd_vit." + std::string(dtype_name(dt)) + ".safetensors";
    models::save_clip(*model, path, dt);
    st::File f = st::File::open(path);
    for (const st::Entry& e : f.entries()) CHECK_MESSAGE(e.dtype == dt, e.name);
    auto back = models::load_clip(path);  // the config comes from the file's metadata
    back->eval();
    CHECK(models::config_to_string(back->config()) == models::config_to_string(cfg));
    // every tensor is the original rounded to the stored type, exactly
    const auto a = model->state_dict(), b = back->state_dict();
    REQUIRE(a.size() == b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      REQUIRE(a[i].first == b[i].first);
      CHECK_MESSAGE(rel_err(b[i].second, a[i].second.to(dt).to(DType::F32)) == 0.0, a[i].first);
    }
    const Tensor gi = back->encode_image(images), gt = back->encode_text(tokens);
    if (dt == DType::F32) {
      CHECK(rel_err(gi, fi) == 0.0);
      CHECK(rel_err(gt, ft) == 0.0);
    } else {
      // 16-bit weights: each weight rounded by up to 2^-11 (F16) or 2^-8 (BF16) relative; the
      // README's bf16 tolerance 1e-2, and 2e-3 for F16's three more mantissa bits
      const double tol = dt == DType::F16 ? 2e-3 : 1e-2;
      check_close(gi, fi, tol, std::string("image features with ") + std::string(dtype_name(dt)) + " weights");
      check_close(gt, ft, tol, std::string("text features with ") + std::string(dtype_name(dt)) + " weights");
    }
  }
}

TEST_CASE("ViT CLIP of an unseen shape: float64 gradient check through the whole model and loss") {
  auto model = models::make_clip(odd_vit_config(), 21);
  model->to(DType::F64);
  model->train();
  Rng rng(8);
  const Tensor images = Tensor::randn({3, 3, 15, 15}, rng, 0.0, 1.0, DType::F64);
  const Tensor tokens = test::clip_tokens(3, 7, 50, 4);
  auto find = [&](const std::string& name) {
    for (const auto& [n, t] : model->named_parameters())
      if (n == name) return t;
    FAIL("no parameter " << name);
    return Tensor();
  };
  // Parameters spread over both towers and the loss, small enough to perturb one by one.
  std::vector<Tensor> inputs = {find("visual.class_embedding"), find("visual.transformer.resblocks.1.attn.in_proj_bias"),
                                find("visual.ln_post.weight"),  find("transformer.resblocks.1.mlp.c_proj.bias"),
                                find("ln_final.bias"),          find("logit_scale")};
  gradcheck(
      [&](const std::vector<Tensor>&) {
        return model->loss(model->encode_image(images), model->encode_text(tokens)).loss;
      },
      inputs, "odd ViT CLIP loss", 1e-6, 1e-6);
}

TEST_CASE("CLIP initialization follows OpenAI's initialize_parameters, reproducibly") {
  models::ModelConfig cfg = odd_vit_config();
  cfg.text.width = 256;  // enough values per tensor for the sample stds to mean something
  cfg.text.heads = 4;
  auto a = models::make_clip(cfg, 1), b = models::make_clip(cfg, 1), c = models::make_clip(cfg, 2);
  const auto sa = a->state_dict(), sb = b->state_dict(), sc = c->state_dict();
  for (size_t i = 0; i < sa.size(); ++i) CHECK_MESSAGE(rel_err(sa[i].second, sb[i].second) == 0.0, sa[i].first);
  CHECK(rel_err(a->text().token_embedding.weight, c->text().token_embedding.weight) > 0.5);
  CHECK(a->logit_scale.item() == doctest::Approx(std::log(1 / 0.07)).epsilon(1e-6));
  auto stdev = [](const Tensor& t) {
    double s = 0;
    for (double v : t.to_f64_vector()) s += v * v;
    return std::sqrt(s / double(t.numel()));
  };
  const double W = 256, L = 2;
  auto& blk = *a->text().transformer.resblocks[0];
  CHECK(stdev(a->text().token_embedding.weight) == doctest::Approx(0.02).epsilon(0.05));
  CHECK(stdev(blk.attn.in_proj_weight) == doctest::Approx(1 / std::sqrt(W)).epsilon(0.05));
  CHECK(stdev(blk.attn.out_proj.weight) == doctest::Approx(1 / std::sqrt(W) / std::sqrt(2 * L)).epsilon(0.05));
  CHECK(stdev(blk.mlp.c_fc.weight) == doctest::Approx(1 / std::sqrt(2 * W)).epsilon(0.05));
  CHECK(stdev(a->text().text_projection) == doctest::Approx(1 / std::sqrt(W)).epsilon(0.05));
  CHECK(stdev(blk.attn.in_proj_bias) == 0.0);
  CHECK(stdev(blk.attn.out_proj.bias) == 0.0);
  auto& vit = dynamic_cast<models::VisionTransformer&>(a->visual());
  CHECK(stdev(vit.proj) == doctest::Approx(1 / std::sqrt(48.0)).epsilon(0.1));
  // PyTorch's xavier-uniform in_proj of the vision blocks: std = sqrt(2 / (W + 3W))
  CHECK(stdev(vit.transformer.resblocks[0]->attn.in_proj_weight) == doctest::Approx(std::sqrt(2.0 / 192)).epsilon(0.1));
  CHECK(stdev(vit.ln_pre.weight) == 1.0);
}

TEST_CASE("malformed weights: missing, unexpected and mis-shaped tensors are named") {
  const models::ModelConfig cfg = odd_vit_config();
  auto model = models::make_clip(cfg, 3);
  const std::string dir = temp_dir("vit_malformed");
  auto attempt = [&](const st::NamedTensors& tensors, const std::string& tag) {
    const std::string path = dir + "/" + tag + ".safetensors";
    st::save(path, tensors);
    models::CLIP fresh(cfg);
    models::load_weights(fresh, path);
  };
  const st::NamedTensors sd = model->state_dict();
  st::NamedTensors missing, unexpected = sd, misshaped, wrong_type;
  for (const auto& [n, t] : sd) {
    if (n != "visual.ln_post.bias") missing.emplace_back(n, t);
    misshaped.emplace_back(n, n == "visual.proj" ? Tensor::zeros({48, 23}) : t);
    wrong_type.emplace_back(n, n == "ln_final.weight" ? Tensor::zeros({40}, DType::I32) : t);
  }
  unexpected.emplace_back("visual.transformer.resblocks.3.ln_1.weight", Tensor::ones({48}));
  CHECK_THROWS_WITH_AS(attempt(missing, "missing"), doctest::Contains("visual.ln_post.bias"), Error);
  CHECK_THROWS_WITH_AS(attempt(missing, "missing"), doctest::Contains("missing tensors (1)"), Error);
  CHECK_THROWS_WITH_AS(attempt(unexpected, "unexpected"),
                       doctest::Contains("unexpected tensors (1): visual.transformer.resblocks.3.ln_1.weight"), Error);
  CHECK_THROWS_WITH_AS(attempt(misshaped, "misshaped"),
                       doctest::Contains("visual.proj is [48, 23] in the file, the model has [48, 24]"), Error);
  CHECK_THROWS_WITH_AS(attempt(wrong_type, "wrong_type"), doctest::Contains("ln_final.weight is I32"), Error);
  // A file without a config needs one
  st::save(dir + "/no_config.safetensors", sd);
  CHECK_THROWS_WITH_AS(models::load_clip(dir + "/no_config.safetensors"), doctest::Contains("no model config"), Error);
  // The golden file loads into the golden config but not into another shape
  models::CLIP other(cfg);
  CHECK_THROWS_WITH_AS(models::load_weights(other, golden_path("clip_vit_tiny.weights.safetensors")),
                       doctest::Contains("mis-shaped tensors"), Error);
}

TEST_CASE("ViT CLIP: images or tokens of the wrong shape are errors, shorter token rows are fine") {
  auto model = models::make_clip(odd_vit_config(), 3);
  model->eval();
  NoGradGuard no_grad;
  CHECK_THROWS_AS(model->encode_image(Tensor::zeros({2, 3, 16, 16})), Error);
  CHECK_THROWS_AS(model->encode_image(Tensor::zeros({2, 1, 15, 15})), Error);
  CHECK_THROWS_WITH_AS(model->encode_text(Tensor::from_ints({1, 2, 70}, {1, 3})),
                       doctest::Contains("token id 70 at [0, 2] is outside the vocabulary"), Error);
  CHECK_THROWS_AS(model->encode_text(Tensor::zeros({1, 8}, DType::I64)), Error);  // context 7
  CHECK_THROWS_AS(model->encode_text(Tensor::zeros({1, 5})), Error);              // float ids
  // a row of 4 tokens (positions 0..3) gives the same features as the same row zero padded to 7:
  // the causal mask keeps the padding out of the pooled position
  const Tensor short_ids = Tensor::from_ints({48, 5, 9, 49}, {1, 4});
  const Tensor long_ids = Tensor::from_ints({48, 5, 9, 49, 0, 0, 0}, {1, 7});
  CHECK(rel_err(model->encode_text(short_ids), model->encode_text(long_ids)) < 1e-6);
}
