// The synthetic shapes generator and `make-shapes` writer (see shapes.h for the design).
#include "engine/data/shapes.h"

#include <archive.h>
#include <archive_entry.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include <stb/stb_image_write.h>

#include "engine/error.h"
#include "engine/rng.h"

namespace clipcu::data {

namespace fs = std::filesystem;

namespace {

// Saturated base colours (max - min channel >= 150); jitter of +-12 keeps them far from the pale
// backgrounds (max - min channel <= 24 before noise).
constexpr uint8_t kColors[6][3] = {
    {220, 35, 35},   // red
    {35, 165, 55},   // green
    {40, 75, 225},   // blue
    {240, 205, 25},  // yellow
    {145, 50, 195},  // purple
    {245, 135, 25},  // orange
};
// Centres as fractions of the image side: top left, top right, bottom left, bottom right, center.
constexpr double kPositions[5][2] = {{0.30, 0.30}, {0.70, 0.30}, {0.30, 0.70}, {0.70, 0.70}, {0.50, 0.50}};
constexpr double kRadius[2] = {0.16, 0.25};  // small, large, as fractions of the side
constexpr double kPi = 3.14159265358979323846;

// Inside tests in shape-local units (u right, v down, 1 = the radius).
bool in_polygon(const double* xs, const double* ys, int n, double u, double v) {
  bool in = false;  // even-odd crossing rule
  for (int i = 0, j = n - 1; i < n; j = i++) {
    if ((ys[i] > v) != (ys[j] > v) && u < (xs[j] - xs[i]) * (v - ys[i]) / (ys[j] - ys[i]) + xs[i]) in = !in;
  }
  return in;
}

struct ShapePolys {
  double tri_x[3], tri_y[3];
  double star_x[10], star_y[10];
  ShapePolys() {
    for (int k = 0; k < 3; ++k) {  // equilateral, point up, circumradius 1.12
      double a = -kPi / 2 + k * 2 * kPi / 3;
      tri_x[k] = 1.12 * std::cos(a);
      tri_y[k] = 1.12 * std::sin(a) + 0.12;  // lowered a little so it sits centred visually
    }
    for (int k = 0; k < 10; ++k) {  // five points, outer radius 1.1, inner 0.45
      double a = -kPi / 2 + k * kPi / 5, r = k % 2 == 0 ? 1.1 : 0.45;
      star_x[k] = r * std::cos(a);
      star_y[k] = r * std::sin(a);
    }
  }
};
const ShapePolys& polys() {
  static const ShapePolys p;
  return p;
}

bool inside(int shape, double u, double v) {
  switch (shape) {
    case 0: return u * u + v * v <= 1.0;                               // circle
    case 1: return std::abs(u) <= 0.82 && std::abs(v) <= 0.82;         // square
    case 2: return in_polygon(polys().tri_x, polys().tri_y, 3, u, v);  // triangle
    case 3: return in_polygon(polys().star_x, polys().star_y, 10, u, v);  // star
    default:                                                           // cross (a plus sign)
      return (std::abs(u) <= 0.3 && std::abs(v) <= 0.95) || (std::abs(v) <= 0.3 && std::abs(u) <= 0.95);
  }
}

std::string fill_template(std::string t, const std::string& size, const std::string& color, const std::string& shape,
                          const std::string& position) {
  auto rep = [&t](const std::string& key, const std::string& val) {
    for (size_t p; (p = t.find(key)) != std::string::npos;) t.replace(p, key.size(), val);
  };
  rep("{size}", size);
  rep("{color}", color);
  rep("{shape}", shape);
  rep("{position}", position);
  // "a orange ..." -> "an orange ...": the article before a vowel
  std::string out;
  out.reserve(t.size() + 4);
  for (size_t i = 0; i < t.size(); ++i) {
    out.push_back(t[i]);
    const bool article = t[i] == 'a' && (i == 0 || t[i - 1] == ' ') && i + 2 < t.size() && t[i + 1] == ' ';
    if (article && std::strchr("aeiou", t[i + 2]) != nullptr) out.push_back('n');
  }
  return out;
}

}  // namespace

ShapesGenerator::ShapesGenerator(int image_size, uint64_t seed) : size_(image_size), seed_(seed) {
  CLIPCU_CHECK(image_size >= 8 && image_size <= 4096, "shapes: image size " << image_size << " (expected 8..4096)");
}

const std::vector<std::string>& ShapesGenerator::shapes() {
  static const std::vector<std::string> v{"circle", "square", "triangle", "star", "cross"};
  return v;
}
const std::vector<std::string>& ShapesGenerator::colors() {
  static const std::vector<std::string> v{"red", "green", "blue", "yellow", "purple", "orange"};
  return v;
}
const std::vector<std::string>& ShapesGenerator::sizes() {
  static const std::vector<std::string> v{"small", "large"};
  return v;
}
const std::vector<std::string>& ShapesGenerator::positions() {
  static const std::vector<std::string> v{"top left", "top right", "bottom left", "bottom right", "center"};
  return v;
}
const std::vector<std::string>& ShapesGenerator::caption_templates() {
  static const std::vector<std::string> v{
      "a {size} {color} {shape} in the {position}",
      "a {color} {shape} in the {position}",
      "a {size} {color} {shape}",
      "a picture of a {size} {color} {shape} in the {position}",
      "there is a {size} {color} {shape} in the {position} of the image",
      "a {size} {shape}, colored {color}, in the {position}",
      // short forms, so that queries and zero-shot prompts that name only colour and shape
      // ("a red circle") are phrases the text tower has seen
      "a {color} {shape}",
      "a photo of a {color} {shape}",
  };
  return v;
}
std::vector<std::string> ShapesGenerator::class_names() {
  std::vector<std::string> v;
  for (const auto& c : colors())
    for (const auto& s : shapes()) v.push_back(c + " " + s);
  return v;
}
const std::vector<std::string>& ShapesGenerator::prompt_templates() {
  static const std::vector<std::string> v{
      "a {}",         "a photo of a {}.", "a {} in the picture.", "a small {}",
      "a large {}",   "a picture of a {}.", "there is a {} in the image.",
  };
  return v;
}

ShapeSpec ShapesGenerator::spec(uint64_t index) const {
  Rng r = Rng(seed_).fork("shape/" + std::to_string(index));
  ShapeSpec s;
  s.shape = int(r.below(shapes().size()));
  s.color = int(r.below(colors().size()));
  s.size = int(r.below(sizes().size()));
  s.position = int(r.below(positions().size()));
  s.label = s.color * int(shapes().size()) + s.shape;
  const double S = size_;
  s.radius = S * kRadius[s.size] * (0.94 + 0.12 * r.uniform());
  s.cx = S * (kPositions[s.position][0] + 0.04 * (r.uniform() - 0.5));
  s.cy = S * (kPositions[s.position][1] + 0.04 * (r.uniform() - 0.5));
  s.angle = (2.0 * r.uniform() - 1.0) * 12.0 * kPi / 180.0;
  for (int c = 0; c < 3; ++c) s.rgb[c] = uint8_t(std::clamp(int(kColors[s.color][c]) + int(r.below(25)) - 12, 0, 255));
  const auto& tpl = caption_templates();
  s.template_id = r.uniform() < 0.5 ? 0 : 1 + int(r.below(tpl.size() - 1));
  s.caption = fill_template(tpl[size_t(s.template_id)], sizes()[size_t(s.size)], colors()[size_t(s.color)],
                            shapes()[size_t(s.shape)], positions()[size_t(s.position)]);
  return s;
}

void ShapesGenerator::render(uint64_t index, uint8_t* rgb) const {
  const ShapeSpec s = spec(index);
  Rng r = Rng(seed_).fork("background/" + std::to_string(index));
  const int S = size_;
  // Background: a gradient between two pale, nearly grey colours, plus light noise.
  double c0[3], c1[3];
  for (double* c : {c0, c1}) {
    double g = 175.0 + double(r.below(61));
    for (int k = 0; k < 3; ++k) c[k] = g + double(r.below(25)) - 12.0;
  }
  const double theta = 2.0 * kPi * r.uniform(), gx = std::cos(theta), gy = std::sin(theta);
  // triangular noise (the sum of two uniforms, std 1 after the scaling) with a per-image strength:
  // as good as Gaussian here and much cheaper than a normal draw per value
  const double noise = (2.0 + 3.0 * r.uniform()) * std::sqrt(6.0) / 65536.0;
  const double ca = std::cos(s.angle), sa = std::sin(s.angle);
  const double reach = 1.2 * s.radius + 1.0;
  constexpr int kSub = 4;  // 4 x 4 samples per pixel for the edge coverage
  for (int y = 0; y < S; ++y) {
    for (int x = 0; x < S; ++x) {
      double t = ((x + 0.5 - S / 2.0) * gx + (y + 0.5 - S / 2.0) * gy) / (S * 0.75) + 0.5;
      t = std::clamp(t, 0.0, 1.0);
      const uint64_t u = r.next_u64(), v = r.next_u64();  // six 16-bit uniforms
      const double tri[3] = {double((u & 0xffff) + ((u >> 16) & 0xffff)) - 65535.0,
                             double(((u >> 32) & 0xffff) + (u >> 48)) - 65535.0,
                             double((v & 0xffff) + ((v >> 16) & 0xffff)) - 65535.0};
      double bg[3];
      for (int k = 0; k < 3; ++k) bg[k] = c0[k] * (1.0 - t) + c1[k] * t + noise * tri[k];
      double cover = 0.0;
      if (std::abs(x + 0.5 - s.cx) <= reach && std::abs(y + 0.5 - s.cy) <= reach) {
        int hits = 0;
        for (int j = 0; j < kSub; ++j) {
          for (int i = 0; i < kSub; ++i) {
            double dx = x + (i + 0.5) / kSub - s.cx, dy = y + (j + 0.5) / kSub - s.cy;
            double u = (dx * ca + dy * sa) / s.radius, v = (-dx * sa + dy * ca) / s.radius;
            hits += inside(s.shape, u, v);
          }
        }
        cover = double(hits) / (kSub * kSub);
      }
      uint8_t* p = rgb + (size_t(y) * size_t(S) + size_t(x)) * 3;
      for (int k = 0; k < 3; ++k) {
        double v = bg[k] * (1.0 - cover) + s.rgb[k] * cover;
        p[k] = uint8_t(std::clamp(int(std::lround(v)), 0, 255));
      }
    }
  }
}

Image ShapesGenerator::render(uint64_t index) const {
  Image img;
  img.width = img.height = size_;
  img.channels = 3;
  img.pixels.resize(size_t(size_) * size_t(size_) * 3);
  render(index, img.pixels.data());
  return img;
}

ShapesDataset::ShapesDataset(int image_size, uint64_t seed, uint64_t first, uint64_t count)
    : gen_(image_size, seed), first_(first), count_(count) {
  CLIPCU_CHECK(count > 0, "shapes dataset with no samples");
}

std::string ShapesDataset::name(size_t i) const {
  return "shapes(seed " + std::to_string(gen_.seed()) + ")#" + std::to_string(first_ + i);
}

Image ShapesDataset::load_image(size_t i, JpegDecoder) const {
  CLIPCU_CHECK(i < count_, "shapes dataset: sample " << i << " of " << count_);
  return gen_.render(first_ + i);
}

std::string ShapesDataset::describe() const {
  return "shapes (seed " + std::to_string(gen_.seed()) + ", " + std::to_string(gen_.image_size()) + " px, samples " +
         std::to_string(first_) + ".." + std::to_string(first_ + count_ - 1) + ")";
}

// ---------------------------------------------------------------- writing

std::vector<uint8_t> encode_png(const Image& img) {
  CLIPCU_CHECK(img.channels >= 1 && img.channels <= 4 && !img.pixels.empty(), "encode_png: empty image");
  std::vector<uint8_t> out;
  auto sink = [](void* ctx, void* data, int size) {
    auto* v = static_cast<std::vector<uint8_t>*>(ctx);
    const auto* b = static_cast<const uint8_t*>(data);
    v->insert(v->end(), b, b + size);
  };
  if (!stbi_write_png_to_func(sink, &out, img.width, img.height, img.channels, img.pixels.data(), img.width * img.channels)) {
    throw Error("PNG encoding failed for a " + std::to_string(img.width) + "x" + std::to_string(img.height) + " image");
  }
  return out;
}

namespace {

void write_file(const fs::path& p, const void* data, size_t size) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  if (!f) throw Error("cannot create '" + p.string() + "': " + std::strerror(errno));
  f.write(static_cast<const char*>(data), std::streamsize(size));
  f.close();
  if (!f) throw Error("cannot write '" + p.string() + "'");
}
void write_text(const fs::path& p, const std::string& s) { write_file(p, s.data(), s.size()); }

// A CSV field, quoted when it holds the separator, a quote or a line break.
std::string csv_field(const std::string& s, char sep) {
  if (s.find_first_of(std::string(1, sep) + "\"\r\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

std::string key_of(uint64_t i, int width) {
  std::string s = std::to_string(i);
  if (int(s.size()) < width) s.insert(0, size_t(width) - s.size(), '0');
  return s;
}

// Runs fn(i) for i in [0, n) on `threads` threads; the first exception is rethrown.
template <class F>
void parallel_for(uint64_t n, int threads, F fn) {
  std::atomic<uint64_t> next{0};
  std::exception_ptr err;
  std::mutex mu;
  auto work = [&]() {
    for (uint64_t i; (i = next.fetch_add(1)) < n;) {
      try {
        fn(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu);
        if (!err) err = std::current_exception();
        next = n;
      }
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  if (err) std::rethrow_exception(err);
}

struct TarWriter {
  std::unique_ptr<struct archive, int (*)(struct archive*)> a{archive_write_new(), archive_write_free};
  std::string path;
  explicit TarWriter(const std::string& p) : path(p) {
    archive_write_set_format_pax_restricted(a.get());
    if (archive_write_open_filename(a.get(), p.c_str()) != ARCHIVE_OK) fail();
  }
  [[noreturn]] void fail() {
    const char* why = archive_error_string(a.get());
    throw Error("cannot write tar shard '" + path + "': " + (why ? why : "unknown error"));
  }
  void add(const std::string& name, const void* data, size_t size) {
    std::unique_ptr<struct archive_entry, void (*)(struct archive_entry*)> e(archive_entry_new(), archive_entry_free);
    archive_entry_set_pathname(e.get(), name.c_str());
    archive_entry_set_size(e.get(), la_int64_t(size));
    archive_entry_set_filetype(e.get(), AE_IFREG);
    archive_entry_set_perm(e.get(), 0644);
    archive_entry_set_mtime(e.get(), 0, 0);  // reproducible shards
    if (archive_write_header(a.get(), e.get()) != ARCHIVE_OK) fail();
    if (size > 0 && archive_write_data(a.get(), data, size) != la_ssize_t(size)) fail();
  }
  void close() {
    if (archive_write_close(a.get()) != ARCHIVE_OK) fail();
  }
};

}  // namespace

MakeShapesResult make_shapes(const MakeShapesOptions& o) {
  CLIPCU_CHECK(!o.out_dir.empty(), "make-shapes: no output folder");
  CLIPCU_CHECK(o.n >= 1, "make-shapes: --n must be at least 1");
  CLIPCU_CHECK(o.format == "csv" || o.format == "wds", "make-shapes: --format must be csv or wds, got '" << o.format << "'");
  CLIPCU_CHECK(o.val_fraction >= 0.0 && o.val_fraction < 1.0, "make-shapes: validation fraction " << o.val_fraction);
  CLIPCU_CHECK(o.shard_size >= 1, "make-shapes: shard size must be at least 1");
  const ShapesGenerator gen(o.image_size, o.seed);
  MakeShapesResult res;
  res.n_val = uint64_t(std::llround(double(o.n) * o.val_fraction));
  if (o.n > 1 && o.val_fraction > 0.0) res.n_val = std::max<uint64_t>(res.n_val, 1);
  res.n_val = std::min(res.n_val, o.n - 1);
  res.n_train = o.n - res.n_val;
  const int threads = o.threads > 0 ? o.threads : int(std::max(1u, std::thread::hardware_concurrency()));
  const int width = std::max<int>(6, int(std::to_string(o.n - 1).size()));
  const fs::path out(o.out_dir);
  std::error_code ec;
  fs::create_directories(out, ec);
  if (ec) throw Error("cannot create folder '" + out.string() + "': " + ec.message());

  struct Split {
    const char* name;
    uint64_t first, count;
    std::string* spec;
  } splits[2] = {{"train", 0, res.n_train, &res.train_spec}, {"val", res.n_train, res.n_val, &res.val_spec}};

  for (const Split& sp : splits) {
    if (sp.count == 0) continue;
    if (o.format == "csv") {
      const fs::path dir = out / sp.name;
      fs::create_directories(dir, ec);
      if (ec) throw Error("cannot create folder '" + dir.string() + "': " + ec.message());
      parallel_for(sp.count, threads, [&](uint64_t k) {
        const uint64_t i = sp.first + k;
        std::vector<uint8_t> png = encode_png(gen.render(i));
        write_file(dir / (key_of(i, width) + ".png"), png.data(), png.size());
      });
      std::string csv = "filepath\ttitle\tlabel\n";
      for (uint64_t k = 0; k < sp.count; ++k) {
        const uint64_t i = sp.first + k;
        const ShapeSpec s = gen.spec(i);
        csv += csv_field(std::string(sp.name) + "/" + key_of(i, width) + ".png", '\t') + "\t" + csv_field(s.caption, '\t') +
               "\t" + std::to_string(s.label) + "\n";
      }
      const fs::path csv_path = out / (std::string(sp.name) + ".csv");
      write_text(csv_path, csv);
      *sp.spec = csv_path.string();
    } else {
      const uint64_t shards = (sp.count + o.shard_size - 1) / o.shard_size;
      for (uint64_t sh = 0; sh < shards; ++sh) {
        const uint64_t first = sp.first + sh * o.shard_size, count = std::min(o.shard_size, sp.first + sp.count - first);
        std::vector<std::vector<uint8_t>> pngs(count);
        parallel_for(count, threads, [&](uint64_t k) { pngs[k] = encode_png(gen.render(first + k)); });
        TarWriter tw((out / (std::string(sp.name) + "-" + key_of(sh, 6) + ".tar")).string());
        for (uint64_t k = 0; k < count; ++k) {
          const ShapeSpec s = gen.spec(first + k);
          const std::string key = key_of(first + k, width);
          const std::string label = std::to_string(s.label);
          tw.add(key + ".png", pngs[k].data(), pngs[k].size());
          tw.add(key + ".txt", s.caption.data(), s.caption.size());
          tw.add(key + ".cls", label.data(), label.size());
        }
        tw.close();
      }
      const std::string last = key_of(shards - 1, 6);
      *sp.spec = (out / (std::string(sp.name) + (shards == 1 ? "-" + last + ".tar" : "-{000000.." + last + "}.tar"))).string();
    }
  }

  nlohmann::json classes = ShapesGenerator::class_names();
  nlohmann::json templates = ShapesGenerator::prompt_templates();
  write_text(out / "classes.json", classes.dump(2) + "\n");
  write_text(out / "templates.json", templates.dump(2) + "\n");
  nlohmann::json info = {
      {"generator", "clipcu make-shapes"},
      {"seed", o.seed},
      {"n", o.n},
      {"n_train", res.n_train},
      {"n_val", res.n_val},
      {"image_size", o.image_size},
      {"format", o.format},
      {"train", res.train_spec},
      {"val", res.val_spec},
      {"shapes", ShapesGenerator::shapes()},
      {"colors", ShapesGenerator::colors()},
      {"sizes", ShapesGenerator::sizes()},
      {"positions", ShapesGenerator::positions()},
      {"caption_templates", ShapesGenerator::caption_templates()},
      {"label", "color * " + std::to_string(ShapesGenerator::shapes().size()) + " + shape (index into classes.json)"},
  };
  write_text(out / "shapes.json", info.dump(2) + "\n");
  return res;
}

}  // namespace clipcu::data
