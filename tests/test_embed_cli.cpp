// `clipcu embed` end to end: the built command on the golden weights (OpenAI layout, both towers,
// and a HuggingFace directory) with --pixels/--tokens files written here, against the reference
// features; --image and --text through CLIP's preprocessing and tokenizer; and its errors.
#include <doctest/doctest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/models/checkpoint.h"
#include "engine/ops.h"
#include "tests/support.h"

using namespace clipcu;
using namespace clipcu::test;

namespace {

// Forward values, float32 against the float64 reference (golden README).
constexpr double kForwardTol = 1e-5;

struct Run {
  int status;
  std::string output;
};

Run embed(const std::string& args) {
  Run r;
  // --device cpu unless the test names a device: the CPU oracle (on a GPU machine auto would
  // pick the GPU)
  const bool names_device = args.find("--device") != std::string::npos;
  r.status = run_command(clipcu_binary() + " embed " + (names_device ? "" : "--device cpu ") + args, &r.output);
  return r;
}

std::string write_tensor(const std::string& dir, const std::string& file, const std::string& name, const Tensor& t) {
  const std::string path = dir + "/" + file;
  st::save(path, {{name, t}});
  return path;
}

void expect_features(const std::string& out_path, const st::File& ref, const std::string& prefix, bool logits,
                     const std::string& label) {
  const st::File out = st::File::open(out_path);
  WorstError worst{label, 0.0, {}};
  std::vector<std::pair<std::string, std::string>> pairs = {{"image_features", prefix + "image_features"},
                                                            {"text_features", prefix + "text_features"}};
  if (logits) pairs.emplace_back("logits_per_image", prefix + "logits_per_image");
  CHECK(out.contains("logits_per_image") == logits);
  for (const auto& [ours, theirs] : pairs) {
    INFO(label << ": " << ours);
    REQUIRE(out.contains(ours));
    REQUIRE(out.get(ours).shape() == ref.get(theirs).shape());
    const double e = rel_err(out.get(ours), ref.get(theirs));
    worst.add(ours, e);
    CHECK_MESSAGE(e <= kForwardTol, label << ": " << ours << " rel err " << e);
  }
}

}  // namespace

TEST_CASE("clipcu embed: golden ViT and ResNet checkpoints with --pixels and --tokens") {
  for (const std::string tag : {"clip_vit_tiny", "clip_rn_tiny"}) {
    const std::string dir = temp_dir("embed_" + tag);
    const st::File& io = golden(tag + ".io.safetensors");
    const std::string pixels = write_tensor(dir, "pixels.safetensors", "pixels", io.get("input.images"));
    const std::string tokens = write_tensor(dir, "tokens.safetensors", "tokens", io.get("input.text"));
    const std::string common = " --config " + golden_path(tag + ".config.json") + " --weights " +
                               golden_path(tag + ".weights.safetensors") + " --pixels " + pixels + " --tokens " + tokens;
    Run r = embed(common + " --out " + dir + "/out.safetensors");
    INFO(r.output);
    REQUIRE(r.status == 0);
    expect_features(dir + "/out.safetensors", io, "eval.", true, tag + " via clipcu embed");
    // in chunks of 2 rows (5 = 2 + 2 + 1): the same numbers
    r = embed(common + " --batch-size 2 --out " + dir + "/out2.safetensors");
    REQUIRE(r.status == 0);
    const st::File a = st::File::open(dir + "/out.safetensors"), b = st::File::open(dir + "/out2.safetensors");
    for (const char* n : {"image_features", "text_features", "logits_per_image"}) CHECK(rel_err(b.get(n), a.get(n)) < 1e-6);
  }
}

TEST_CASE("clipcu embed: a HuggingFace directory, no --config needed") {
  const std::string dir = temp_dir("embed_hf");
  const st::File& io = golden("hf/hf_clip_tiny.io.safetensors");
  const std::string pixels = write_tensor(dir, "pixels.safetensors", "pixels", io.get("input.pixel_values"));
  const std::string tokens = write_tensor(dir, "tokens.safetensors", "tokens", io.get("input.input_ids"));
  Run r = embed("--weights " + golden_path("hf/hf_clip_tiny") + " --pixels " + pixels + " --tokens " + tokens +
                " --out " + dir + "/out.safetensors");
  INFO(r.output);
  REQUIRE(r.status == 0);
  expect_features(dir + "/out.safetensors", io, "", true, "hf_clip_tiny via clipcu embed");
}

