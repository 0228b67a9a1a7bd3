// Image decoding and CLIP preprocessing against torchvision-on-PIL golden outputs
// (../shared/golden/preprocess.safetensors: every image at 224 and 64), the formats and pixel
// layouts the decoder must handle, the PIL rules of the geometry, and rejection of corrupt,
// truncated, empty and non-image files with the file named.
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <stb/stb_image_write.h>

#include "engine/data/image.h"
#include "engine/data/preprocess.h"
#include "engine/data/shapes.h"
#include "engine/rng.h"
#include "tests/support.h"

using namespace clipcu;
using namespace clipcu::data;
namespace fs = std::filesystem;

namespace {

std::vector<std::string> golden_images() {
  std::vector<std::string> out;
  for (auto& e : fs::directory_iterator(test::golden_path("images"))) out.push_back(e.path().string());
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<uint8_t> file_bytes(const std::string& p) { return read_file_bytes(p); }

void write_bytes(const std::string& path, const std::vector<uint8_t>& b) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}

// Decodes, preprocesses at N and compares with the golden u8 [N, N, 3] and chw [3, N, N].
// PNG and TurboJPEG decode exactly as PIL does, so the pixels must agree to +-1 (JPEG +-3) and
// the normalized values to 2e-2; stb_image's JPEG decoder differs from libjpeg by a level or
// two, so for it the bound on the normalized values is the one its u8 bound implies.
void check_golden(const std::string& path, int N, JpegDecoder dec, const char* dec_name) {
  const st::File& g = test::golden("preprocess.safetensors");
  const std::string stem = fs::path(path).stem().string();
  const bool jpeg = fs::path(path).extension() == ".jpg";
  const bool exact_decoder = !jpeg || dec == JpegDecoder::TurboJpeg || (dec == JpegDecoder::Auto && turbojpeg_available());
  Image img = decode_image_file(path, dec);
  Image rgb = resize_center_crop(img, N);
  REQUIRE(rgb.width == N);
  REQUIRE(rgb.height == N);
  REQUIRE(rgb.channels == 3);
  Tensor ref_u8 = g.get(stem + "." + std::to_string(N) + ".u8");
  REQUIRE(ref_u8.shape() == Shape{N, N, 3});
  const uint8_t* r = ref_u8.data<uint8_t>();
  int max_diff = 0;
  size_t n_diff = 0;
  for (size_t i = 0; i < rgb.pixels.size(); ++i) {
    int d = std::abs(int(rgb.pixels[i]) - int(r[i]));
    max_diff = std::max(max_diff, d);
    n_diff += d != 0;
  }
  Tensor chw = preprocess(img, N);
  Tensor ref_chw = g.get(stem + "." + std::to_string(N) + ".chw");
  REQUIRE(chw.shape() == ref_chw.shape());
  const double err = test::max_abs_err(chw, ref_chw), rel = test::rel_err(chw, ref_chw);
  std::printf("  %-18s N=%-3d %-9s %4dx%-4d c=%d: max |u8 diff| %d (%zu of %zu differ), chw max abs err %.2e, rel %.2e\n",
              stem.c_str(), N, dec_name, img.width, img.height, img.channels, max_diff, n_diff, rgb.pixels.size(), err, rel);
  const int tol = jpeg ? 3 : 1;
  CHECK_MESSAGE(max_diff <= tol, stem << " at " << N << " (" << dec_name << "): max u8 diff " << max_diff);
  const double min_std = *std::min_element(kClipStd.begin(), kClipStd.end());
  const double chw_tol = exact_decoder ? 2e-2 : tol / 255.0 / min_std + 1e-6;
  CHECK_MESSAGE(err <= chw_tol, stem << " at " << N << " (" << dec_name << "): chw error " << err);
}

template <class F>
std::string error_of(F f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// A PNG of any colour type / bit depth, built by hand (zlib + CRCs), rows already packed.
std::vector<uint8_t> make_png(int w, int h, int color_type, int bit_depth, const std::vector<uint8_t>& packed_rows,
                              const std::vector<uint8_t>& plte = {}, const std::vector<uint8_t>& trns = {}) {
  std::vector<uint8_t> out = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  auto chunk = [&out](const char* type, const std::vector<uint8_t>& data) {
    uint32_t n = uint32_t(data.size());
    for (int s = 24; s >= 0; s -= 8) out.push_back(uint8_t(n >> s));
    std::vector<uint8_t> td(type, type + 4);
    td.insert(td.end(), data.begin(), data.end());
    out.insert(out.end(), td.begin(), td.end());
    uint32_t crc = uint32_t(crc32(crc32(0L, Z_NULL, 0), td.data(), uInt(td.size())));
    for (int s = 24; s >= 0; s -= 8) out.push_back(uint8_t(crc >> s));
  };
  std::vector<uint8_t> ihdr = {uint8_t(w >> 24), uint8_t(w >> 16), uint8_t(w >> 8), uint8_t(w),
                               uint8_t(h >> 24), uint8_t(h >> 16), uint8_t(h >> 8), uint8_t(h),
                               uint8_t(bit_depth), uint8_t(color_type), 0, 0, 0};
  chunk("IHDR", ihdr);
  if (!plte.empty()) chunk("PLTE", plte);
  if (!trns.empty()) chunk("tRNS", trns);
  // filter byte 0 before each row
  const size_t row_bytes = packed_rows.size() / size_t(h);
  std::vector<uint8_t> raw;
  for (int y = 0; y < h; ++y) {
    raw.push_back(0);
    raw.insert(raw.end(), packed_rows.begin() + long(y * row_bytes), packed_rows.begin() + long((y + 1) * row_bytes));
  }
  uLongf zn = compressBound(uLong(raw.size()));
  std::vector<uint8_t> z(zn);
  REQUIRE(compress(z.data(), &zn, raw.data(), uLong(raw.size())) == Z_OK);
  z.resize(zn);
  chunk("IDAT", z);
  chunk("IEND", {});
  return out;
}

// A GIF with a 4-colour palette, LZW-coded with a clear code before every pixel so that the
// code width stays 3 bits (valid, if not compact).
std::vector<uint8_t> make_gif(int w, int h, const uint8_t palette[4][3], const std::vector<uint8_t>& idx) {
  std::vector<uint8_t> g = {'G', 'I', 'F', '8', '9', 'a', uint8_t(w), uint8_t(w >> 8), uint8_t(h), uint8_t(h >> 8), 0x81, 0, 0};
  for (int i = 0; i < 4; ++i) g.insert(g.end(), palette[i], palette[i] + 3);
  g.insert(g.end(), {0x2C, 0, 0, 0, 0, uint8_t(w), uint8_t(w >> 8), uint8_t(h), uint8_t(h >> 8), 0});
  g.push_back(2);  // LZW minimum code size
  std::vector<uint8_t> bits;
  uint32_t acc = 0;
  int nacc = 0;
  auto put = [&](uint32_t code) {
    acc |= code << nacc;
    nacc += 3;
    while (nacc >= 8) {
      bits.push_back(uint8_t(acc));
      acc >>= 8;
      nacc -= 8;
    }
  };
  for (uint8_t p : idx) {
    put(4);  // clear
    put(p);
  }
  put(5);  // end of information
  if (nacc > 0) bits.push_back(uint8_t(acc));
  for (size_t i = 0; i < bits.size(); i += 255) {
    size_t n = std::min<size_t>(255, bits.size() - i);
    g.push_back(uint8_t(n));
    g.insert(g.end(), bits.begin() + long(i), bits.begin() + long(i + n));
  }
  g.push_back(0);
  g.push_back(0x3B);
  return g;
}

}  // namespace

TEST_CASE("preprocessing matches torchvision on PIL for every golden image at 224 and 64") {
  auto files = golden_images();
  REQUIRE(files.size() >= 9);
  std::printf("preprocess vs golden (decoder for JPEG: %s):\n", turbojpeg_available() ? "turbojpeg" : "stb_image");
  for (const auto& f : files) {
    const bool jpeg = fs::path(f).extension() == ".jpg";
    for (int N : {224, 64}) check_golden(f, N, JpegDecoder::Auto, !jpeg ? "stb" : turbojpeg_available() ? "turbojpeg" : "stb");
  }
}

TEST_CASE("stb_image JPEG decoding stays within the JPEG tolerance") {
  std::printf("preprocess vs golden, JPEG through stb_image:\n");
  int n = 0;
  for (const auto& f : golden_images()) {
    if (fs::path(f).extension() != ".jpg") continue;
    for (int N : {224, 64}) check_golden(f, N, JpegDecoder::Stb, "stb");
    ++n;
  }
  CHECK(n >= 2);
}

TEST_CASE("torchvision's geometry rules: output size, center crop rounding, same-size identity") {
  int w = 0, h = 0;
  resized_size(451, 300, 224, &w, &h);
  CHECK(w == 336);  // int(224 * 451 / 300) = int(336.75)
  CHECK(h == 224);
  resized_size(400, 600, 64, &w, &h);
  CHECK(w == 64);
  CHECK(h == 96);
  resized_size(7, 5, 224, &w, &h);  // upscaling: int(224 * 7 / 5) = 313
  CHECK(w == 313);
  CHECK(h == 224);
  // Python's round(): 56.5 -> 56, 57.5 -> 58, 0.5 -> 0, 1.5 -> 2
  CHECK(center_crop_rect(337, 224, 224, 224).x == 56);
  CHECK(center_crop_rect(339, 224, 224, 224).x == 58);
  CHECK(center_crop_rect(225, 225, 224, 224).x == 0);
  CHECK(center_crop_rect(227, 227, 224, 224).y == 2);
  CHECK_THROWS_AS(center_crop_rect(100, 100, 224, 224), Error);

  ShapesGenerator gen(64, 5);
  Image img = gen.render(3);
  Image same = resize_center_crop(img, 64);
  CHECK(same.pixels == img.pixels);  // PIL copies an image already at the size
}

TEST_CASE("upscaling and odd sizes keep constants constant and ramps monotonic") {
  for (auto [W, H] : {std::pair{7, 5}, std::pair{1, 1}, std::pair{13, 2}, std::pair{3, 31}}) {
    Image c;
    c.width = W;
    c.height = H;
    c.channels = 3;
    c.pixels.assign(size_t(W * H * 3), 0);
    for (size_t i = 0; i < c.pixels.size(); ++i) c.pixels[i] = uint8_t(i % 3 == 0 ? 200 : (i % 3 == 1 ? 17 : 255));
    for (int N : {1, 5, 64, 97}) {
      Image r = resize_center_crop(c, N);
      REQUIRE(r.width == N);
      REQUIRE(r.height == N);
      bool constant = true;
      for (size_t i = 0; i < r.pixels.size(); ++i) constant &= r.pixels[i] == c.pixels[i % 3];
      CHECK_MESSAGE(constant, W << "x" << H << " -> " << N);
    }
  }
  // A horizontal ramp upscaled 8 -> 61 stays non-decreasing away from the borders (bicubic
  // overshoot only happens at steps, and a ramp has none).
  Image ramp;
  ramp.width = 8;
  ramp.height = 8;
  ramp.channels = 1;
  for (int y = 0; y < 8; ++y)
    for (int x = 0; x < 8; ++x) ramp.pixels.push_back(uint8_t(20 + 30 * x));
  Image up = resize_bicubic(ramp, 61, 61);
  for (int x = 1; x < 61; ++x) CHECK(up.row(30)[x] >= up.row(30)[x - 1]);
}

TEST_CASE("random resized crop: seeded, inside the image, area 90-100 %, ratio 3/4-4/3") {
  Rng a(11), b(11);
  for (int i = 0; i < 200; ++i) {
    // aspect ratios inside [3/4, 4/3]: a 90-100 % box always exists (outside it the fallback
    // takes the central crop with the ratio clamped, tested below)
    const int W = 20 + i * 7 % 400, H = int(W * (0.78 + 0.05 * (i % 11)));
    Rect r = random_resized_crop_rect(W, H, a);
    Rect s = random_resized_crop_rect(W, H, b);
    CHECK((r.x == s.x && r.y == s.y && r.w == s.w && r.h == s.h));
    CHECK(r.x >= 0);
    CHECK(r.y >= 0);
    CHECK(r.x + r.w <= W);
    CHECK(r.y + r.h <= H);
    const double frac = double(r.w) * r.h / (double(W) * H);
    CHECK(frac >= 0.85);  // 0.9 up to the rounding of w and h to whole pixels
    CHECK(frac <= 1.0);
    const double ratio = double(r.w) / r.h;  // 3/4..4/3 up to the rounding of w and h
    CHECK(ratio >= 0.75 * (1 - 1.5 / r.h) - 1e-9);
    CHECK(ratio <= 4.0 / 3.0 * (1 + 1.5 / r.h) + 1e-9);
  }
  // A very wide image never fits a ratio <= 4/3 box of 90 % area: the fallback is the central crop.
  Rng c(1);
  Rect f = random_resized_crop_rect(400, 20, c);
  CHECK(f.h == 20);
  CHECK(f.w == 27);  // round(20 * 4/3)
  CHECK(f.x == (400 - 27) / 2);

  ShapesGenerator gen(64, 2);
  Image img = gen.render(0);
  Rng r1(5), r2(5);
  Image x = random_resized_crop(img, 32, r1), y = random_resized_crop(img, 32, r2);
  CHECK(x.width == 32);
  CHECK(x.channels == 3);
  CHECK(x.pixels == y.pixels);
  Tensor t = preprocess(img, 32, true, &r1);
  CHECK(t.shape() == Shape{3, 32, 32});
}

TEST_CASE("decoding every supported layout: gray, gray+alpha, 16-bit, palette, tRNS, BMP, GIF") {
  const std::string dir = test::temp_dir("image_formats");
  // 16-bit RGB: the high byte of each sample
  {
    std::vector<uint8_t> rows;
    for (int i = 0; i < 2 * 3; ++i) {
      rows.push_back(uint8_t(40 * i + 7));
      rows.push_back(0x99);
    }
    Image img = decode_image(make_png(2, 1, 2, 16, rows).data(), make_png(2, 1, 2, 16, rows).size(), "rgb16.png");
    CHECK(img.channels == 3);
    CHECK(img.pixels == std::vector<uint8_t>{7, 47, 87, 127, 167, 207});
  }
  // gray + alpha: two channels, converted to RGB by replicating the gray
  {
    std::vector<uint8_t> rows = {10, 255, 200, 128};
    auto png = make_png(2, 1, 4, 8, rows);
    Image img = decode_image(png.data(), png.size(), "la.png");
    CHECK(img.channels == 2);
    CHECK(!img.palette);
    Image rgb = to_rgb(img);
    CHECK(rgb.pixels == std::vector<uint8_t>{10, 10, 10, 200, 200, 200});
  }
  // palette with tRNS: PIL mode "P": nearest-neighbour resize, no alpha
  {
    std::vector<uint8_t> plte = {255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9};
    std::vector<uint8_t> rows = {0, 1, 2, 3};  // 4x1, one index per byte (bit depth 8)
    auto png = make_png(4, 1, 3, 8, rows, plte, {0, 255, 255, 255});
    Image img = decode_image(png.data(), png.size(), "pal.png");
    CHECK(img.palette);
    CHECK(img.channels == 3);
    Image big = resize_bicubic(img, 8, 2);  // nearest: every source pixel doubled, no new colours
    std::vector<uint8_t> expect;
    for (int y = 0; y < 2; ++y)
      for (int x = 0; x < 8; ++x) expect.insert(expect.end(), plte.begin() + 3 * (x / 2), plte.begin() + 3 * (x / 2) + 3);
    CHECK(big.pixels == expect);
  }
  // RGB with a tRNS colour: PIL keeps mode "RGB" (no premultiplication), so no alpha channel here
  {
    std::vector<uint8_t> rows = {1, 2, 3, 4, 5, 6};
    auto png = make_png(2, 1, 2, 8, rows, {}, {0, 1, 0, 2, 0, 3});
    Image img = decode_image(png.data(), png.size(), "trns.png");
    CHECK(img.channels == 3);
    CHECK(img.pixels == rows);
  }
  // BMP (24-bit, written by stb_image_write) round-trips exactly
  {
    ShapesGenerator gen(17, 1);
    Image src = gen.render(4);
    const std::string p = dir + "/shape.bmp";
    REQUIRE(stbi_write_bmp(p.c_str(), src.width, src.height, 3, src.pixels.data()));
    Image img = decode_image_file(p);
    CHECK(img.width == 17);
    CHECK(img.channels == 3);
    CHECK(!img.palette);
    CHECK(img.pixels == src.pixels);
  }
  // GIF: palette image, first frame, RGB
  {
    const uint8_t pal[4][3] = {{0, 0, 0}, {255, 0, 0}, {0, 255, 0}, {0, 0, 255}};
    std::vector<uint8_t> idx = {0, 1, 2, 3, 3, 2};
    auto gif = make_gif(3, 2, pal, idx);
    write_bytes(dir + "/p.gif", gif);
    Image img = decode_image_file(dir + "/p.gif");
    CHECK(img.width == 3);
    CHECK(img.height == 2);
    CHECK(img.palette);
    REQUIRE(img.channels == 3);
    for (size_t i = 0; i < idx.size(); ++i)
      for (size_t c = 0; c < 3; ++c) CHECK(img.pixels[i * 3 + c] == pal[idx[i]][c]);
  }
}

TEST_CASE("corrupt, truncated, empty, missing and non-image files are rejected with the file named") {
  const std::string dir = test::temp_dir("image_bad");
  const auto png = file_bytes(test::golden_path("images/astronaut.png"));
  const auto jpg = file_bytes(test::golden_path("images/rocket.jpg"));
  struct Case {
    std::string name;
    std::vector<uint8_t> bytes;
    std::string reason;  // a word the message must contain
  };
  std::vector<Case> cases;
  cases.push_back({"empty.png", {}, "empty"});
  cases.push_back({"notes.png", std::vector<uint8_t>{'h', 'e', 'l', 'l', 'o', '\n'}, "unsupported"});
  cases.push_back({"image.ppm", std::vector<uint8_t>{'P', '6', '\n', '1', ' ', '1', '\n', '2', '5', '5', '\n', 1, 2, 3}, "unsupported"});
  cases.push_back({"half.png", std::vector<uint8_t>(png.begin(), png.begin() + long(png.size() / 2)), "truncated"});
  cases.push_back({"no_iend.png", std::vector<uint8_t>(png.begin(), png.end() - 12), "truncated"});
  cases.push_back({"signature_only.png", std::vector<uint8_t>(png.begin(), png.begin() + 8), "truncated"});
  auto flipped = png;
  flipped[png.size() / 2] ^= 0x5A;
  cases.push_back({"flipped.png", flipped, "CRC"});
  cases.push_back({"half.jpg", std::vector<uint8_t>(jpg.begin(), jpg.begin() + long(jpg.size() / 2)), "truncated"});
  cases.push_back({"header_only.jpg", std::vector<uint8_t>(jpg.begin(), jpg.begin() + 200), "truncated"});
  auto bad_sof = jpg;
  for (size_t i = 2; i + 1 < bad_sof.size(); ++i) {
    if (bad_sof[i] == 0xFF && bad_sof[i + 1] == 0xC0) {  // garbage in the frame header
      for (size_t k = i + 4; k < i + 12 && k < bad_sof.size(); ++k) bad_sof[k] = 0;
      break;
    }
  }
  cases.push_back({"bad_sof.jpg", bad_sof, "JPEG"});
  std::vector<uint8_t> bmp_head = {'B', 'M'};
  bmp_head.resize(60, 0);
  bmp_head[10] = 54;
  bmp_head[14] = 40;
  bmp_head[18] = 100;  // 100 x 100, 24 bits, no pixel data
  bmp_head[22] = 100;
  bmp_head[26] = 1;
  bmp_head[28] = 24;
  cases.push_back({"cut.bmp", bmp_head, "truncated"});
  cases.push_back({"cut.gif", std::vector<uint8_t>{'G', 'I', 'F', '8', '9', 'a', 10, 0}, "GIF"});

  for (const Case& c : cases) {
    const std::string p = dir + "/" + c.name;
    write_bytes(p, c.bytes);
    std::string msg = error_of([&] { decode_image_file(p); });
    std::printf("  %-18s -> %s\n", c.name.c_str(), msg.c_str());
    CHECK_MESSAGE(msg.find(p) != std::string::npos, c.name << ": message does not name the file: " << msg);
    CHECK_MESSAGE(msg.find(c.reason) != std::string::npos, c.name << ": message lacks '" << c.reason << "': " << msg);
    // from memory too, with the origin named
    std::string mem = error_of([&] { decode_image(c.bytes.data(), c.bytes.size(), "shard.tar:" + c.name); });
    CHECK_MESSAGE(mem.find("shard.tar:" + c.name) != std::string::npos, mem);
  }
  std::string missing = error_of([&] { decode_image_file(dir + "/nope.png"); });
  CHECK(missing.find(dir + "/nope.png") != std::string::npos);
  CHECK(missing.find("No such file") != std::string::npos);
  std::string folder = error_of([&] { decode_image_file(dir); });
  CHECK(folder.find("not a regular file") != std::string::npos);
}
