// The synthetic shapes generator: determinism by seed, attributes and captions, colours that a
// model can tell apart from the background, the class list and templates, and make_shapes'
// files (CSV and tar shards) with a disjoint held-out split.
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "engine/data/dataset.h"
#include "engine/data/shapes.h"
#include "engine/data/wds.h"
#include "tests/support.h"

using namespace clipcu;
using namespace clipcu::data;
namespace fs = std::filesystem;

namespace {
int spread(const uint8_t* p) { return std::max({p[0], p[1], p[2]}) - std::min({p[0], p[1], p[2]}); }
}  // namespace

TEST_CASE("shapes are a pure function of (seed, index)") {
  ShapesGenerator a(64, 7), b(64, 7), c(64, 8);
  for (uint64_t i : {0ull, 1ull, 17ull, 123456789ull}) {
    CHECK(a.render(i).pixels == b.render(i).pixels);
    CHECK(a.caption(i) == b.caption(i));
    CHECK(a.render(i).pixels != c.render(i).pixels);
  }
  CHECK(a.render(3).pixels != a.render(4).pixels);
  // a pinned sample: the same attributes on every machine (integer draws from the seeded generator)
  const ShapeSpec s = ShapesGenerator(64, 0).spec(0);
  std::printf("shapes(64, seed 0) #0: %s, rgb (%d, %d, %d), label %d\n", s.caption.c_str(), s.rgb[0], s.rgb[1], s.rgb[2], s.label);
  CHECK(s.label == s.color * 5 + s.shape);
  CHECK(s.caption == "a photo of a yellow square");
  CHECK((s.rgb[0] == 249 && s.rgb[1] == 213 && s.rgb[2] == 35));
  CHECK(s.label == 16);
  // other sizes render too, including odd ones
  for (int S : {8, 31, 32, 224}) {
    Image img = ShapesGenerator(S, 1).render(5);
    CHECK(img.width == S);
    CHECK(img.pixels.size() == size_t(S * S * 3));
  }
  CHECK_THROWS_AS(ShapesGenerator(4, 0), Error);
}

TEST_CASE("attributes: every shape, colour, size and position occurs, captions name them") {
  ShapesGenerator g(48, 3);
  std::set<int> shapes, colors, sizes, positions, labels, templates;
  for (uint64_t i = 0; i < 1500; ++i) {
    const ShapeSpec s = g.spec(i);
    shapes.insert(s.shape);
    colors.insert(s.color);
    sizes.insert(s.size);
    positions.insert(s.position);
    labels.insert(s.label);
    templates.insert(s.template_id);
    const std::string& cap = s.caption;
    CHECK(cap.find(ShapesGenerator::colors()[size_t(s.color)]) != std::string::npos);
    CHECK(cap.find(ShapesGenerator::shapes()[size_t(s.shape)]) != std::string::npos);
    CHECK(cap.find("{") == std::string::npos);
    CHECK(cap.find("a orange") == std::string::npos);  // "an orange"
    if (s.template_id == 0) {
      CHECK(cap == "a " + ShapesGenerator::sizes()[size_t(s.size)] + " " +
                       ShapesGenerator::colors()[size_t(s.color)] + " " + ShapesGenerator::shapes()[size_t(s.shape)] +
                       " in the " + ShapesGenerator::positions()[size_t(s.position)]);
    }
  }
  CHECK(shapes.size() == 5);
  CHECK(colors.size() == 6);
  CHECK(sizes.size() == 2);
  CHECK(positions.size() == 5);
  CHECK(labels.size() == 30);
  CHECK(templates.size() == ShapesGenerator::caption_templates().size());

  auto classes = ShapesGenerator::class_names();
  REQUIRE(classes.size() == 30);
  CHECK(classes[0] == "red circle");
  CHECK(classes[29] == "orange cross");
  CHECK(std::set<std::string>(classes.begin(), classes.end()).size() == 30);
  for (const auto& t : ShapesGenerator::prompt_templates()) CHECK(t.find("{}") != std::string::npos);
}

TEST_CASE("the shape has its colour at its centre, the background is pale and never a shape colour") {
  for (int S : {32, 64}) {
    ShapesGenerator g(S, 11);
    for (uint64_t i = 0; i < 200; ++i) {
      const ShapeSpec s = g.spec(i);
      const Image img = g.render(i);
      // the centre of every shape kind is inside it: exactly the shape colour there
      const int cx = int(s.cx), cy = int(s.cy);
      const uint8_t* c = img.row(cy) + size_t(cx) * 3;
      CHECK_MESSAGE((c[0] == s.rgb[0] && c[1] == s.rgb[1] && c[2] == s.rgb[2]), "sample " << i << " " << s.caption);
      CHECK(spread(s.rgb) >= 100);
      // the image corner farthest from the shape is background: pale and unsaturated
      const int fx = s.cx < S / 2.0 ? S - 1 : 0, fy = s.cy < S / 2.0 ? S - 1 : 0;
      const uint8_t* b = img.row(fy) + size_t(fx) * 3;
      CHECK(spread(b) < 60);
      CHECK(std::min({b[0], b[1], b[2]}) >= 130);
    }
  }
}