TEST_CASE("clipcu embed: one tower at a time, one image as [3, R, R], short token rows") {
  const std::string dir = temp_dir("embed_single");
  const st::File& io = golden("clip_vit_tiny.io.safetensors");
  const std::string weights = " --config " + golden_path("clip_vit_tiny.config.json") + " --weights " +
                              golden_path("clip_vit_tiny.weights.safetensors");
  const Tensor images = io.get("input.images");
  const std::string one = write_tensor(dir, "one.safetensors", "pixels", images.rows(2, 1).view({3, 32, 32}));
  Run r = embed(weights + " --pixels " + one + " --out " + dir + "/img.safetensors");
  INFO(r.output);
  REQUIRE(r.status == 0);
  st::File out = st::File::open(dir + "/img.safetensors");
  CHECK(!out.contains("text_features"));
  CHECK(!out.contains("logits_per_image"));
  check_close(out.get("image_features"), io.get("eval.image_features").rows(2, 1), kForwardTol, "image row 2 alone");
  // the first text row ends at position 2: its first 3 tokens, I32, give the same features
  const Tensor text = io.get("input.text");
  const std::vector<int64_t> ids = text.to_i64_vector();
  REQUIRE(ids[2] == 63);
  const std::string short_tokens =
      write_tensor(dir, "short.safetensors", "tokens", Tensor::from_ints({ids[0], ids[1], ids[2]}, {1, 3}, DType::I32));
  r = embed(weights + " --tokens " + short_tokens + " --out " + dir + "/txt.safetensors");
  REQUIRE(r.status == 0);
  out = st::File::open(dir + "/txt.safetensors");
  CHECK(!out.contains("image_features"));
  check_close(out.get("text_features"), io.get("eval.text_features").rows(0, 1), kForwardTol, "text row 0, 3 tokens");
}

TEST_CASE("clipcu embed: --image and --text through CLIP's preprocessing and tokenizer") {
  const std::string dir = temp_dir("embed_files");
  // --image: the ResNet golden runs at 64 px, the size of the preprocessing golden's tensors
  const st::File& pre = golden("preprocess.safetensors");
  const std::string rn = " --config " + golden_path("clip_rn_tiny.config.json") + " --weights " +
                         golden_path("clip_rn_tiny.weights.safetensors");
  const Tensor chw = ops::concat({pre.get("chelsea.64.chw").view({1, 3, 64, 64}), pre.get("rocket.64.chw").view({1, 3, 64, 64})}, 0);
  const std::string pixels = write_tensor(dir, "pixels.safetensors", "pixels", chw);
  Run r = embed(rn + " --image " + golden_path("images/chelsea.png") + " --image " + golden_path("images/rocket.jpg") +
                " --out " + dir + "/files.safetensors");
  INFO(r.output);
  REQUIRE(r.status == 0);
  r = embed(rn + " --pixels " + pixels + " --out " + dir + "/tensors.safetensors");
  REQUIRE(r.status == 0);
  check_close(st::File::open(dir + "/files.safetensors").get("image_features"),
              st::File::open(dir + "/tensors.safetensors").get("image_features"), kForwardTol,
              "--image files vs the reference preprocessing's tensors");

  // --text needs CLIP's vocabulary (49,408 ids, context 77): a small random model of that shape,
  // saved with its config in the metadata
  const models::ModelConfig cfg = models::parse_config(nlohmann::json::parse(R"({
    "embed_dim": 16, "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}})"),
                                                       "vocab-sized test model");
  const std::string weights = dir + "/vocab_model.safetensors";
  models::save_clip(*models::make_clip(cfg, 3), weights);
  std::vector<int64_t> ids;
  std::ifstream cases(golden_path("tokenizer_cases.jsonl"));
  std::string line, text;
  for (int i = 0; i < 2 && std::getline(cases, line); ++i) {  // "a photo of a cat", "A Photo Of A CAT."
    const nlohmann::json c = nlohmann::json::parse(line);
    const std::vector<int64_t> row = c.at("context77").get<std::vector<int64_t>>();
    ids.insert(ids.end(), row.begin(), row.end());
    if (i == 0) text = c.at("text").get<std::string>();
  }
  const std::string tokens = write_tensor(dir, "tokens.safetensors", "tokens", Tensor::from_ints(ids, {2, 77}));
  r = embed("--weights " + weights + " --vocab " + vocab_path() + " --text '" + text + "' --text 'A Photo Of A CAT.'" +
            " --out " + dir + "/text.safetensors");
  INFO(r.output);
  REQUIRE(r.status == 0);
  r = embed("--weights " + weights + " --tokens " + tokens + " --out " + dir + "/ids.safetensors");
  REQUIRE(r.status == 0);
  check_close(st::File::open(dir + "/text.safetensors").get("text_features"),
              st::File::open(dir + "/ids.safetensors").get("text_features"), 0.0, "--text vs the reference token ids");
  // the vocabulary also comes from $CLIPCU_VOCAB, and its absence is a clear error
  r.status = run_command("CLIPCU_VOCAB=" + vocab_path() + " " + clipcu_binary() + " embed --device cpu --weights " + weights +
                             " --text 'a dog' --out " + dir + "/env.safetensors",
                         &r.output);
  CHECK_MESSAGE(r.status == 0, r.output);
  Run no_vocab;
  no_vocab.status = run_command("env -u CLIPCU_VOCAB " + clipcu_binary() + " embed --device cpu --weights " + weights +
                                    " --text 'a dog' --out " + dir + "/none.safetensors",
                                &no_vocab.output);
  CHECK(no_vocab.status == 1);
  CHECK_MESSAGE(no_vocab.output.find("CLIPCU_VOCAB") != std::string::npos, no_vocab.output);
}

