// `clipcu train` end to end through the command line: learning on tiny data, parity with the
// reference AdamW steps from pretrained weights, bit-exact resume, NaN skipping, checkpoint errors.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/train/checkpoint.h"
#include "tests/model_golden.h"

using namespace clipcu;
namespace fs = std::filesystem;

namespace {

std::string q(const std::string& s) { return "'" + s + "'"; }

// Runs clipcu with arguments; returns the exit status and keeps the output for messages.
int run_clipcu(const std::string& args, std::string* out = nullptr) {
  std::string o;
  int rc = test::run_command(test::clipcu_binary() + " " + args, &o);
  if (out) *out = o;
  return rc;
}

// A small shapes data set and a BPE vocabulary learnt from it, made once per process.
struct TinyData {
  std::string dir, train_csv, val_csv, vocab;
};
const TinyData& tiny_data() {
  static TinyData d = [] {
    TinyData t;
    t.dir = test::temp_dir("train_cli_data");
    std::string out;
    REQUIRE_MESSAGE(run_clipcu("make-shapes --out " + q(t.dir) + " --n 1100 --size 32 --seed 3", &out) == 0, out);
    t.train_csv = t.dir + "/train.csv";
    t.val_csv = t.dir + "/val.csv";
    // captions, one per line, for the BPE trainer
    std::ifstream in(t.train_csv);
    std::ofstream caps(t.dir + "/captions.txt");
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) caps << line.substr(line.find('\t') + 1, line.rfind('\t') - line.find('\t') - 1) << "\n";
    caps.close();
    t.vocab = t.dir + "/vocab.txt.gz";
    REQUIRE_MESSAGE(run_clipcu("bpe-train --captions " + q(t.dir + "/captions.txt") + " --vocab-size 700 --out " + q(t.vocab), &out) == 0,
                    out);
    std::ofstream cfg(t.dir + "/model.json");
    cfg << R"({"embed_dim": 32, "quick_gelu": true,
      "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8, "head_width": 32},
      "text_cfg": {"context_length": 16, "vocab_size": 700, "width": 64, "heads": 2, "layers": 1}})";
    return t;
  }();
  return d;
}

std::string base_args(const TinyData& d, const std::string& logs, const std::string& name) {
  // --device cpu: these are the CPU oracle's tests (on a GPU machine auto would pick the GPU;
  // tests/test_cuda_models.cpp runs the trainer there)
  return "train --device cpu --model " + q(d.dir + "/model.json") + " --train-data " + q(d.train_csv) + " --vocab " + q(d.vocab) +
         " --batch-size 32 --lr 2e-3 --warmup 5 --workers 2 --seed 5 --quiet --logs " + q(logs) + " --name " + name;
}

std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::vector<nlohmann::json> v;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) v.push_back(nlohmann::json::parse(line));
  return v;
}

}  // namespace

TEST_CASE("train on tiny shapes data: the loss falls well below ln(batch), zero-shot far above chance") {
  const TinyData& d = tiny_data();
  std::string logs = test::temp_dir("train_cli_learn"), out;
  int rc = run_clipcu(base_args(d, logs, "run") + " --steps 300 --val-data " + q(d.val_csv) + " --log-every-n-steps 10", &out);
  REQUIRE_MESSAGE(rc == 0, out);
  auto lines = read_jsonl(logs + "/run/metrics.jsonl");
  double first = NAN, last = NAN, zs = NAN;
  for (auto& j : lines) {
    if (j["kind"] == "train") {
      if (std::isnan(first)) first = j["loss"].get<double>();
      last = j["loss"].get<double>();
    }
    if (j["kind"] == "val") zs = j["zeroshot_top1"].get<double>();
  }
  MESSAGE("loss first window " << first << ", last " << last << " (ln 32 = " << std::log(32.0) << "), zero-shot top-1 "
                               << zs << " (chance " << 1.0 / 30 << ")");
  CHECK(last < 0.6 * std::log(32.0));
  CHECK(zs > 4.0 / 30);  // four times chance
  CHECK(fs::exists(logs + "/run/weights.safetensors"));
  CHECK(fs::exists(logs + "/run/params.json"));
  // the weights load in `embed`-style consumers: evaluate them through the eval command
  rc = run_clipcu("eval --device cpu --weights " + q(logs + "/run/weights.safetensors") + " --data " + q(d.val_csv) + " --vocab " +
                  q(d.vocab) + " --out " + q(logs + "/eval.json"),
              &out);
  REQUIRE_MESSAGE(rc == 0, out);
  std::ifstream ej(logs + "/eval.json");
  nlohmann::json e = nlohmann::json::parse(ej);
  CHECK(e["zeroshot_top1"].get<double>() == doctest::Approx(zs).epsilon(1e-6));
  // and the curves plot
  rc = run_clipcu("plot " + q(logs + "/run") + " --out " + q(logs + "/loss.png"), &out);
  CHECK_MESSAGE(rc == 0, out);
  CHECK(fs::exists(logs + "/loss.png"));
}

