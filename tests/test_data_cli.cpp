// The data commands end to end: `clipcu make-shapes` (CSV and tar shards) and `clipcu preprocess`
// (against the golden preprocessing), and their errors (exit code 1, the file named).
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/data/dataset.h"
#include "engine/data/shapes.h"
#include "engine/data/wds.h"
#include "tests/support.h"

using namespace clipcu;
using namespace clipcu::data;
namespace fs = std::filesystem;

TEST_CASE("clipcu make-shapes writes a dataset the readers accept") {
  const std::string dir = test::temp_dir("cli_shapes");
  std::string out;
  int rc = test::run_command(test::clipcu_binary() + " make-shapes --out " + dir + "/csv --n 30 --seed 4 --size 32", &out);
  INFO(out);
  REQUIRE(rc == 0);
  CHECK(out.find("27 training and 3 held-out") != std::string::npos);
  CsvDataset train(dir + "/csv/train.csv"), val(dir + "/csv/val.csv");
  CHECK(train.size() == 27);
  CHECK(val.size() == 3);
  CHECK(train.load_image(5).pixels == ShapesGenerator(32, 4).render(5).pixels);
  std::ifstream cf(dir + "/csv/classes.json");
  CHECK(nlohmann::json::parse(cf).size() == 30);
  CHECK(fs::exists(dir + "/csv/templates.json"));

  rc = test::run_command(test::clipcu_binary() + " make-shapes --out " + dir + "/wds --n 30 --seed 4 --size 32 --format wds --shard-size 10", &out);
  INFO(out);
  REQUIRE(rc == 0);
  WdsDataset shards(dir + "/wds/train-{000000..000002}.tar");
  CHECK(shards.size() == 27);
  CHECK(shards.caption(5) == train.caption(5));

  rc = test::run_command(test::clipcu_binary() + " make-shapes --out " + dir + "/bad --n 10 --format zip", &out);
  CHECK(rc != 0);
  CHECK(out.find("zip") != std::string::npos);
}

TEST_CASE("clipcu preprocess writes pixels [3, N, N] equal to the golden preprocessing") {
  const std::string dir = test::temp_dir("cli_preprocess");
  const st::File& g = test::golden("preprocess.safetensors");
  for (const char* stem : {"chelsea", "horse"}) {
    const std::string img = test::golden_path(std::string("images/") + stem + ".png");
    const std::string out_file = dir + "/" + stem + ".safetensors";
    std::string out;
    int rc = test::run_command(test::clipcu_binary() + " preprocess --size 64 " + img + " --out " + out_file, &out);
    INFO(out);
    REQUIRE(rc == 0);
    st::File f = st::File::open(out_file);
    Tensor px = f.get("pixels");
    CHECK(px.shape() == Shape{3, 64, 64});
    CHECK(px.dtype() == DType::F32);
    const double err = test::max_abs_err(px, g.get(std::string(stem) + ".64.chw"));
    std::printf("  clipcu preprocess %s at 64: max abs err vs golden %.2e\n", stem, err);
    CHECK(err <= 2e-2);
  }
  std::string out;
  int rc = test::run_command(test::clipcu_binary() + " preprocess --size 32 " + dir + "/missing.png --out " + dir + "/x.safetensors", &out);
  CHECK(rc == 1);
  CHECK(out.find(dir + "/missing.png") != std::string::npos);
  rc = test::run_command(test::clipcu_binary() + " preprocess --size 32 " + test::golden_path("README.md") + " --out " + dir + "/x.safetensors", &out);
  CHECK(rc == 1);
  CHECK(out.find("README.md") != std::string::npos);
  CHECK(out.find("unsupported") != std::string::npos);
}
