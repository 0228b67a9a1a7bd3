// The ResNet CLIP (ModifiedResNet + text transformer): parity with OpenAI's clip/model.py on the
// clip_rn_tiny golden (inference with running statistics, training with batch statistics, every
// gradient, three AdamW steps, running statistics after them), and a ResNet of another shape
// (stem width 12, stages [2, 1, 1, 2], 96 px, 12 heads of 32): weights round trip with its
// BatchNorm buffers, and a float64 gradient check through batch statistics and the attention pool.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>
#include <set>

#include "engine/models/modified_resnet.h"
#include "engine/rng.h"
#include "tests/model_golden.h"

using namespace clipcu;
using namespace clipcu::test;

namespace {

models::ModelConfig odd_rn_config() {
  return models::parse_config(nlohmann::json::parse(R"({
    "embed_dim": 24, "quick_gelu": true,
    "vision_cfg": {"image_size": 96, "layers": [2, 1, 1, 2], "width": 12, "head_width": 32},
    "text_cfg": {"context_length": 5, "vocab_size": 30, "width": 20, "heads": 4, "layers": 1}})"),
                              "odd_rn_config");
}

Tensor tokens_for(int64_t B, int64_t T, int64_t V) {
  std::vector<int64_t> ids(size_t(B * T), 0);
  for (int64_t b = 0; b < B; ++b) {
    ids[size_t(b * T)] = V - 2;
    const int64_t end = 1 + b % (T - 1);
    for (int64_t t = 1; t < end; ++t) ids[size_t(b * T + t)] = 1 + (b * 7 + t * 3) % (V - 3);
    ids[size_t(b * T + end)] = V - 1;
  }
  return Tensor::from_ints(ids, {B, T});
}

}  // namespace

TEST_CASE("clip_rn_tiny: inference-mode features and logits match OpenAI's model") {
  check_golden_eval("clip_rn_tiny");
}

TEST_CASE("clip_rn_tiny: training step 0, every gradient, three AdamW steps, running statistics match") {
  check_golden_training("clip_rn_tiny");
}

TEST_CASE("ModifiedResNet: structure and names follow OpenAI's module") {
  const models::ModelConfig cfg = odd_rn_config();
  CHECK(cfg.vision.heads() == 12);
  models::CLIP model(cfg);
  auto& rn = dynamic_cast<models::ModifiedResNet&>(model.visual());
  CHECK(rn.stages[0].size() == 2);
  CHECK(rn.stages[3].size() == 2);
  CHECK(rn.stages[0][0]->downsample != nullptr);  // 12 -> 48 channels
  CHECK(rn.stages[0][1]->downsample == nullptr);  // 48 -> 48, stride 1: the identity
  CHECK(rn.stages[1][0]->downsample != nullptr);  // stride 2
  CHECK(rn.stages[3][1]->downsample == nullptr);
  CHECK(rn.attnpool->positional_embedding.shape() == Shape{10, 384});  // 3x3 map + the mean token
  std::set<std::string> names;
  for (const auto& [n, t] : model.state_dict()) names.insert(n);
  for (const char* n : {"visual.layer1.1.bn3.num_batches_tracked", "visual.layer4.0.downsample.0.weight",
                        "visual.layer4.0.downsample.1.running_var", "visual.attnpool.q_proj.weight",
                        "visual.attnpool.c_proj.bias", "visual.bn3.running_mean"})
    CHECK_MESSAGE(names.count(n), n);
  CHECK(!names.count("visual.layer1.1.downsample.0.weight"));
}

TEST_CASE("ResNet CLIP of an unseen shape: weights round trip with BatchNorm buffers") {
  auto model = models::make_clip(odd_rn_config(), 5);
  // non-trivial running statistics and counters
  model->train();
  Rng rng(2);
  const Tensor images = Tensor::randn({2, 3, 96, 96}, rng);
  const Tensor tokens = tokens_for(2, 5, 30);
  {
    NoGradGuard no_grad;
    model->encode_image(images);
  }
  model->eval();
  NoGradGuard no_grad;
  const Tensor fi = model->encode_image(images), ft = model->encode_text(tokens);
  const std::string dir = temp_dir("rn_roundtrip");
  for (DType dt : {DType::F32, DType::BF16}) {
    INFO(dtype_name(dt));
    const std::string path = dir + "/odd_rn.safetensors";
    models::save_clip(*model, path, dt);
    st::File f = st::File::open(path);
    CHECK(f.entry("visual.layer2.0.bn1.num_batches_tracked").dtype == DType::I64);
    CHECK(f.entry("visual.layer2.0.bn1.running_var").dtype == dt);
    auto back = models::load_clip(path);
    back->eval();
    const auto a = model->state_dict(), b = back->state_dict();
    REQUIRE(a.size() == b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      const Tensor expect = is_floating(a[i].second.dtype()) ? a[i].second.to(dt).to(DType::F32) : a[i].second;
      CHECK_MESSAGE(rel_err(b[i].second, expect) == 0.0, a[i].first);
    }
    for (const auto& [n, t] : back->named_buffers())
      if (n.find("num_batches_tracked") != std::string::npos) CHECK_MESSAGE(t.item() == 1.0, n);
    const Tensor gi = back->encode_image(images), gt = back->encode_text(tokens);
    if (dt == DType::F32) {
      CHECK(rel_err(gi, fi) == 0.0);
      CHECK(rel_err(gt, ft) == 0.0);
    } else {
      check_close(gi, fi, 1e-2, "image features with BF16 weights");
    }
  }
}

TEST_CASE("ResNet CLIP of an unseen shape: float64 gradient check through batch statistics") {
  auto model = models::make_clip(odd_rn_config(), 13);
  model->to(DType::F64);
  model->train();
  // zero bn3 gains (OpenAI's init) would hide the residual branches from the check
  for (auto& [n, p] : model->named_parameters())
    if (n.find("bn3.weight") != std::string::npos) p.fill(0.7);
  Rng rng(4);
  const Tensor images = Tensor::randn({2, 3, 96, 96}, rng, 0.0, 1.0, DType::F64);
  const Tensor tokens = tokens_for(2, 5, 30);
  auto find = [&](const std::string& name) {
    for (const auto& [n, t] : model->named_parameters())
      if (n == name) return t;
    FAIL("no parameter " << name);
    return Tensor();
  };
  std::vector<Tensor> inputs = {find("visual.bn1.weight"), find("visual.layer1.1.bn2.weight"),
                                find("visual.attnpool.c_proj.bias"), find("logit_scale")};
  // The loss is only piecewise smooth (ReLU): a finite difference is exact only when no ReLU
  // input lies within the perturbation. The stem feeds ~10^5 of them, so the step is 1e-7
  // rather than 1e-6 (measured on the stem's bn1.weight: rel err 1.6e-2 at 1e-5, 7e-3 at 1e-6,
  // 5e-8 at 1e-7, the signature of kinks); float64 rounding stays ~1e-9 at that step.
  gradcheck(
      [&](const std::vector<Tensor>&) {
        return model->loss(model->encode_image(images), model->encode_text(tokens)).loss;
      },
      inputs, "odd ResNet CLIP loss", 1e-7, 1e-6);
}