TEST_CASE("resume: a run stopped at step 4 and resumed ends bit for bit where an uninterrupted run ends") {
  const TinyData& d = tiny_data();
  std::string logs = test::temp_dir("train_cli_resume"), out;
  REQUIRE_MESSAGE(run_clipcu(base_args(d, logs, "full") + " --steps 9", &out) == 0, out);
  // stopped after 4 steps (a checkpoint is written), then resumed to the end
  REQUIRE_MESSAGE(run_clipcu(base_args(d, logs, "split") + " --steps 9 --debug-stop-after 4", &out) == 0, out);
  CHECK_FALSE(fs::exists(logs + "/split/weights.safetensors"));
  REQUIRE_MESSAGE(run_clipcu(base_args(d, logs, "split") + " --steps 9 --resume latest", &out) == 0, out);
  st::File a = st::File::open(logs + "/full/weights.safetensors");
  st::File b = st::File::open(logs + "/split/weights.safetensors");
  REQUIRE(a.names() == b.names());
  int64_t differing = 0;
  for (const auto& n : a.names()) {
    Tensor x = a.get(n), y = b.get(n);
    REQUIRE(x.nbytes() == y.nbytes());
    differing += std::memcmp(x.raw(), y.raw(), x.nbytes()) != 0;
  }
  CHECK_MESSAGE(differing == 0, differing << " tensors differ between the resumed and the uninterrupted run");
}

TEST_CASE("non-finite steps are skipped and counted, too many in a row stop with the last checkpoint intact") {
  const TinyData& d = tiny_data();
  std::string logs = test::temp_dir("train_cli_nan"), out;
  REQUIRE_MESSAGE(run_clipcu(base_args(d, logs, "skip") + " --steps 6 --debug-inject-nan 2,3", &out) == 0, out);
  CHECK(out.find("skipped 2") != std::string::npos);
  int skips = 0;
  for (auto& j : read_jsonl(logs + "/skip/metrics.jsonl")) skips += j["kind"] == "skip";
  CHECK(skips == 2);
  // three in a row with a limit of 3: an error, and the checkpoint of step 2 still loads
  int rc = run_clipcu(base_args(d, logs, "stop") + " --steps 10 --save-every-n-steps 2 --max-consecutive-skips 3 "
                                                 "--debug-inject-nan 3,4,5",
                  &out);
  CHECK(rc != 0);
  CHECK_MESSAGE(out.find("3 consecutive steps had a non-finite loss") != std::string::npos, out);
  auto c = train::CheckpointManager::load_latest(logs + "/stop/checkpoints");
  REQUIRE(c.has_value());
  CHECK(c->step == 2);
}

TEST_CASE("a truncated checkpoint is a clear error, the previous one still resumes") {
  const TinyData& d = tiny_data();
  std::string logs = test::temp_dir("train_cli_corrupt"), out;
  REQUIRE_MESSAGE(run_clipcu(base_args(d, logs, "run") + " --steps 4 --save-every-n-steps 2", &out) == 0, out);
  std::string ck = logs + "/run/checkpoints/ckpt-00000004.safetensors";
  REQUIRE(fs::exists(ck));
  fs::resize_file(ck, fs::file_size(ck) / 2);
  int rc = run_clipcu(base_args(d, logs, "run") + " --steps 6 --resume " + q(ck), &out);
  CHECK(rc != 0);
  CHECK_MESSAGE(out.find("ckpt-00000004") != std::string::npos, out);
  CHECK_MESSAGE(out.find("truncated") != std::string::npos, out);
  rc = run_clipcu(base_args(d, logs, "run") + " --steps 6 --resume latest", &out);
  CHECK_MESSAGE(rc == 0, out);
  CHECK_MESSAGE(out.find("skipping unusable checkpoint") != std::string::npos, out);
}

