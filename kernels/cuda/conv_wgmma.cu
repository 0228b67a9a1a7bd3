// The Hopper implicit-GEMM convolution (ConvKernel::Wgmma, bf16 on sm_90a): every pass is one
// GEMM on the wgmma pipeline of kernels/cuda/common/wgmma.cuh (128 x 128 block tiles, or
// 64 x 256 for M <= 64; two warpgroups, 6 or 5 cp.async stages, swizzled shared tiles read by
// the tensor cores directly), with
// operand loaders that gather 16-byte chunks straight from the activations
// (kernels/cuda/conv_gather.h: the index math, checked on the CPU by tests/test_cuda_conv.cpp).
//
//   pass             M      N             K            A (tile)                  B (tile)
//   forward          Cout   N OH OW       KH KW Cin'   W [Cout][KH KW Cin'] (K)  x gathered (K)
//   backward-data    Cin    N H W         KH KW Cout'  W [Cin][KH KW Cout'] (K)  dy gathered (K)
//   backward-filter  Cout   KH KW Cin'    N OH OW      dy (K or MN)              x gathered (MN)
// (C' = C rounded up to a multiple of 8 on the Nhwc path, C itself on the Direct path)
//
// Nhwc path (any kernel, stride, padding and channel count): the activations a pass gathers are
// first copied to NHWC (x for forward and backward-filter, dy for backward-data) with the
// channels padded with zeros to a multiple of 8, so that a chunk is 8 channels of one pixel at one
// kernel offset, zero outside the image (and, for backward-data with stride > 1, where the stride
// does not divide). Backward-filter's dy (A) is read in place as on the direct path (K-major
// chunks of 8 pixels, 16-byte aligned) when OH OW % 8 == 0, else from an NHWC copy too. The
// weights are copied to the (kh, kw, c) order of K, padded the same way (the stem's Cin = 3
// becomes 8: K = 72 for its 3x3). All copies are one batched transpose kernel, in the caller's
// workspace and inside the pass's time.
// Direct path (1x1, stride 1, no padding, H W % 8 == 0, 16-byte aligned tensors, Cin and Cout
// multiples of 8): the products are plain GEMMs over NCHW, no copies: forward A = W [Cout][Cin]
// and B = x as [Cin][pixels] (MN-major chunks of 8 pixels), backward-data A = W^T (MN-major)
// and B = dy the same way, backward-filter A = dy and B = x as [channels][pixels] (K-major).
//
// Forward and backward-data write NCHW straight from the epilogue (rows are channels, columns
// consecutive pixels: 4 per lane, one 8-byte access when H W % 4 == 0), with the bias (forward)
// or adding to dx (backward-data). Backward-filter cuts K into splits (a count that depends on
// the shape only) whose float partial sums a second kernel adds in split order into dw, in
// dw's [Cout][Cin][KH][KW] order (deterministic, no atomics).
#include "kernels/cuda/conv_wgmma.cuh"

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/common/check.h"
#include "kernels/cuda/common/device.cuh"
#include "kernels/cuda/common/wgmma.cuh"
#include "kernels/cuda/conv_gather.h"

