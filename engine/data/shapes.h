// A synthetic dataset for training and checking a tiny CLIP: one coloured shape per image on a
// light, noisy gradient background, captioned from its attributes.
//
//   shape    circle, square, triangle, star, cross          (5)
//   color    red, green, blue, yellow, purple, orange       (6: saturated; backgrounds are pale
//            greys with little saturation, so no background colour is ever a shape colour)
//   size     small, large                                  (radius 0.16 S or 0.26 S, +-6 %)
//   position top left, top right, bottom left, bottom right, center
//
// plus a little jitter (centre +-2 % of S, rotation +-12 degrees, colour +-12 per channel) so that
// no two images are alike. Edges are anti-aliased by 4x4 supersampling. Captions follow
// "a {size} {color} {shape} in the {position}" half of the time and a few other templates
// otherwise. Zero-shot classes are color x shape ("red circle"), label = color * 5 + shape.
//
// Everything is a pure function of (seed, index): sample i is the same on every machine and in
// every thread, so a trainer can stream samples without files (ShapesDataset), and a held-out
// split is simply a disjoint index range.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/data/dataset.h"

namespace clipcu::data {

struct ShapeSpec {
  int shape = 0, color = 0, size = 0, position = 0;
  int label = 0;        // color * num_shapes + shape
  int template_id = 0;  // which caption template
  double cx = 0, cy = 0, radius = 0, angle = 0;  // in pixels / radians
  uint8_t rgb[3] = {0, 0, 0};
  std::string caption;
};

class ShapesGenerator {
 public:
  explicit ShapesGenerator(int image_size = 64, uint64_t seed = 0);
  int image_size() const { return size_; }
  uint64_t seed() const { return seed_; }

  static const std::vector<std::string>& shapes();
  static const std::vector<std::string>& colors();
  static const std::vector<std::string>& sizes();
  static const std::vector<std::string>& positions();
  // The caption templates ({size}, {color}, {shape}, {position} placeholders); the first is the main one.
  static const std::vector<std::string>& caption_templates();
  // Zero-shot classes, color-major: "red circle", "red square", ..., "orange cross".
  static std::vector<std::string> class_names();
  // Zero-shot prompt templates with "{}" for the class name.
  static const std::vector<std::string>& prompt_templates();

  ShapeSpec spec(uint64_t index) const;
  std::string caption(uint64_t index) const { return spec(index).caption; }
  // Renders sample `index` as RGB [S, S, 3] into `rgb`.
  void render(uint64_t index, uint8_t* rgb) const;  // [S, S, 3]
  Image render(uint64_t index) const;

 private:
  int size_;
  uint64_t seed_;
};

// Samples [first, first + count) of a generator as a Dataset (no files).
class ShapesDataset : public Dataset {
 public:
  ShapesDataset(int image_size, uint64_t seed, uint64_t first, uint64_t count);
  size_t size() const override { return size_t(count_); }
  std::string name(size_t i) const override;
  std::string caption(size_t i) const override { return gen_.caption(first_ + i); }
  int64_t label(size_t i) const override { return gen_.spec(first_ + i).label; }
  Image load_image(size_t i, JpegDecoder jpeg = JpegDecoder::Auto) const override;
  std::string describe() const override;
  const ShapesGenerator& generator() const { return gen_; }

 private:
  ShapesGenerator gen_;
  uint64_t first_, count_;
};

// What `clipcu make-shapes` writes into `out_dir`:
//   csv: train/NNNNNN.png + train.csv, val/NNNNNN.png + val.csv (tab separated, open_clip's
//        default: filepath, title, label; paths relative to the CSV)
//   wds: train-NNNNNN.tar and val-NNNNNN.tar shards of `shard_size` samples (.png, .txt, .cls)
//   both: classes.json (class names), templates.json (prompt templates), shapes.json (settings)
// The first n - n_val indices are the training split, the last n_val = round(n * val_fraction)
// (at least 1 when n > 1) the held-out split.
struct MakeShapesOptions {
  std::string out_dir;
  uint64_t n = 1000;
  uint64_t seed = 0;
  int image_size = 64;
  std::string format = "csv";  // "csv" or "wds"
  double val_fraction = 0.1;
  uint64_t shard_size = 1000;
  int threads = 0;  // PNG encoding threads; 0 = hardware concurrency
};
struct MakeShapesResult {
  uint64_t n_train = 0, n_val = 0;
  std::string train_spec, val_spec;  // CSV paths or shard patterns, for --train-data / --val-data
};
MakeShapesResult make_shapes(const MakeShapesOptions& opts);

// PNG encoding of an RGB/gray image (stb_image_write).
std::vector<uint8_t> encode_png(const Image& img);

}  // namespace clipcu::data
