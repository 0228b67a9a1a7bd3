// Index math of the Hopper implicit-GEMM convolution (kernels/cuda/conv_wgmma.cu): where each
// 16-byte chunk (8 bf16) of a GEMM operand tile comes from in the activation tensors. Plain
// code, includable from host C++ too, so that tests/test_cuda_conv.cpp checks it (and a whole
// convolution computed through it) on the CPU, without a GPU.
//
// Two layouts of an activation tensor [N][C][H][W] are gathered from:
//   NHWC (a copy the launcher makes, counted in its time, its channels padded with zeros to a
//     multiple of 8: C below is that padded count): a chunk is 8 consecutive channels of one
//     pixel at one kernel offset (kh, kw). The GEMM's K order over a kernel window is (kh, kw, c),
//     c fastest.
//   NCHW (the tensor itself, 1x1 stride-1 layers only): a chunk is 8 consecutive pixels of one
//     channel of one image; H W % 8 == 0, so a chunk never crosses an image.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define CLIPCU_CONV_HD __host__ __device__ __forceinline__
#else
#define CLIPCU_CONV_HD inline
#endif

namespace clipcu::cuda::conv_gather {

// Which chunks of a stage tile a loader thread copies (256 threads; consecutive threads copy
// consecutive chunks of a row, so global reads coalesce). A tile has kRows rows along M or N and
// 64 along K, in 16-byte chunks of 8 elements:
//   K-major (rows along M or N, 8 chunks of K each): chunk column ct = tid % 8, rows
//     rt + 32 i (rt = tid / 8), i < kRows / 32;
//   MN-major (64 rows along K, kRows / 8 chunks of M or N each): chunk column
//     ct = tid % (kRows / 8), rows rt + step i (rt = tid / (kRows / 8), step = 256 / (kRows / 8)),
//     i < 64 / step.
// Every chunk of the tile once (tests/test_cuda_conv.cpp checks it).
constexpr int kLoaderThreads = 256, kStageK = 64;
template <int kRows>
struct KMajorRoles {
  static constexpr int kPer = kRows / 32;
  CLIPCU_CONV_HD static int ct(int tid) { return tid % 8; }
  CLIPCU_CONV_HD static int row(int tid, int i) { return tid / 8 + 32 * i; }
};
template <int kRows>
struct MnMajorRoles {
  static constexpr int kChunks = kRows / 8, kStep = kLoaderThreads / kChunks, kPer = kStageK / kStep;
  CLIPCU_CONV_HD static int ct(int tid) { return tid % kChunks; }
  CLIPCU_CONV_HD static int row(int tid, int i) { return tid / kChunks + kStep * i; }
};

// Division of unsigned 32-bit numerators below 2^31 by a fixed divisor in [1, 2^31) with a
// multiply-high, an add and a shift: q = (umulhi(n, m) + n) >> s, s = ceil(log2 d),
// m = floor(2^32 (2^s - d) / d) + 1 (m < 2^32). umulhi(n, m) <= n < 2^31, so the add cannot wrap.
struct FastDiv {
  uint32_t d = 1, m = 1, s = 0;
  FastDiv() = default;
  explicit FastDiv(uint32_t divisor) : d(divisor) {  // host side; divisor in [1, 2^31)
    while ((uint64_t(1) << s) < divisor) ++s;
    m = uint32_t(((uint64_t(1) << 32) * ((uint64_t(1) << s) - divisor)) / divisor + 1);
  }
  CLIPCU_CONV_HD uint32_t div(uint32_t n) const {
#if defined(__CUDA_ARCH__)
    const uint32_t hi = __umulhi(n, m);
#else
    const uint32_t hi = uint32_t((uint64_t(n) * m) >> 32);
#endif
    return (hi + n) >> s;
  }
};

// An NHWC gather: the GEMM walks `rows` pixels p = (img, r, q) of an RH x RW grid (forward and
// backward-filter: the output grid; backward-data: the input grid) and K (or N) in chunks of
// the (kh, kw, c) order over the source tensor [N][SH][SW][C] (forward and backward-filter: x;
// backward-data: dy). Source pixel of (p, kh, kw):
//   forward / backward-filter: (r s - pad + kh, q s - pad + kw)
//   backward-data:             ((r + pad - kh) / s, (q + pad - kw) / s) where both divide exactly
// zero outside the source. Numbers of pixels and of K-order entries stay below 2^31 (the
// launcher checks), so the pixel math is 32-bit; the element offsets are 64-bit.
struct ImgGeom {
  int32_t C = 0, SH = 0, SW = 0, stride = 1, pad = 0;
  FastDiv rw, rhw, c, kw;  // by RW, RH * RW, C, KW
};

// Host side: the gather of a source [N][SH][SW][C] by the RH x RW grid of the GEMM's pixels.
inline ImgGeom img_geom(int64_t C, int64_t SH, int64_t SW, int64_t RH, int64_t RW, int64_t KW, int64_t stride,
                        int64_t pad) {
  ImgGeom g;
  g.C = int32_t(C), g.SH = int32_t(SH), g.SW = int32_t(SW), g.stride = int32_t(stride), g.pad = int32_t(pad);
  g.rw = FastDiv(uint32_t(RW)), g.rhw = FastDiv(uint32_t(RH * RW)), g.c = FastDiv(uint32_t(C));
  g.kw = FastDiv(uint32_t(KW));
  return g;
}

// What a pixel row needs across K steps: its image's first source pixel and the row's origin
// (forward: r s - pad, q s - pad; backward-data: r + pad, q + pad); base < 0: past the last pixel.
struct ImgRow {
  int32_t base = -1, yh = 0, yw = 0;
};
template <bool kDgrad>
CLIPCU_CONV_HD ImgRow img_row(const ImgGeom& g, int64_t p, int64_t rows) {
  const uint32_t img = g.rhw.div(uint32_t(p)), rem = uint32_t(p) - img * g.rhw.d;
  const uint32_t y = g.rw.div(rem), x = rem - y * g.rw.d;
  ImgRow r;
  r.base = p < rows ? int32_t(img) * g.SH * g.SW : -1;
  if constexpr (kDgrad) {
    r.yh = int32_t(y) + g.pad, r.yw = int32_t(x) + g.pad;
  } else {
    r.yh = int32_t(y) * g.stride - g.pad, r.yw = int32_t(x) * g.stride - g.pad;
  }
  return r;
}

// A chunk of the (kh, kw, c) order: k its first index (a multiple of 8); kh < 0: past the end
// (k >= KH KW C).
struct ImgChunk {
  int32_t kh = -1, kw = 0, c = 0;
};
CLIPCU_CONV_HD ImgChunk img_chunk(const ImgGeom& g, int64_t k, int64_t K) {
  const uint32_t khw = g.c.div(uint32_t(k)), kh = g.kw.div(khw);
  ImgChunk ch;
  ch.c = int32_t(uint32_t(k) - khw * g.c.d);
  ch.kh = k < K ? int32_t(kh) : -1;
  ch.kw = int32_t(khw - kh * g.kw.d);
  return ch;
}

// The element offset of the chunk in the NHWC source, or -1 for a chunk of zeros. Selects, not
// branches, on the device (the loaders call it for every chunk).
template <bool kDgrad>
CLIPCU_CONV_HD int64_t img_offset(const ImgGeom& g, const ImgRow& r, const ImgChunk& ch) {
  bool ok = r.base >= 0 && ch.kh >= 0;
  int32_t sh, sw;
  if constexpr (!kDgrad) {
    sh = r.yh + ch.kh, sw = r.yw + ch.kw;
  } else {
    sh = r.yh - ch.kh, sw = r.yw - ch.kw;
    if (g.stride != 1) {  // the stride must divide: only then does an output pixel reach here
      ok = ok && sh >= 0 && sw >= 0 && sh % g.stride == 0 && sw % g.stride == 0;
      sh /= g.stride, sw /= g.stride;
    }
  }
  ok = ok && uint32_t(sh) < uint32_t(g.SH) && uint32_t(sw) < uint32_t(g.SW);
  return ok ? int64_t(r.base + sh * g.SW + sw) * g.C + ch.c : -1;
}

// An NCHW gather over [N][C][HW] (HW % 8 == 0): the chunk of pixels p0 .. p0 + 7 (p0 % 8 == 0,
// pixels counted over all images) of channel c; -1 outside (p0 >= N HW or c >= C).
struct NchwGeom {
  int32_t C = 0;
  int64_t pixels = 0;  // N HW
  FastDiv hw;
};
inline NchwGeom nchw_geom(int64_t N, int64_t C, int64_t HW) {  // host side
  NchwGeom g;
  g.C = int32_t(C), g.pixels = N * HW, g.hw = FastDiv(uint32_t(HW));
  return g;
}
CLIPCU_CONV_HD int64_t nchw_offset(const NchwGeom& g, int64_t p0, int64_t c) {
  const uint32_t img = g.hw.div(uint32_t(p0));  // a select below, not a branch (see img_offset)
  const int64_t off = (int64_t(img) * g.C + c) * g.hw.d + (uint32_t(p0) - img * g.hw.d);
  return p0 < g.pixels && c < g.C ? off : -1;
}

}  // namespace clipcu::cuda::conv_gather