namespace clipcu::cuda::convwg {

namespace {

using namespace conv_gather;
using tc::BK;
using tc::kThreads;
static_assert(kLoaderThreads == kThreads && kStageK == BK, "conv_gather.h's loader roles fit the pipeline");
// backward-filter split-K: about two waves of a 132-SM GPU (a constant, not the device's SM
// count, so that the partial sums and their order do not depend on the machine)
constexpr int64_t kSplitTargetBlocks = 264;
constexpr size_t kMaxPartialBytes = size_t(256) << 20;

size_t align256(size_t b) { return (b + 255) / 256 * 256; }

// The block tile: 128 x 128, or 64 x 256 when M (the output channels, Cin for backward-data)
// is at most 64 (RN50's first stage and stem: a 128-row tile would be half empty or worse).
// `wide`: the product may use 64 x 256. The NHWC backward-filter may not: with its B loader
// (a pixel decode per row and stage, 8 rows per thread at 256 columns) ptxas serializes the
// wgmmas (warning C7515), which would cost more than the empty rows.
struct Tile {
  int bm, bn;
};
Tile tile_for(int64_t M, bool wide) { return wide && M <= 64 ? Tile{64, 256} : Tile{128, 128}; }

// ---------------------------------------------------------------- operand loaders
// One GEMM operand: a dense row-major matrix or an activation gathered as conv_gather.h says.
struct Operand {
  const bf16* ptr = nullptr;
  int64_t mn = 0;  // its extent along M (A) or N (B); a dense [k][mn] operand's row length
  int64_t k = 0;   // its extent along K
  ImgGeom img;     // Img loaders
  NchwGeom nchw;   // Nchw loaders
};

#if CLIPCU_HAS_WGMMA  // the loaders exist in sm_90a device code only (the kernel's body)
// Thread roles in a stage tile: conv_gather.h's KMajorRoles / MnMajorRoles for this thread.
template <class Roles>
struct Role {
  static constexpr int kPer = Roles::kPer;
  __device__ static int ct() { return Roles::ct(int(threadIdx.x)); }
  __device__ static int row(int i) { return Roles::row(int(threadIdx.x), i); }
};
template <int kRows>
using KMaj = Role<KMajorRoles<kRows>>;
template <int kRows>
using MnMaj = Role<MnMajorRoles<kRows>>;

__device__ __forceinline__ void copy_chunk(bf16* dst, const bf16* base, int64_t off) {
  tc::cp_async16(dst, off >= 0 ? base + off : base, off >= 0 ? 16 : 0);
}

// A row-major [mn][k] matrix (K-major tile): the weights of forward and backward-data.
template <int kRows>
struct DenseK {
  static constexpr bool kMn = false;
  const Operand* o;
  int64_t mn0;
  __device__ void init(const Operand& op, int64_t m0) { o = &op, mn0 = m0; }
  __device__ void load(bf16* s, int64_t k0) const {
    tc::load_stage_tile<tc::KMajorTile, kRows, BK / 8>(s, o->ptr, o->mn, o->k, mn0, k0);
  }
};
// A row-major [k][mn] matrix (MN-major tile): dy in NHWC for backward-filter, W^T of the 1x1
// backward-data.
template <int kRows>
struct DenseMn {
  static constexpr bool kMn = true;
  const Operand* o;
  int64_t mn0;
  __device__ void init(const Operand& op, int64_t m0) { o = &op, mn0 = m0; }
  __device__ void load(bf16* s, int64_t k0) const {
    tc::load_stage_tile<tc::MnMajorTile, BK, kRows / 8>(s, o->ptr, o->k, o->mn, k0, mn0);
  }
};
// Rows are pixels, K the (kh, kw, c) order of an NHWC tensor (K-major): B of forward and
// backward-data. A thread's pixel rows are fixed for the block.
template <bool kDgrad, int kRows>
struct ImgK {
  static constexpr bool kMn = false;
  using L = KMaj<kRows>;
  const Operand* o;
  ImgRow rows[L::kPer];
  __device__ void init(const Operand& op, int64_t mn0) {
    o = &op;
#pragma unroll
    for (int i = 0; i < L::kPer; ++i) rows[i] = img_row<kDgrad>(op.img, mn0 + L::row(i), op.mn);
  }
  __device__ void load(bf16* s, int64_t k0) const {
    const ImgChunk ch = img_chunk(o->img, k0 + 8 * L::ct(), o->k);
#pragma unroll
    for (int i = 0; i < L::kPer; ++i)
      copy_chunk(s + tc::KMajorTile::offset(L::row(i), 8 * L::ct()), o->ptr, img_offset<kDgrad>(o->img, rows[i], ch));
  }
};
template <int kRows>
using ImgKFwd = ImgK<false, kRows>;
template <int kRows>
using ImgKDgrad = ImgK<true, kRows>;
// Rows (K) are output pixels, columns (N) the (kh, kw, c) order of NHWC x (MN-major): B of
// backward-filter. A thread's chunk of the (kh, kw, c) order is fixed for the block.
template <int kRows>
struct ImgMn {
  static constexpr bool kMn = true;
  using L = MnMaj<kRows>;
  const Operand* o;
  ImgChunk ch;
  __device__ void init(const Operand& op, int64_t mn0) {
    o = &op;
    ch = img_chunk(op.img, mn0 + 8 * L::ct(), op.mn);
  }
  __device__ void load(bf16* s, int64_t k0) const {
#pragma unroll
    for (int i = 0; i < L::kPer; ++i) {
      const ImgRow row = img_row<false>(o->img, k0 + L::row(i), o->k);
      copy_chunk(s + tc::MnMajorTile::offset(L::row(i), 8 * L::ct()), o->ptr, img_offset<false>(o->img, row, ch));
    }
  }
};
// Rows (K) are channels, columns (M or N) pixels of an NCHW tensor (MN-major): B of the 1x1
// forward and backward-data.
template <int kRows>
struct NchwMn {
  static constexpr bool kMn = true;
  using L = MnMaj<kRows>;
  // the thread's pixel chunk is fixed: its channel-0 offset once, then one multiply-add per row
  const bf16* ptr;
  int64_t base, hw;
  int32_t C;
  __device__ void init(const Operand& op, int64_t mn0) {
    ptr = op.ptr, hw = op.nchw.hw.d, C = op.nchw.C;
    const int64_t p0 = mn0 + 8 * L::ct();
    base = p0 < op.nchw.pixels ? nchw_offset(op.nchw, p0, 0) : -1;
  }
  __device__ void load(bf16* s, int64_t k0) const {
#pragma unroll
    for (int i = 0; i < L::kPer; ++i) {
      const int64_t c = k0 + L::row(i);
      copy_chunk(s + tc::MnMajorTile::offset(L::row(i), 8 * L::ct()), ptr, base >= 0 && c < C ? base + c * hw : -1);
    }
  }
};
// Rows (M or N) are channels, K pixels of an NCHW tensor (K-major): A and B of the 1x1
// backward-filter, and A (dy in place) of the NHWC backward-filter when OH OW % 8 == 0.
template <int kRows>
struct NchwK {
  static constexpr bool kMn = false;
  using L = KMaj<kRows>;
  const Operand* o;
  int64_t c0;
  __device__ void init(const Operand& op, int64_t mn0) { o = &op, c0 = mn0; }
  __device__ void load(bf16* s, int64_t k0) const {
    const int64_t p0 = k0 + 8 * L::ct();
#pragma unroll
    for (int i = 0; i < L::kPer; ++i)
      copy_chunk(s + tc::KMajorTile::offset(L::row(i), 8 * L::ct()), o->ptr, nchw_offset(o->nchw, p0, c0 + L::row(i)));
  }
};
#else
template <int>
struct DenseK;
template <int>
struct DenseMn;
template <bool, int>
struct ImgK;
template <int kRows>
using ImgKFwd = ImgK<false, kRows>;
template <int kRows>
using ImgKDgrad = ImgK<true, kRows>;
template <int>
struct ImgMn;
template <int>
struct NchwMn;
template <int>
struct NchwK;
#endif

// ---------------------------------------------------------------- the kernel
enum class Out { Store, Add, Partial };
struct Params {
  Operand a, b;
  int64_t M = 0, Ng = 0, K = 0;
  int64_t tiles_m = 0;  // launch() sets it for the tile it picks
  int64_t k_chunk = 0;  // K per split, a multiple of BK (all of K without splits)
  Out out_mode = Out::Store;
  bf16* out = nullptr;          // Store / Add: NCHW [N][M][plane]
  const bf16* bias = nullptr;   // Store: [M] or nullptr
  float* partial = nullptr;     // Partial: [splits][M][Ng]
  FastDiv plane;                // Store / Add: the output grid's pixels per image
  bool out_vec = false;         // Store / Add: plane % 4 == 0 and out 8-byte aligned
};

// grid: (tiles_m * tiles_n, splits); block: 256 threads; dynamic shared memory
// tc::Geo<BM, BN>::kSmemBytes. The parameters are __grid_constant__: the loaders keep pointers
// to their operands in it. Tiles walk M fastest: the blocks resident at one time share their B
// columns (activations) and read the small weight matrix from L2.
template <int BM, int BN, class AL, class BL>
__global__ void __launch_bounds__(kThreads, 1) conv_wgmma_kernel(const __grid_constant__ Params p) {
#if CLIPCU_HAS_WGMMA
  using G = tc::Geo<BM, BN>;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const tc::Stages<BM, BN> sm = tc::stages<BM, BN>(smem_raw);
  const int64_t t = blockIdx.x;
  const int64_t m0 = (t % p.tiles_m) * BM, n0 = (t / p.tiles_m) * BN;
  const int64_t k_begin = int64_t(blockIdx.y) * p.k_chunk, k_end = min(p.K, k_begin + p.k_chunk);
  const int64_t KT = k_end > k_begin ? (k_end - k_begin + BK - 1) / BK : 0;
  AL a;
  BL b;
  a.init(p.a, m0);
  b.init(p.b, n0);
  auto load_stage = [&](int stage, int64_t kt) {
    const int64_t k0 = k_begin + kt * BK;
    a.load(sm.as + stage * G::kAElems, k0);
    b.load(sm.bs + stage * G::kBElems, k0);
  };
  float acc[G::kInsts][64];
#pragma unroll
  for (int i = 0; i < G::kInsts; ++i)
#pragma unroll
    for (int e = 0; e < 64; ++e) acc[i][e] = 0.f;
  tc::mainloop<BM, BN, AL::kMn, BL::kMn>(acc, sm, KT, load_stage);

  auto store = [&](int r, int c, const float (&v)[4]) {
    const int64_t m = m0 + r, n = n0 + c;
    if (m >= p.M || n >= p.Ng) return;
    if (p.out_mode == Out::Partial) {
      float* dst = p.partial + (int64_t(blockIdx.y) * p.M + m) * p.Ng + n;
      if (p.out_vec) {
        *reinterpret_cast<float4*>(dst) = make_float4(v[0], v[1], v[2], v[3]);
      } else {
        for (int e = 0; e < 4 && n + e < p.Ng; ++e) dst[e] = v[e];
      }
      return;
    }
    const float bias = p.bias ? to_float(p.bias[m]) : 0.f;
    const bool add = p.out_mode == Out::Add;
    if (p.out_vec) {  // the 4 pixels are in one image: plane % 4 == 0 and n % 4 == 0
      const uint32_t img = p.plane.div(uint32_t(n));
      bf16* dst = p.out + (int64_t(img) * p.M + m) * p.plane.d + (uint32_t(n) - img * p.plane.d);
      float x[4] = {0.f, 0.f, 0.f, 0.f};
      if (add) load_vec<4>(dst, x);
      const float y[4] = {x[0] + v[0] + bias, x[1] + v[1] + bias, x[2] + v[2] + bias, x[3] + v[3] + bias};
      store_vec<4>(dst, y);
    } else {
      for (int e = 0; e < 4 && n + e < p.Ng; ++e) {
        const uint32_t img = p.plane.div(uint32_t(n + e));
        bf16* dst = p.out + (int64_t(img) * p.M + m) * p.plane.d + (uint32_t(n + e) - img * p.plane.d);
        *dst = from_float<bf16>((add ? to_float(*dst) : 0.f) + v[e] + bias);
      }
    }
  };
  tc::epilogue<BM, BN>(acc, sm.base, store);
#else
  (void)p;
  __trap();  // never launched: conv.cu checks conv_wgmma_available first
#endif
}

template <int BM, int BN, class AL, class BL>
void launch_tile(Params p, int64_t splits, cudaStream_t stream) {
  using G = tc::Geo<BM, BN>;
  p.tiles_m = (p.M + BM - 1) / BM;
  const int64_t tiles = p.tiles_m * ((p.Ng + BN - 1) / BN);
  CLIPCU_CUDA_REQUIRE(tiles <= INT32_MAX && splits <= 65535, "conv2d (wgmma): " << tiles << " tiles x " << splits
                                                                                << " splits is too large a grid");
  auto kernel = conv_wgmma_kernel<BM, BN, AL, BL>;
  CLIPCU_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(G::kSmemBytes)));
  kernel<<<dim3(unsigned(tiles), unsigned(splits)), kThreads, G::kSmemBytes, stream>>>(p);
  CLIPCU_CUDA_CHECK_LAUNCH("conv_wgmma_kernel");
}
// The product on the tile tile_for(p.M, kWide) picks (AL, BL: loader templates over the tile's
// rows).
template <template <int> class AL, template <int> class BL, bool kWide = true>
void launch(const Params& p, int64_t splits, cudaStream_t stream) {
  if constexpr (kWide) {  // (only then instantiated)
    if (tile_for(p.M, kWide).bm == 64) {
      launch_tile<64, 256, AL<64>, BL<256>>(p, splits, stream);
      return;
    }
  }
  launch_tile<128, 128, AL<128>, BL<128>>(p, splits, stream);
}

