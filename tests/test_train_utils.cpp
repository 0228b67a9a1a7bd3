// Trainer building blocks: learning-rate schedules, evaluation metrics on hand-made embeddings,
// checkpoint files (atomic, pruned, corruption detected).
#include <cmath>
#include <filesystem>
#include <fstream>

#include "engine/optim/schedule.h"
#include "engine/train/checkpoint.h"
#include "engine/train/evaluate.h"
#include "engine/train/metrics.h"
#include "engine/train/progress.h"
#include "tests/support.h"

using namespace clipcu;

TEST_CASE("learning-rate schedules follow open_clip's formulas") {
  optim::ScheduleConfig c;
  c.base_lr = 1.0;
  c.warmup = 10;
  c.total_steps = 110;
  CHECK(optim::learning_rate(c, 0) == doctest::Approx(0.1));
  CHECK(optim::learning_rate(c, 9) == doctest::Approx(1.0));
  CHECK(optim::learning_rate(c, 10) == doctest::Approx(1.0));
  CHECK(optim::learning_rate(c, 60) == doctest::Approx(0.5));
  CHECK(optim::learning_rate(c, 110) == doctest::Approx(0.0));
  c.kind = optim::LrSchedule::Const;
  CHECK(optim::learning_rate(c, 100) == 1.0);
  c.kind = optim::LrSchedule::ConstCooldown;
  c.cooldown_steps = 20;
  CHECK(optim::learning_rate(c, 89) == 1.0);
  CHECK(optim::learning_rate(c, 100) == doctest::Approx(0.5));
  CHECK_THROWS_AS(optim::parse_lr_schedule("linear"), Error);
}

TEST_CASE("zero-shot and retrieval metrics on hand-made embeddings") {
  // 3 classes along the axes; images: two correct, one confused with class 2
  Tensor classes = Tensor::from_vector(std::vector<float>{1, 0, 0, 0, 1, 0, 0, 0, 1}, {3, 3});
  Tensor images = Tensor::from_vector(std::vector<float>{2, 0.1f, 0, 0, 3, 0.5f, 0, 0.2f, 0.1f}, {3, 3});
  auto r = train::zero_shot(images, classes, {0, 1, 0});
  CHECK(r.top1 == doctest::Approx(2.0 / 3));
  CHECK(r.top5 == 1.0);
  CHECK(r.per_class_top1[0] == doctest::Approx(0.5));
  // prompt ensembling: 2 prompts per class, averaged then normalized
  Tensor prompts = Tensor::from_vector(std::vector<float>{1, 1, 0, 1, -1, 0, 0, 0, 5, 0, 0, 1}, {4, 3});
  Tensor ce = train::class_embeddings(prompts, 2, 2);
  CHECK(ce.to_f32_vector()[0] == doctest::Approx(1.0));
  CHECK(ce.to_f32_vector()[1] == doctest::Approx(0.0));
  CHECK(ce.to_f32_vector()[5] == doctest::Approx(1.0));
  // retrieval: text 1 and 2 swapped relative to the images
  Tensor img = Tensor::from_vector(std::vector<float>{1, 0, 0, 0, 1, 0, 0, 0, 1}, {3, 3});
  Tensor txt = Tensor::from_vector(std::vector<float>{1, 0, 0, 0, 0.1f, 1, 0, 1, 0.1f}, {3, 3});
  auto rr = train::retrieval(img, txt);
  CHECK(rr.i2t_r1 == doctest::Approx(1.0 / 3));
  CHECK(rr.i2t_r5 == 1.0);
  CHECK(rr.t2i_r1 == doctest::Approx(1.0 / 3));
  CHECK(rr.i2t_mean_rank == doctest::Approx((1 + 2 + 2) / 3.0));
  CHECK(rr.i2t_median_rank == 2.0);
  CHECK_THROWS_AS(train::zero_shot(images, classes, {0, 1, 7}), Error);
  CHECK_THROWS_AS(train::retrieval(img, txt.rows(0, 2)), Error);
}

TEST_CASE("checkpoints: atomic save, pruning, corruption detected, previous one still loads") {
  std::string dir = test::temp_dir("ckpt");
  train::CheckpointManager m(dir, 2);
  for (int64_t s : {10, 20, 30}) {
    nlohmann::json meta;
    meta["loss"] = double(s) / 10;
    m.save(s, {{"w", Tensor::full({4}, double(s))}}, meta);
  }
  auto all = m.list();
  REQUIRE(all.size() == 2);  // 10 pruned
  CHECK(all[0].find("ckpt-00000020.json") != std::string::npos);
  auto c = train::CheckpointManager::load(all[1]);
  CHECK(c.step == 30);
  CHECK(c.meta["loss"].get<double>() == 3.0);
  CHECK(c.tensors.get("w").to_f32_vector()[0] == 30.0f);
  // truncate the newest tensor file: a clear error naming it; load_latest falls back to step 20
  std::string w30 = dir + "/ckpt-00000030.safetensors";
  std::filesystem::resize_file(w30, std::filesystem::file_size(w30) - 3);
  CHECK_THROWS_WITH_AS(train::CheckpointManager::load(all[1]), doctest::Contains("truncated"), Error);
  auto latest = train::CheckpointManager::load_latest(dir);
  REQUIRE(latest.has_value());
  CHECK(latest->step == 20);
  // flip a byte in step 20: the CRC catches it
  {
    std::fstream f(dir + "/ckpt-00000020.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-1, std::ios::end);
    f.put('\x7f');
  }
  CHECK_THROWS_WITH_AS(train::CheckpointManager::load(all[0]), doctest::Contains("CRC-32"), Error);
  CHECK_FALSE(train::CheckpointManager::load_latest(dir).has_value());
  std::ofstream(dir + "/ckpt-00000040.json") << "{not json";
  CHECK_THROWS_WITH_AS(train::CheckpointManager::load(dir + "/ckpt-00000040.json"), doctest::Contains("malformed"),
                       Error);
}

TEST_CASE("zero-shot prompts take the class name and the right article") {
  CHECK(train::fill_prompt("a photo of a {}.", "red circle") == "a photo of a red circle.");
  CHECK(train::fill_prompt("a photo of a {}.", "orange star") == "a photo of an orange star.");
  CHECK(train::fill_prompt("a {}", "orange star") == "an orange star");
  CHECK(train::fill_prompt("{} in the picture", "orange star") == "orange star in the picture");
  CHECK(train::fill_prompt("there is a {}", "ice cube") == "there is an ice cube");
  CHECK_THROWS_AS(train::fill_prompt("no placeholder", "x"), Error);
}

TEST_CASE("durations format for progress lines") {
  CHECK(train::format_duration(5) == "5s");
  CHECK(train::format_duration(185) == "3m05s");
  CHECK(train::format_duration(3725) == "1h02m");
  CHECK(train::format_duration(NAN) == "?");
}