TEST_CASE("clipcu embed: bad inputs exit with 1 and a message naming the problem") {
  const std::string dir = temp_dir("embed_errors");
  const std::string vit = " --config " + golden_path("clip_vit_tiny.config.json") + " --weights " +
                          golden_path("clip_vit_tiny.weights.safetensors");
  const std::string out = " --out " + dir + "/out.safetensors";
  auto expect_failure = [](const Run& r, const std::string& message) {
    INFO(r.output);
    CHECK(r.status != 0);
    CHECK_MESSAGE(r.output.find(message) != std::string::npos, "expected '" << message << "' in: " << r.output);
  };
  expect_failure(embed(vit + out), "nothing to embed");
  const std::string big = write_tensor(dir, "big.safetensors", "pixels", Tensor::zeros({2, 3, 64, 64}));
  expect_failure(embed(vit + " --pixels " + big + out), "the model takes [N, 3, 32, 32]");
  const std::string misnamed = write_tensor(dir, "misnamed.safetensors", "images", Tensor::zeros({2, 3, 32, 32}));
  expect_failure(embed(vit + " --pixels " + misnamed + out), "no tensor named 'pixels'");
  const std::string float_ids = write_tensor(dir, "float_ids.safetensors", "tokens", Tensor::zeros({2, 16}));
  expect_failure(embed(vit + " --tokens " + float_ids + out), "'tokens' must be I64 or I32");
  const std::string big_ids = write_tensor(dir, "big_ids.safetensors", "tokens", Tensor::from_ints({62, 70, 63}, {1, 3}));
  expect_failure(embed(vit + " --tokens " + big_ids + out), "token id 70 at [0, 1] is outside the vocabulary");
  expect_failure(embed("--weights " + golden_path("clip_vit_tiny.weights.safetensors") + " --tokens " + big_ids + out),
                 "no model config");
  expect_failure(embed("--config " + golden_path("clip_rn_tiny.config.json") + " --weights " +
                       golden_path("clip_vit_tiny.weights.safetensors") + " --tokens " + big_ids + out),
                 "missing tensors");
  expect_failure(embed(vit + " --image " + dir + "/absent.png" + out), "absent.png");
  expect_failure(embed(vit + " --pixels " + big + " --device tpu" + out), "tpu");
  expect_failure(embed(vit), "--out is required");
}
