// CLIP image preprocessing, reproducing torchvision on PIL images bit for bit:
//
//   eval:  Resize(N, BICUBIC) -> CenterCrop(N) -> convert("RGB") -> ToTensor -> Normalize(mean, std)
//   train: RandomResizedCrop(N, scale=(0.9, 1.0), ratio=(3/4, 4/3), BICUBIC) -> RGB -> ToTensor ->
//          Normalize (open_clip's training augmentation)
//
// The resampler is PIL's (Resample.c), rewritten: separable convolution with the bicubic kernel
// (a = -0.5, support 2), the support widened by the downscale factor (antialiasing), coefficients
// normalized per output pixel then quantized to 22-bit fixed point, a horizontal pass rounded to
// 8 bits then a vertical pass rounded to 8 bits. Alpha images are premultiplied around the
// resampling and palette images use nearest neighbour, as PIL's Image.resize does. Only the part
// of the resized image that survives the crop is computed (each output pixel depends on its own
// coefficients only, so the crop of the full resize is identical).
#pragma once
#include <array>
#include <cstdint>

#include "engine/data/image.h"
#include "engine/tensor.h"

namespace clipcu {
class Rng;
}

namespace clipcu::data {

inline constexpr std::array<float, 3> kClipMean = {0.48145466f, 0.4578275f, 0.40821073f};
inline constexpr std::array<float, 3> kClipStd = {0.26862954f, 0.26130258f, 0.27577711f};

// A rectangle of pixels (x, y: top-left corner).
struct Rect {
  int x = 0, y = 0, w = 0, h = 0;
};

// PIL's img.crop(src).resize((out_w, out_h), BICUBIC), then .crop(keep): only the `keep` part of
// the resized image is computed. Channels are kept (1..4). `src` must lie inside the image and
// `keep` inside [0, out_w) x [0, out_h).
Image resize_bicubic(const Image& img, Rect src, int out_w, int out_h, Rect keep);
// The whole image resized.
Image resize_bicubic(const Image& img, int out_w, int out_h);

// torchvision's Resize(N) output size: the shorter side becomes N, the longer int(N * long / short).
void resized_size(int width, int height, int N, int* out_w, int* out_h);
// torchvision's CenterCrop offsets (Python's round: halves to even).
Rect center_crop_rect(int width, int height, int crop_w, int crop_h);

// Resize(N, bicubic) + CenterCrop(N) + convert("RGB"): [N, N, 3] uint8.
Image resize_center_crop(const Image& img, int N);

// torchvision's RandomResizedCrop.get_params: up to 10 draws of (area fraction in scale, log-uniform
// aspect ratio), the first box that fits wins; else the central crop with the ratio clamped.
struct CropParams {
  double scale_min = 0.9, scale_max = 1.0;
  double ratio_min = 3.0 / 4.0, ratio_max = 4.0 / 3.0;
};
Rect random_resized_crop_rect(int width, int height, Rng& rng, const CropParams& p = {});
// RandomResizedCrop(N) + convert("RGB"): [N, N, 3] uint8.
Image random_resized_crop(const Image& img, int N, Rng& rng, const CropParams& p = {});

// ToTensor + Normalize: an RGB uint8 image [H, W, 3] to float [3, H, W] written at `out`.
void normalize_to_chw(const Image& rgb, float* out,  // [3, H, W]
                      const std::array<float, 3>& mean = kClipMean, const std::array<float, 3>& std = kClipStd);

// The whole eval (augment = false) or train (augment = true, rng required) transform to a
// float tensor [3, N, N].
Tensor preprocess(const Image& img, int N, bool augment = false, Rng* rng = nullptr);

}  // namespace clipcu::data
