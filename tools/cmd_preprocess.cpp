// clipcu preprocess --size N IMAGE --out OUT.safetensors: CLIP's image preprocessing of one file
// (PIL-exact bicubic resize of the shorter side, center crop, RGB, CLIP mean/std), written as
// `pixels` [3, N, N] float32. --augment applies open_clip's training crop instead (seeded).
#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>
#include <string>

#include "engine/data/image.h"
#include "engine/data/preprocess.h"
#include "engine/rng.h"
#include "tools/command.h"
#include "weights/safetensors.h"

namespace clipcu::tools {
namespace {

struct PreprocessArgs {
  std::string image, out;
  int size = 224;
  bool augment = false;
  uint64_t seed = 0;
  bool u8 = false;
};

int run_preprocess(const PreprocessArgs& a) {
  const data::Image img = data::decode_image_file(a.image);
  Rng rng(a.seed);
  const data::Image rgb = a.augment ? data::random_resized_crop(img, a.size, rng) : data::resize_center_crop(img, a.size);
  Tensor pixels = Tensor::empty({3, a.size, a.size}, DType::F32);  // [3, N, N]
  data::normalize_to_chw(rgb, pixels.data<float>());
  st::NamedTensors out{{"pixels", pixels}};
  if (a.u8) {
    Tensor u8 = Tensor::empty({a.size, a.size, 3}, DType::U8);  // [N, N, 3]
    std::copy(rgb.pixels.begin(), rgb.pixels.end(), u8.data<uint8_t>());
    out.emplace_back("u8", u8);
  }
  std::map<std::string, std::string> meta{
      {"source", a.image},
      {"size", std::to_string(a.size)},
      {"transform", a.augment ? "RandomResizedCrop(N, scale=(0.9, 1.0), bicubic) -> RGB -> ToTensor -> Normalize (seed " +
                                    std::to_string(a.seed) + ")"
                              : "Resize(N, bicubic, PIL) -> CenterCrop(N) -> RGB -> ToTensor -> Normalize"},
      {"mean", "(0.48145466, 0.4578275, 0.40821073)"},
      {"std", "(0.26862954, 0.26130258, 0.27577711)"},
  };
  st::save(a.out, out, meta);
  std::printf("%s: %dx%d, %d channel%s -> %s: pixels [3, %d, %d]\n", a.image.c_str(), img.width, img.height, img.channels,
              img.channels == 1 ? "" : "s", a.out.c_str(), a.size, a.size);
  return 0;
}

Command preprocess_cmd("preprocess", "Preprocess an image as CLIP does and write `pixels` [3, N, N] to a safetensors file",
                       [](CLI::App& app) {
                         auto a = std::make_shared<PreprocessArgs>();
                         app.add_option("--size", a->size, "output side N")->default_val(224)->check(CLI::Range(1, 8192));
                         app.add_option("image", a->image, "image file (PNG, JPEG, BMP, GIF)")->required();
                         app.add_option("--out", a->out, "output .safetensors file")->required();
                         app.add_flag("--augment", a->augment, "open_clip's training crop instead of resize + center crop");
                         app.add_option("--seed", a->seed, "seed of the augmentation")->default_val(0);
                         app.add_flag("--u8", a->u8, "also write `u8` [N, N, 3], the RGB bytes before normalization");
                         return [a]() { return run_preprocess(*a); };
                       });

}  // namespace
}  // namespace clipcu::tools