TEST_CASE("the in-memory dataset streams a disjoint index range") {
  ShapesDataset train(32, 5, 0, 90), val(32, 5, 90, 10);
  CHECK(train.size() == 90);
  CHECK(val.size() == 10);
  ShapesGenerator g(32, 5);
  CHECK(val.load_image(0).pixels == g.render(90).pixels);
  CHECK(val.caption(3) == g.caption(93));
  CHECK(val.label(3) == g.spec(93).label);
  CHECK(val.name(0) != train.name(0));
  CHECK_THROWS_AS(val.load_image(10), Error);
}

TEST_CASE("make_shapes writes CSV splits, classes and templates, the held-out split is disjoint") {
  const std::string dir = test::temp_dir("shapes_csv");
  MakeShapesOptions o;
  o.out_dir = dir;
  o.n = 50;
  o.seed = 3;
  o.image_size = 32;
  o.threads = 2;
  MakeShapesResult r = make_shapes(o);
  CHECK(r.n_train == 45);
  CHECK(r.n_val == 5);
  CHECK(r.train_spec == dir + "/train.csv");
  CsvDataset train(r.train_spec), val(r.val_spec);
  REQUIRE(train.size() == 45);
  REQUIRE(val.size() == 5);
  ShapesGenerator g(32, 3);
  std::set<std::string> train_files, val_files;
  std::set<std::string> train_pixels;  // image bytes
  for (size_t i = 0; i < train.size(); ++i) {
    train_files.insert(train.name(i));
    const auto px = train.load_image(i).pixels;
    train_pixels.insert(std::string(px.begin(), px.end()));
    CHECK(train.caption(i) == g.caption(i));
    CHECK(train.label(i) == g.spec(i).label);
  }
  for (size_t i = 0; i < val.size(); ++i) {
    val_files.insert(val.name(i));
    Image img = val.load_image(i);
    CHECK(img.pixels == g.render(45 + i).pixels);  // PNG is lossless
    CHECK(train_pixels.count(std::string(img.pixels.begin(), img.pixels.end())) == 0);
    CHECK(train_files.count(val.name(i)) == 0);
  }
  CHECK(train_files.size() == 45);
  CHECK(val_files.size() == 5);
  std::ifstream cf(dir + "/classes.json"), tf(dir + "/templates.json"), inf(dir + "/shapes.json");
  auto classes = nlohmann::json::parse(cf);
  auto templates = nlohmann::json::parse(tf);
  auto info = nlohmann::json::parse(inf);
  CHECK(classes.get<std::vector<std::string>>() == ShapesGenerator::class_names());
  CHECK(templates.size() >= 4);
  CHECK(info.at("n_val").get<int>() == 5);
  // the same seed writes the same files
  const std::string dir2 = test::temp_dir("shapes_csv2");
  o.out_dir = dir2;
  make_shapes(o);
  CHECK(read_file_bytes(dir + "/val.csv") == read_file_bytes(dir2 + "/val.csv"));
  CHECK(read_file_bytes(dir + "/train/000007.png") == read_file_bytes(dir2 + "/train/000007.png"));
}

TEST_CASE("make_shapes writes tar shards that WebDataset reading accepts") {
  const std::string dir = test::temp_dir("shapes_wds");
  MakeShapesOptions o;
  o.out_dir = dir;
  o.n = 40;
  o.seed = 9;
  o.image_size = 24;
  o.format = "wds";
  o.shard_size = 16;
  o.val_fraction = 0.25;
  MakeShapesResult r = make_shapes(o);
  CHECK(r.n_train == 30);
  CHECK(r.n_val == 10);
  CHECK(r.train_spec == dir + "/train-{000000..000001}.tar");
  CHECK(r.val_spec == dir + "/val-000000.tar");
  WdsDataset train(r.train_spec), val(r.val_spec);
  REQUIRE(train.size() == 30);
  REQUIRE(val.size() == 10);
  CHECK(train.samples_in_memory() == 0);
  ShapesGenerator g(24, 9);
  CHECK(train.load_image(17).pixels == g.render(17).pixels);
  CHECK(train.caption(17) == g.caption(17));
  CHECK(train.label(17) == g.spec(17).label);
  CHECK(val.load_image(0).pixels == g.render(30).pixels);
  CHECK(fs::exists(dir + "/classes.json"));
  CHECK_THROWS_AS(
      [&] {
        MakeShapesOptions bad = o;
        bad.format = "zip";
        make_shapes(bad);
      }(),
      Error);
}