// ---------------------------------------------------------------- copies and the dw reduction
// out[b][s][r] = in[b][r][s] for r < R, 0 for R <= r < ld (ld % 8 == 0, out 16-byte aligned): a
// batch of R x S transposes with the output rows padded to ld: NCHW -> NHWC with the channels
// padded to a multiple of 8 (b = image, r = channel, s = pixel), and the weight reorders. A block
// moves a 64 x 64 tile through shared memory: 16 coalesced 2-byte loads per thread in flight
// (consecutive threads, consecutive s), then two 16-byte stores of 8 consecutive r.
// grid: (ceil(S / 64), ceil(ld / 64), B) with B <= 65535; block: 256 threads.
constexpr int kTrTile = 64, kTrLd = kTrTile + 2;  // +2: column reads of the tile mostly conflict-free
__global__ void __launch_bounds__(256) transpose_kernel(int64_t R, int64_t S, int64_t ld, const bf16* in, bf16* out) {
  __shared__ bf16 tile[kTrTile][kTrLd];  // [r][s]
  const int64_t b = blockIdx.z, r0 = int64_t(blockIdx.y) * kTrTile, s0 = int64_t(blockIdx.x) * kTrTile;
  const bf16* src = in + b * R * S;
  bf16* dst = out + b * ld * S;
  const int tid = int(threadIdx.x);
#pragma unroll
  for (int i = 0; i < kTrTile / 4; ++i) {
    const int r = tid / kTrTile + 4 * i, sl = tid % kTrTile;
    const int64_t gr = r0 + r, gs = s0 + sl;
    tile[r][sl] = gr < R && gs < S ? src[gr * S + gs] : from_float<bf16>(0.f);
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int q = tid + 256 * i, r8 = q % (kTrTile / 8), sl = q / (kTrTile / 8);  // 8 r-chunks per s
    const int64_t gs = s0 + sl, gr = r0 + 8 * r8;
    if (gs >= S || gr >= ld) continue;
    Vec<bf16, 8> v;
#pragma unroll
    for (int j = 0; j < 8; ++j) v.v[j] = tile[8 * r8 + j][sl];
    *reinterpret_cast<Vec<bf16, 8>*>(dst + gs * ld + gr) = v;
  }
}

