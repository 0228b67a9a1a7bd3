// Images per second decoded and preprocessed for CLIP at 224 px on one core (one thread), PNG and
// JPEG, from the golden photos ($CLIPCU_GOLDEN/images or ../shared/golden/images): the whole
// path (file bytes in memory -> decode -> PIL-exact resize + center crop -> normalized floats),
// then decode alone and preprocess alone, for each JPEG decoder variant; plus the training
// augmentation and the shapes generator.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <map>
#include <string>

#include "engine/data/image.h"
#include "engine/data/preprocess.h"
#include "engine/data/shapes.h"
#include "engine/rng.h"

using namespace clipcu;
using namespace clipcu::data;

namespace {

std::string image_path(const std::string& name) {
  const char* env = std::getenv("CLIPCU_GOLDEN");
  std::string dir = env ? std::string(env) : std::string(CLIPCU_SOURCE_DIR) + "/../shared/golden";
  return dir + "/images/" + name;
}

const std::vector<uint8_t>& bytes_of(const std::string& name) {
  static std::map<std::string, std::vector<uint8_t>> cache;
  auto& b = cache[name];
  if (b.empty()) b = read_file_bytes(image_path(name));
  return b;
}

struct Input {
  const char* file;
  JpegDecoder dec;
  const char* label;
};
const Input kInputs[] = {
    {"astronaut.png", JpegDecoder::Auto, "png 512x512 rgb"},
    {"horse.png", JpegDecoder::Auto, "png 400x328 rgba"},
    {"rocket.jpg", JpegDecoder::TurboJpeg, "jpeg 640x427 turbojpeg"},
    {"rocket.jpg", JpegDecoder::Stb, "jpeg 640x427 stb"},
    {"hubble_deep_field.jpg", JpegDecoder::TurboJpeg, "jpeg 1000x872 turbojpeg"},
    {"hubble_deep_field.jpg", JpegDecoder::Stb, "jpeg 1000x872 stb"},
};

bool skip_unavailable(benchmark::State& state, const Input& in) {
  if (in.dec == JpegDecoder::TurboJpeg && !turbojpeg_available()) {
    state.SkipWithError("this build has no TurboJPEG");
    return true;
  }
  return false;
}

// Decode + Resize(224, bicubic) + CenterCrop + normalize, from bytes in memory.
void BM_DecodePreprocess224(benchmark::State& state) {
  const Input& in = kInputs[state.range(0)];
  if (skip_unavailable(state, in)) return;
  const auto& b = bytes_of(in.file);
  for (auto _ : state) {
    Tensor t = preprocess(decode_image(b.data(), b.size(), in.file, in.dec), 224);
    benchmark::DoNotOptimize(t.raw());
  }
  state.SetItemsProcessed(state.iterations());
  state.SetLabel(in.label);
}

void BM_Decode(benchmark::State& state) {
  const Input& in = kInputs[state.range(0)];
  if (skip_unavailable(state, in)) return;
  const auto& b = bytes_of(in.file);
  for (auto _ : state) {
    Image img = decode_image(b.data(), b.size(), in.file, in.dec);
    benchmark::DoNotOptimize(img.pixels.data());
  }
  state.SetItemsProcessed(state.iterations());
  state.SetLabel(in.label);
}

void BM_Preprocess224(benchmark::State& state) {
  const Input& in = kInputs[state.range(0)];
  if (skip_unavailable(state, in)) return;
  const auto& b = bytes_of(in.file);
  const Image img = decode_image(b.data(), b.size(), in.file, in.dec);
  for (auto _ : state) {
    Tensor t = preprocess(img, 224);
    benchmark::DoNotOptimize(t.raw());
  }
  state.SetItemsProcessed(state.iterations());
  state.SetLabel(in.label);
}

// open_clip's training augmentation: RandomResizedCrop(224, scale 0.9-1) + normalize.
void BM_Augment224(benchmark::State& state) {
  const Input& in = kInputs[state.range(0)];
  if (skip_unavailable(state, in)) return;
  const auto& b = bytes_of(in.file);
  const Image img = decode_image(b.data(), b.size(), in.file, in.dec);
  Rng rng(1);
  for (auto _ : state) {
    Tensor t = preprocess(img, 224, true, &rng);
    benchmark::DoNotOptimize(t.raw());
  }
  state.SetItemsProcessed(state.iterations());
  state.SetLabel(in.label);
}

void BM_ShapesRender(benchmark::State& state) {
  const int S = int(state.range(0));
  ShapesGenerator g(S, 1);
  uint64_t i = 0;
  for (auto _ : state) {
    Image img = g.render(i++);
    benchmark::DoNotOptimize(img.pixels.data());
  }
  state.SetItemsProcessed(state.iterations());
}

}  // namespace

BENCHMARK(BM_DecodePreprocess224)->DenseRange(0, 5)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Decode)->DenseRange(0, 5)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Preprocess224)->DenseRange(0, 5)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Augment224)->Arg(0)->Arg(2)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_ShapesRender)->Arg(32)->Arg(64)->Unit(benchmark::kMicrosecond);

BENCHMARK_MAIN();
