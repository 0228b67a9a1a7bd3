// PIL-exact bicubic resampling and CLIP's transforms (see preprocess.h for the algorithm).
//
// Layout of the work for one resize of a source rectangle S (w x h) to W x H, keeping the output
// rectangle K:
//   1. coefficients per output column and per output row: the source interval [min, min + count)
//      and `count` fixed-point weights (22 fractional bits), exactly as PIL computes them;
//   2. the horizontal pass over only the source rows that K's rows read, producing K's columns,
//      each value rounded and clamped to 8 bits (PIL keeps an 8-bit image between the passes);
//   3. the vertical pass producing K's rows, rounded and clamped to 8 bits again.
// A pass whose size does not change is skipped (PIL skips it too; it would be the identity).
#include "engine/data/preprocess.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "engine/error.h"
#include "engine/rng.h"

namespace clipcu::data {

namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;  // PIL: 8 bits of result, 2 bits of headroom for overshoot

// Keys' cubic convolution kernel with a = -0.5 (PIL's BICUBIC), support 2.
double bicubic(double x) {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}

// Per output index: the first source index, how many taps, and the fixed-point weights.
struct Coeffs {
  int ksize = 0;
  std::vector<int> first, count;  // [out]
  std::vector<int32_t> k;         // [out, ksize]
};

// PIL's precompute_coeffs + normalize_coeffs_8bpc for the interval [0, in_size) mapped onto
// out_size pixels. The expressions keep PIL's order of floating-point operations so that the
// weights, and therefore the rounded pixels, are the same.
Coeffs make_coeffs(int in_size, int out_size) {
  const double support_base = 2.0;
  double scale = double(in_size) / out_size;
  double filterscale = scale < 1.0 ? 1.0 : scale;  // widen the kernel when downscaling (antialias)
  double support = support_base * filterscale;
  Coeffs c;
  c.ksize = int(std::ceil(support)) * 2 + 1;
  c.first.resize(size_t(out_size));
  c.count.resize(size_t(out_size));
  c.k.assign(size_t(out_size) * size_t(c.ksize), 0);
  std::vector<double> w(size_t(c.ksize));
  for (int xx = 0; xx < out_size; ++xx) {
    double center = (xx + 0.5) * scale;
    double ss = 1.0 / filterscale;
    int xmin = int(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = int(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      double v = bicubic((x + xmin - center + 0.5) * ss);
      w[size_t(x)] = v;
      ww += v;
    }
    int32_t* k = &c.k[size_t(xx) * size_t(c.ksize)];
    for (int x = 0; x < xmax; ++x) {
      double v = ww != 0.0 ? w[size_t(x)] / ww : w[size_t(x)];
      k[x] = v < 0 ? int32_t(-0.5 + v * (1 << kPrecisionBits)) : int32_t(0.5 + v * (1 << kPrecisionBits));
    }
    c.first[size_t(xx)] = xmin;
    c.count[size_t(xx)] = xmax;
  }
  return c;
}

inline uint8_t clip8(int32_t v) {
  v >>= kPrecisionBits;  // arithmetic shift: floor, as PIL's table lookup
  return uint8_t(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// Horizontal pass: rows [0, rows) of `src` (row stride `src_stride` bytes, C channels) to the
// output columns [x0, x0 + w), written to `dst` rows of w * C bytes.
template <int C>
void horizontal(const uint8_t* src, size_t src_stride, int rows,  // [rows, *, C]
                const Coeffs& co, int x0, int w, uint8_t* dst) {   // [rows, w, C]
  for (int y = 0; y < rows; ++y) {
    const uint8_t* in = src + size_t(y) * src_stride;
    uint8_t* out = dst + size_t(y) * size_t(w) * C;
    for (int xx = 0; xx < w; ++xx) {
      const int first = co.first[size_t(x0 + xx)], n = co.count[size_t(x0 + xx)];
      const int32_t* k = &co.k[size_t(x0 + xx) * size_t(co.ksize)];
      int32_t acc[C];
      for (int c = 0; c < C; ++c) acc[c] = 1 << (kPrecisionBits - 1);
      const uint8_t* p = in + size_t(first) * C;
      for (int t = 0; t < n; ++t)
        for (int c = 0; c < C; ++c) acc[c] += int32_t(p[t * C + c]) * k[t];
      for (int c = 0; c < C; ++c) out[xx * C + c] = clip8(acc[c]);
    }
  }
}

// Vertical pass: output rows [y0, y0 + h) from `src` rows (row r of src = source row r + src_row0),
// each row `row_bytes` wide.
void vertical(const uint8_t* src, size_t src_stride, int src_row0,  // [*, row_bytes]
              const Coeffs& co, int y0, int h, size_t row_bytes, uint8_t* dst) {  // [h, row_bytes]
  std::vector<int32_t> acc(row_bytes);
  for (int yy = 0; yy < h; ++yy) {
    const int first = co.first[size_t(y0 + yy)], n = co.count[size_t(y0 + yy)];
    const int32_t* k = &co.k[size_t(y0 + yy) * size_t(co.ksize)];
    std::fill(acc.begin(), acc.end(), 1 << (kPrecisionBits - 1));
    for (int t = 0; t < n; ++t) {
      const uint8_t* in = src + size_t(first + t - src_row0) * src_stride;
      const int32_t kt = k[t];
      for (size_t i = 0; i < row_bytes; ++i) acc[i] += int32_t(in[i]) * kt;
    }
    uint8_t* out = dst + size_t(yy) * row_bytes;
    for (size_t i = 0; i < row_bytes; ++i) out[i] = clip8(acc[i]);
  }
}

void horizontal_any(int C, const uint8_t* src, size_t stride, int rows, const Coeffs& co, int x0, int w, uint8_t* dst) {
  switch (C) {
    case 1: horizontal<1>(src, stride, rows, co, x0, w, dst); break;
    case 2: horizontal<2>(src, stride, rows, co, x0, w, dst); break;
    case 3: horizontal<3>(src, stride, rows, co, x0, w, dst); break;
    case 4: horizontal<4>(src, stride, rows, co, x0, w, dst); break;
    default: CLIPCU_FAIL("resize: " << C << " channels");
  }
}

// PIL's "RGBA" -> "RGBa" (and "LA" -> "La"): colour * alpha / 255 rounded (MULDIV255).
inline uint8_t muldiv255(unsigned a, unsigned b) {
  unsigned t = a * b + 128;
  return uint8_t(((t >> 8) + t) >> 8);
}
// PIL's "RGBa" -> "RGBA": colour * 255 / alpha truncated and clamped; alpha 0 and 255 untouched.
inline uint8_t unpremultiply(unsigned v, unsigned alpha) {
  if (alpha == 0 || alpha == 255) return uint8_t(v);
  unsigned r = 255 * v / alpha;
  return uint8_t(r > 255 ? 255 : r);
}

Image crop(const Image& img, Rect r) {
  Image out;
  out.width = r.w;
  out.height = r.h;
  out.channels = img.channels;
  out.palette = img.palette;
  const size_t C = size_t(img.channels);
  out.pixels.resize(size_t(r.w) * size_t(r.h) * C);
  for (int y = 0; y < r.h; ++y)
    std::memcpy(out.row(y), img.row(r.y + y) + size_t(r.x) * C, size_t(r.w) * C);
  return out;
}

// PIL's nearest-neighbour resize (ImagingScaleAffine): source position accumulated per pixel.
Image resize_nearest(const Image& img, Rect src, int out_w, int out_h, Rect keep) {
  const double ax = double(src.w) / out_w, ay = double(src.h) / out_h;
  std::vector<int> xin(static_cast<size_t>(out_w)), yin(static_cast<size_t>(out_h));
  double xo = ax * 0.5;
  for (int x = 0; x < out_w; ++x, xo += ax) xin[size_t(x)] = xo < 0.0 ? -1 : int(xo);
  double yo = ay * 0.5;
  for (int y = 0; y < out_h; ++y, yo += ay) yin[size_t(y)] = yo < 0.0 ? -1 : int(yo);
  Image out;
  out.width = keep.w;
  out.height = keep.h;
  out.channels = img.channels;
  out.palette = img.palette;
  const size_t C = size_t(img.channels);
  out.pixels.assign(size_t(keep.w) * size_t(keep.h) * C, 0);
  for (int y = 0; y < keep.h; ++y) {
    int sy = yin[size_t(keep.y + y)];
    if (sy < 0 || sy >= src.h) continue;
    const uint8_t* in = img.row(src.y + sy) + size_t(src.x) * C;
    uint8_t* o = out.row(y);
    for (int x = 0; x < keep.w; ++x) {
      int sx = xin[size_t(keep.x + x)];
      if (sx < 0 || sx >= src.w) continue;
      std::memcpy(o + size_t(x) * C, in + size_t(sx) * C, C);
    }
  }
  return out;
}

}  // namespace

Image resize_bicubic(const Image& img, Rect src, int out_w, int out_h, Rect keep) {
  const int C = img.channels;
  CLIPCU_CHECK(C >= 1 && C <= 4, "resize: image with " << C << " channels");
  CLIPCU_CHECK(img.pixels.size() == size_t(img.width) * size_t(img.height) * size_t(C),
               "resize: pixel buffer of " << img.pixels.size() << " bytes for " << img.width << "x" << img.height << "x" << C);
  CLIPCU_CHECK(src.w > 0 && src.h > 0 && src.x >= 0 && src.y >= 0 && src.x + src.w <= img.width && src.y + src.h <= img.height,
               "resize: source box (" << src.x << ", " << src.y << ", " << src.w << ", " << src.h << ") outside the "
                                      << img.width << "x" << img.height << " image");
  CLIPCU_CHECK(out_w > 0 && out_h > 0, "resize: output size " << out_w << "x" << out_h);
  CLIPCU_CHECK(keep.w > 0 && keep.h > 0 && keep.x >= 0 && keep.y >= 0 && keep.x + keep.w <= out_w && keep.y + keep.h <= out_h,
               "resize: kept box (" << keep.x << ", " << keep.y << ", " << keep.w << ", " << keep.h << ") outside the "
                                    << out_w << "x" << out_h << " output");

  // Same size: PIL returns a copy (no premultiplication round trip).
  if (src.w == out_w && src.h == out_h) return crop(img, Rect{src.x + keep.x, src.y + keep.y, keep.w, keep.h});
  if (img.palette) return resize_nearest(img, src, out_w, out_h, keep);

  const bool alpha = C == 2 || C == 4;
  const size_t Cs = size_t(C);
  const bool need_h = out_w != src.w, need_v = out_h != src.h;
  Coeffs ch, cv;
  if (need_h) ch = make_coeffs(src.w, out_w);
  if (need_v) cv = make_coeffs(src.h, out_h);

  // Source rows read by the kept output rows (bounds are monotonic in the output index).
  int row0 = keep.y, row1 = keep.y + keep.h;
  if (need_v) {
    row0 = cv.first[size_t(keep.y)];
    row1 = cv.first[size_t(keep.y + keep.h - 1)] + cv.count[size_t(keep.y + keep.h - 1)];
  }
  // Source columns read by the kept output columns.
  int col0 = keep.x, col1 = keep.x + keep.w;
  if (need_h) {
    col0 = ch.first[size_t(keep.x)];
    col1 = ch.first[size_t(keep.x + keep.w - 1)] + ch.count[size_t(keep.x + keep.w - 1)];
  }

  // The source as the passes see it: a pointer to (col0, row0) of S, premultiplied when alpha.
  std::vector<uint8_t> pre;
  const uint8_t* base = img.row(src.y + row0) + size_t(src.x + col0) * Cs;
  size_t stride = size_t(img.width) * Cs;
  if (alpha) {
    const size_t wb = size_t(col1 - col0) * Cs;
    pre.resize(size_t(row1 - row0) * wb);
    for (int y = row0; y < row1; ++y) {
      const uint8_t* in = img.row(src.y + y) + size_t(src.x + col0) * Cs;
      uint8_t* o = pre.data() + size_t(y - row0) * wb;
      for (int x = 0; x < col1 - col0; ++x) {
        const uint8_t* p = in + size_t(x) * Cs;
        uint8_t* q = o + size_t(x) * Cs;
        const unsigned a = p[Cs - 1];
        for (size_t c = 0; c + 1 < Cs; ++c) q[c] = muldiv255(p[c], a);
        q[Cs - 1] = uint8_t(a);
      }
    }
    base = pre.data();
    stride = wb;
  }

  // Horizontal pass over rows [row0, row1): the kept columns, or the columns as they are.
  std::vector<uint8_t> mid;
  const size_t row_bytes = size_t(keep.w) * Cs;
  const uint8_t* vsrc;
  size_t vstride;
  if (need_h) {
    // Coefficients index the whole source row; shift them to start at col0.
    for (int xx = keep.x; xx < keep.x + keep.w; ++xx) ch.first[size_t(xx)] -= col0;
    mid.resize(size_t(row1 - row0) * row_bytes);
    horizontal_any(C, base, stride, row1 - row0, ch, keep.x, keep.w, mid.data());
    vsrc = mid.data();
    vstride = row_bytes;
  } else {
    vsrc = base;  // columns [keep.x, keep.x + keep.w) start at col0 = keep.x
    vstride = stride;
  }

  Image out;
  out.width = keep.w;
  out.height = keep.h;
  out.channels = C;
  out.pixels.resize(size_t(keep.h) * row_bytes);
  if (need_v) {
    vertical(vsrc, vstride, row0, cv, keep.y, keep.h, row_bytes, out.pixels.data());
  } else {
    for (int y = 0; y < keep.h; ++y) std::memcpy(out.row(y), vsrc + size_t(y) * vstride, row_bytes);
  }

  if (alpha) {
    const size_t np = size_t(keep.w) * size_t(keep.h);
    uint8_t* p = out.pixels.data();
    for (size_t i = 0; i < np; ++i, p += Cs)
      for (size_t c = 0; c + 1 < Cs; ++c) p[c] = unpremultiply(p[c], p[Cs - 1]);
  }
  return out;
}

Image resize_bicubic(const Image& img, int out_w, int out_h) {
  return resize_bicubic(img, Rect{0, 0, img.width, img.height}, out_w, out_h, Rect{0, 0, out_w, out_h});
}

void resized_size(int width, int height, int N, int* out_w, int* out_h) {
  CLIPCU_CHECK(width > 0 && height > 0 && N > 0, "resize: image " << width << "x" << height << " to " << N);
  // Python: int(N * long / short), the product exact, the quotient a correctly rounded double.
  if (width <= height) {
    *out_w = N;
    *out_h = int(double(int64_t(N) * height) / double(width));
  } else {
    *out_h = N;
    *out_w = int(double(int64_t(N) * width) / double(height));
  }
}

Rect center_crop_rect(int width, int height, int crop_w, int crop_h) {
  CLIPCU_CHECK(crop_w <= width && crop_h <= height,
               "center crop " << crop_w << "x" << crop_h << " larger than the " << width << "x" << height << " image");
  // int(round(d / 2.0)) with Python's round: an odd d gives k + 0.5, rounded to the even one.
  auto offset = [](int d) {
    int k = d / 2;
    if (d % 2 == 1 && k % 2 == 1) ++k;
    return k;
  };
  return Rect{offset(width - crop_w), offset(height - crop_h), crop_w, crop_h};
}

Image resize_center_crop(const Image& img, int N) {
  int W = 0, H = 0;
  resized_size(img.width, img.height, N, &W, &H);
  Rect keep = center_crop_rect(W, H, N, N);
  return to_rgb(resize_bicubic(img, Rect{0, 0, img.width, img.height}, W, H, keep));
}

Rect random_resized_crop_rect(int width, int height, Rng& rng, const CropParams& p) {
  CLIPCU_CHECK(width > 0 && height > 0, "random resized crop of a " << width << "x" << height << " image");
  const double area = double(width) * double(height);
  const double log_lo = std::log(p.ratio_min), log_hi = std::log(p.ratio_max);
  for (int attempt = 0; attempt < 10; ++attempt) {
    double target_area = area * (p.scale_min + (p.scale_max - p.scale_min) * rng.uniform());
    double aspect = std::exp(log_lo + (log_hi - log_lo) * rng.uniform());
    int w = int(std::nearbyint(std::sqrt(target_area * aspect)));  // Python round: halves to even
    int h = int(std::nearbyint(std::sqrt(target_area / aspect)));
    if (w > 0 && w <= width && h > 0 && h <= height) {
      int top = int(rng.below(uint64_t(height - h + 1)));
      int left = int(rng.below(uint64_t(width - w + 1)));
      return Rect{left, top, w, h};
    }
  }
  // Fallback: the central crop with the aspect ratio clamped into the allowed range.
  double in_ratio = double(width) / double(height);
  int w = width, h = height;
  if (in_ratio < p.ratio_min) {
    h = int(std::nearbyint(w / p.ratio_min));
  } else if (in_ratio > p.ratio_max) {
    w = int(std::nearbyint(h * p.ratio_max));
  }
  w = std::clamp(w, 1, width);
  h = std::clamp(h, 1, height);
  return Rect{(width - w) / 2, (height - h) / 2, w, h};
}

Image random_resized_crop(const Image& img, int N, Rng& rng, const CropParams& p) {
  Rect r = random_resized_crop_rect(img.width, img.height, rng, p);
  return to_rgb(resize_bicubic(img, r, N, N, Rect{0, 0, N, N}));
}

void normalize_to_chw(const Image& rgb, float* out, const std::array<float, 3>& mean, const std::array<float, 3>& std) {
  CLIPCU_CHECK(rgb.channels == 3, "normalize: expected an RGB image, got " << rgb.channels << " channels");
  const size_t np = size_t(rgb.width) * size_t(rgb.height);
  const uint8_t* p = rgb.pixels.data();
  for (size_t c = 0; c < 3; ++c) {
    // torchvision in float32: (v / 255 - mean) / std, in this order
    float lut[256];
    for (int v = 0; v < 256; ++v) lut[v] = (float(v) / 255.0f - mean[c]) / std[c];
    float* o = out + c * np;
    for (size_t i = 0; i < np; ++i) o[i] = lut[p[i * 3 + c]];
  }
}

Tensor preprocess(const Image& img, int N, bool augment, Rng* rng) {
  CLIPCU_CHECK(!augment || rng, "preprocess: augmentation needs a random generator");
  Image rgb = augment ? random_resized_crop(img, N, *rng) : resize_center_crop(img, N);
  Tensor t = Tensor::empty({3, N, N}, DType::F32);
  normalize_to_chw(rgb, t.data<float>());
  return t;
}

}  // namespace clipcu::data