void transpose(int64_t B, int64_t R, int64_t S, int64_t ld, const bf16* in, bf16* out, cudaStream_t stream) {
  if (B * ld * S == 0) return;
  const int64_t gs = (S + kTrTile - 1) / kTrTile, gr = (ld + kTrTile - 1) / kTrTile;
  CLIPCU_CUDA_REQUIRE(B <= 65535 && gr <= 65535 && gs <= INT32_MAX && ld % 8 == 0 && ld >= R &&
                          detail::aligned_to(out, 16),
                      "conv2d (wgmma): transpose of " << B << " x " << R << " x " << S << " to rows of " << ld);
  transpose_kernel<<<dim3(unsigned(gs), unsigned(gr), unsigned(B)), 256, 0, stream>>>(R, S, ld, in, out);
  CLIPCU_CUDA_CHECK_LAUNCH("transpose_kernel");
}

// dw[co][ci][khw] += sum over z (in order) of partial[z][co][khw * Cinp + ci] (Cinp: the padded
// channel count of the GEMM's columns).
__global__ void wgrad_reduce_kernel(int64_t Cout, int64_t Cin, int64_t Cinp, int64_t KHW, int64_t splits,
                                    const float* partial, bf16* dw) {
  const int64_t total = Cout * Cin * KHW, per_co = Cin * KHW, Ng = Cinp * KHW;
  for (int64_t o = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; o < total; o += int64_t(gridDim.x) * blockDim.x) {
    const int64_t co = o / per_co, r = o - co * per_co, ci = r / KHW, khw = r - ci * KHW;
    const float* src = partial + co * Ng + khw * Cinp + ci;
    float sum = 0.f;
    for (int64_t z = 0; z < splits; ++z) sum += src[z * Cout * Ng];
    accumulate(dw + o, sum);
  }
}