TEST_CASE("Ctrl-C saves a checkpoint and exits cleanly, and the run resumes from it") {
  const TinyData& d = tiny_data();
  std::string logs = test::temp_dir("train_cli_sigint"), out;
  // start a long run, wait until it has logged a step, interrupt it like Ctrl-C does
  std::string cmd = "(";
  cmd.append(test::clipcu_binary()).append(" ").append(base_args(d, logs, "run"));
  cmd.append(" --steps 100000 --log-every-n-steps 1 & pid=$!; for i in $(seq 1 600); do [ -s ");
  cmd.append(q(logs + "/run/metrics.jsonl")).append(" ] && break; sleep 0.1; done; kill -INT $pid; wait $pid; echo exit=$?)");
  test::run_command(cmd, &out);
  CHECK_MESSAGE(out.find("exit=130") != std::string::npos, out);
  CHECK_MESSAGE(out.find("interrupted at step") != std::string::npos, out);
  auto c = train::CheckpointManager::load_latest(logs + "/run/checkpoints");
  REQUIRE(c.has_value());
  CHECK(c->step >= 1);
  int64_t at = c->step;
  REQUIRE_MESSAGE(run_clipcu(base_args(d, logs, "run") + " --steps " + std::to_string(at + 2) + " --resume latest", &out) == 0,
                  out);
  CHECK(fs::exists(logs + "/run/weights.safetensors"));
}

// From pretrained weights, no augmentation, constant learning rate: the command's steps are the
// reference's (OpenAI's model + torch.optim.AdamW with open_clip's exclusions, the golden files).
static void check_cli_parity(const std::string& tag) {
  const st::File& io = test::golden(tag + ".io.safetensors");
  std::string dir = test::temp_dir("train_cli_parity_" + tag), out;
  st::save(dir + "/batch.safetensors", {{"images", io.get("input.images")}, {"tokens", io.get("input.text")}});
  std::string args = "train --device cpu --model " + q(test::golden_path(tag + ".config.json")) + " --pretrained " +
                     q(test::golden_path(tag + ".weights.safetensors")) + " --train-data " + q(dir + "/batch.safetensors") +
                     " --batch-size 5 --steps 3 --lr 5e-4 --lr-scheduler const --warmup 0 --wd 0.2 --beta1 0.9"
                     " --beta2 0.98 --eps 1e-6 --no-augment --log-every-n-steps 1 --quiet --logs " + q(dir) + " --name run";
  REQUIRE_MESSAGE(run_clipcu(args, &out) == 0, out);
  auto lines = read_jsonl(dir + "/run/metrics.jsonl");
  std::vector<double> losses;
  for (auto& j : lines)
    if (j["kind"] == "train") losses.push_back(j["loss"].get<double>());
  REQUIRE(losses.size() == 3);
  for (int s = 0; s < 3; ++s) {
    double ref = io.get("train.step" + std::to_string(s) + ".loss").item();
    CHECK_MESSAGE(std::fabs(losses[size_t(s)] - ref) <= 1e-5 * std::fabs(ref),
                  tag << " step " << s << " loss " << losses[size_t(s)] << " vs " << ref);
  }
  // The bound for elements whose gradient is below Adam's eps needs our step-0 gradient: the
  // library's, computed here in-process on the same batch (the command runs the same code).
  std::map<std::string, Tensor> grad0;
  {
    auto ref_model = test::load_golden_model(tag);
    ref_model->train();
    tape().clear();
    auto lo = ref_model->loss(ref_model->encode_image(io.get("input.images", DType::F32)),
                              ref_model->encode_text(io.get("input.text")));
    backward(lo.loss);
    for (const auto& [name, p] : ref_model->named_parameters()) grad0[name] = p.grad().clone();
  }
  const st::File& w0 = test::golden(tag + ".weights.safetensors");
  optim::AdamWConfig cfg;  // lr 5e-4, betas 0.9/0.98, eps 1e-6, wd 0.2: the command line above
  auto model = models::load_clip(dir + "/run/weights.safetensors");
  test::WorstError step3{tag + " CLI: parameters after 3 steps (1 = tolerance)", 0.0, {}};
  test::WorstError ill{tag + " CLI: elements with |gradient| < 10 eps (1 = bound)", 0.0, {}};
  for (const auto& [name, p] : model->named_parameters())
    test::expect_param_close(name, p, io.get("step3." + name), w0.get(name, DType::F32), io.get("grad." + name),
                             grad0.at(name), 3, cfg, step3, ill);
  for (const auto& [name, b] : model->named_buffers())
    if (name.find("running") != std::string::npos)
      test::expect_close(b, io.get("step3.buffer." + name), test::kForwardTol, "step3.buffer." + name, step3);
}

TEST_CASE("train CLI from pretrained ViT weights matches the reference's 3 AdamW steps") { check_cli_parity("clip_vit_tiny"); }
TEST_CASE("train CLI from pretrained ResNet weights matches the reference's 3 AdamW steps") { check_cli_parity("clip_rn_tiny"); }