// ---------------------------------------------------------------- planning
constexpr int64_t k31 = int64_t(1) << 31;
int64_t pad8(int64_t c) { return (c + 7) / 8 * 8; }

// The NHWC copies hold padded channels; 32-bit pixel math and the transpose grid bound the rest.
bool nhwc_shape_ok(const ConvShape& s) {
  const int64_t xs = s.N * s.H * s.W * pad8(s.Cin), ys = s.N * s.OH * s.OW * pad8(s.Cout);
  const int64_t ws = s.Cout * pad8(s.Cin) * s.KH * s.KW, wd = s.Cin * pad8(s.Cout) * s.KH * s.KW;
  return xs < k31 && ys < k31 && ws < k31 && wd < k31 && s.N <= 65535 && s.Cout <= 65535;
}
bool direct_shape_ok(const ConvShape& s) {
  return s.KH == 1 && s.KW == 1 && s.stride == 1 && s.padding == 0 && (s.H * s.W) % 8 == 0 && s.Cin % 8 == 0 &&
         s.Cout % 8 == 0 && s.N * s.H * s.W < k31 && s.N * s.H * s.W * std::max(s.Cin, s.Cout) < (int64_t(1) << 62);
}

// The GEMM of a pass: M, N and K (the Nhwc path's K order and backward-filter columns run over
// padded channel counts; Direct has none to pad).
struct Dims {
  int64_t M, Ng, K;
};
Dims dims(const ConvShape& s, ConvPass pass) {
  const int64_t KHW = s.KH * s.KW;
  switch (pass) {
    case ConvPass::Forward: return {s.Cout, s.N * s.OH * s.OW, KHW * pad8(s.Cin)};
    case ConvPass::BackwardData: return {s.Cin, s.N * s.H * s.W, KHW * pad8(s.Cout)};
    case ConvPass::BackwardFilter: break;
  }
  return {s.Cout, KHW * pad8(s.Cin), s.N * s.OH * s.OW};
}

// Backward-filter: K per split (a multiple of BK) and the split count.
struct Split {
  int64_t k_chunk = 0, splits = 1;
};
// (wide: the tile choice of the path, see tile_for)
Split wgrad_split(const ConvShape& s, bool wide) {
  const Dims d = dims(s, ConvPass::BackwardFilter);
  const Tile t = tile_for(d.M, wide);
  const int64_t tiles = ((d.M + t.bm - 1) / t.bm) * ((d.Ng + t.bn - 1) / t.bn);
  const int64_t k_steps = std::max<int64_t>((d.K + BK - 1) / BK, 1);
  int64_t want = std::min((kSplitTargetBlocks + tiles - 1) / tiles, k_steps);
  const int64_t slice = d.M * d.Ng * int64_t(sizeof(float));
  want = std::max<int64_t>(1, std::min<int64_t>(want, int64_t(kMaxPartialBytes) / std::max<int64_t>(slice, 1)));
  Split r;
  const int64_t steps = (k_steps + want - 1) / want;
  r.k_chunk = steps * BK;
  r.splits = (k_steps + steps - 1) / steps;
  return r;
}
// How a pass of a shape runs: Nhwc (activations gathered from NHWC copies with channels padded
// to multiples of 8: any kernel size, stride, padding and channel count), Direct (1x1, stride 1,
// no padding, H W % 8 == 0, channel counts multiples of 8, 16-byte aligned tensors: NCHW read in
// place, no copies), or None (too large for the 32-bit pixel indices; or a Direct shape whose
// tensors are not aligned: the workspace is sized for the path the shape takes with aligned
// tensors, the engine's case, and the caller's fallback covers the rest).
enum class Path { None, Nhwc, Direct };
Path path_of(const ConvShape& s, bool aligned) {
  if (s.N <= 0) return Path::None;
  if (direct_shape_ok(s)) return aligned ? Path::Direct : Path::None;
  return nhwc_shape_ok(s) ? Path::Nhwc : Path::None;
}
// Nhwc backward-filter reads dy in place (no copy) when its planes are whole chunks of 8 pixels
// and it is 16-byte aligned; a plane that allows it with a misaligned dy: no path (no copy was
// sized, see path_of).
bool wgrad_dy_in_place(const ConvShape& s) { return (s.OH * s.OW) % 8 == 0; }

// Workspace carving: consecutive 256-byte aligned pieces from `base`; without a base only their
// total (`used`), so that workspace_bytes() and the passes share one layout (scratch()).
struct Carve {
  unsigned char* base = nullptr;
  size_t used = 0;
  template <class T>
  T* take(size_t elems) {
    T* r = base ? reinterpret_cast<T*>(base + used) : nullptr;
    used += align256(elems * sizeof(T));
    return r;
  }
};
// The scratch of a pass on a path: the weight in the K order and the NHWC copies (Nhwc: forward
// weight + x, backward-data weight + dy, backward-filter x + dy), then backward-filter's partial
// sums (both paths). Pieces a pass does not use stay nullptr.
struct Scratch {
  bf16* weight = nullptr;
  bf16* x = nullptr;
  bf16* dy = nullptr;
  float* partial = nullptr;
};
Scratch scratch(const ConvShape& s, ConvPass pass, Path path, Carve& ws) {
  const Dims d = dims(s, pass);
  Scratch r;
  if (path == Path::Nhwc) {
    if (pass != ConvPass::BackwardFilter) r.weight = ws.take<bf16>(size_t(d.M * d.K));
    if (pass != ConvPass::BackwardData) r.x = ws.take<bf16>(size_t(s.N * s.H * s.W * pad8(s.Cin)));
    if (pass == ConvPass::BackwardData || (pass == ConvPass::BackwardFilter && !wgrad_dy_in_place(s)))
      r.dy = ws.take<bf16>(size_t(s.N * s.OH * s.OW * pad8(s.Cout)));
  }
  if (pass == ConvPass::BackwardFilter)
    r.partial = ws.take<float>(size_t(wgrad_split(s, path == Path::Direct).splits * d.M * d.Ng));
  return r;
}

// forward and backward-filter gather x by the output grid; backward-data gathers dy by the
// input's (the NHWC copies' channel counts padded)
ImgGeom img_geom(const ConvShape& s, bool dgrad) {
  return dgrad ? conv_gather::img_geom(pad8(s.Cout), s.OH, s.OW, s.H, s.W, s.KW, s.stride, s.padding)
               : conv_gather::img_geom(pad8(s.Cin), s.H, s.W, s.OH, s.OW, s.KW, s.stride, s.padding);
}
Operand dense(const bf16* ptr, int64_t mn, int64_t k) {
  Operand o;
  o.ptr = ptr, o.mn = mn, o.k = k;
  return o;
}

// Forward and backward-data: the NCHW output of the epilogue.
void set_nchw_out(Params& p, bf16* out, int64_t plane, Out mode) {
  p.out_mode = mode, p.out = out, p.plane = FastDiv(uint32_t(plane));
  p.out_vec = plane % 4 == 0 && detail::aligned_to(out, 8);
}
Params gemm_params(const Dims& d, int64_t k_chunk) {
  Params p;
  p.M = d.M, p.Ng = d.Ng, p.K = d.K, p.k_chunk = k_chunk;
  return p;
}
int64_t whole_k(const Dims& d) { return std::max<int64_t>((d.K + BK - 1) / BK, 1) * BK; }

}  // namespace

size_t workspace_bytes(const ConvShape& s, ConvPass pass) {
  const Path path = path_of(s, true);
  if (path == Path::None) return 0;
  Carve c;
  scratch(s, pass, path, c);
  return c.used;
}

namespace {

// Forward and backward-data: one GEMM shape, with x (forward) or dy (backward-data) gathered, the
// weight in the K order and the NCHW epilogue (forward writes y + bias, backward-data adds to dx).
template <bool kDgrad>
bool data_pass(const ConvShape& s, const ConvArgs<bf16>& a, cudaStream_t stream) {
  constexpr ConvPass kPass = kDgrad ? ConvPass::BackwardData : ConvPass::Forward;
  const bf16* src = kDgrad ? a.dy : a.x;  // the gathered activation
  const int64_t C = kDgrad ? s.Cout : s.Cin, plane = kDgrad ? s.OH * s.OW : s.H * s.W;
  const Path path = path_of(s, detail::aligned_to(src, 16) && detail::aligned_to(a.w, 16));
  if (path == Path::None) return false;
  const Dims d = dims(s, kPass);
  Params p = gemm_params(d, whole_k(d));
  p.bias = kDgrad ? nullptr : a.bias;
  if constexpr (kDgrad) {
    set_nchw_out(p, a.dx, s.H * s.W, Out::Add);
  } else {
    set_nchw_out(p, a.y, s.OH * s.OW, Out::Store);
  }
  if (path == Path::Direct) {
    p.a = dense(a.w, d.M, d.K);  // W [Cout][Cin]: forward's A (K-major); backward-data's A^T (MN-major)
    p.b = dense(src, d.Ng, d.K);
    p.b.nchw = nchw_geom(s.N, C, plane);
    if constexpr (kDgrad) {
      launch<DenseMn, NchwMn>(p, 1, stream);
    } else {
      launch<DenseK, NchwMn>(p, 1, stream);
    }
    return true;
  }
  const int64_t Cp = pad8(C), KHW = s.KH * s.KW;
  Carve ws{static_cast<unsigned char*>(a.workspace)};
  const Scratch sc = scratch(s, kPass, path, ws);
  bf16* const wk = sc.weight;
  bf16* const st = kDgrad ? sc.dy : sc.x;
  if constexpr (kDgrad) {
    transpose(1, s.Cout, s.Cin * KHW, Cp, a.w, wk, stream);  // -> [Cin][KHW][Cout']
  } else {
    transpose(s.Cout, s.Cin, KHW, Cp, a.w, wk, stream);  // [Cout][Cin][KHW] -> [Cout][KHW][Cin']
  }
  transpose(s.N, C, plane, Cp, src, st, stream);  // NCHW -> NHWC
  p.a = dense(wk, d.M, d.K);
  p.b = dense(st, d.Ng, d.K);
  p.b.img = img_geom(s, kDgrad);
  if constexpr (kDgrad) {
    launch<DenseK, ImgKDgrad>(p, 1, stream);
  } else {
    launch<DenseK, ImgKFwd>(p, 1, stream);
  }
  return true;
}

}  // namespace

bool forward(const ConvShape& s, const ConvArgs<bf16>& a, cudaStream_t stream) { return data_pass<false>(s, a, stream); }
bool backward_data(const ConvShape& s, const ConvArgs<bf16>& a, cudaStream_t stream) {
  return data_pass<true>(s, a, stream);
}

bool backward_filter(const ConvShape& s, const ConvArgs<bf16>& a, cudaStream_t stream) {
  const bool dy_aligned = detail::aligned_to(a.dy, 16);
  const Path path = path_of(s, detail::aligned_to(a.x, 16) && dy_aligned);
  if (path == Path::None || (path == Path::Nhwc && wgrad_dy_in_place(s) && !dy_aligned)) return false;
  const Dims d = dims(s, ConvPass::BackwardFilter);
  const Split sp = wgrad_split(s, path == Path::Direct);
  Params p = gemm_params(d, sp.k_chunk);
  p.out_mode = Out::Partial;
  p.out_vec = d.Ng % 4 == 0;  // the partial sums start 256-byte aligned
  const int64_t Cinp = pad8(s.Cin), Coutp = pad8(s.Cout);
  Carve ws{static_cast<unsigned char*>(a.workspace)};
  const Scratch sc = scratch(s, ConvPass::BackwardFilter, path, ws);
  p.partial = sc.partial;
  if (path == Path::Direct) {
    p.a = dense(a.dy, d.M, d.K);
    p.a.nchw = nchw_geom(s.N, s.Cout, s.OH * s.OW);
    p.b = dense(a.x, d.Ng, d.K);
    p.b.nchw = nchw_geom(s.N, s.Cin, s.H * s.W);
    launch<NchwK, NchwK>(p, sp.splits, stream);
  } else {
    // x is gathered from its NHWC copy; dy (A) is read in place as the direct path does when its
    // planes are whole chunks of 8 pixels (RN50's 112, 56 and 28 pixel layers), else from a copy
    transpose(s.N, s.Cin, s.H * s.W, Cinp, a.x, sc.x, stream);
    p.b = dense(sc.x, d.Ng, d.K);
    p.b.img = img_geom(s, false);
    if (wgrad_dy_in_place(s)) {
      p.a = dense(a.dy, d.M, d.K);
      p.a.nchw = nchw_geom(s.N, s.Cout, s.OH * s.OW);
      launch<NchwK, ImgMn, false>(p, sp.splits, stream);
    } else {
      transpose(s.N, s.Cout, s.OH * s.OW, Coutp, a.dy, sc.dy, stream);
      p.a = dense(sc.dy, Coutp, d.K);  // [pixels][Coutp] = [K][M], MN-major (rows Coutp long)
      launch<DenseMn, ImgMn, false>(p, sp.splits, stream);
    }
  }
  const int64_t total = s.Cout * s.Cin * s.KH * s.KW;
  const int64_t blocks = std::min<int64_t>((total + 255) / 256, 65536);
  wgrad_reduce_kernel<<<unsigned(blocks), 256, 0, stream>>>(s.Cout, s.Cin, path == Path::Direct ? s.Cin : Cinp,
                                                            s.KH * s.KW, sp.splits, p.partial, a.dw);
  CLIPCU_CUDA_CHECK_LAUNCH("wgrad_reduce_kernel");
  return true;
}

}  // namespace clipcu::cuda::convwg
