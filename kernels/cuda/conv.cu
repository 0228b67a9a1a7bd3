// CUDA 2-d convolution (NCHW): implicit GEMM on tensor cores, a SIMT direct reference, and the
// cuDNN path, behind the interface of conv.cuh.
//
// Implicit GEMM (TensorCore). Each pass is one GEMM C[M, Ng] = sum_k A[M, K] B[K, Ng] whose
// operands are gathered from the NCHW tensors while they are loaded, never materialized:
//   forward        M = Cout, Ng = N*OH*OW, K = KH*KW*Cin (ordered kh, kw, ci)
//                  A = w as [Cout][KH][KW][Cin] (a copy in the workspace when KH*KW > 1: the one
//                  layout conversion of this pass; a 1x1 weight is used in place)
//                  B(k, j) = x[n, ci, oh*s - p + kh, ow*s - p + kw] for j = (n, oh, ow)
//                  C(co, j) -> y[n, co, oh, ow] (+ bias[co])
//   backward-data  M = Cin, Ng = N*H*W, K = KH*KW*Cout (ordered kh, kw, co)
//                  A = w as [Cin][KH][KW][Cout] (always a copy: the conversion of this pass)
//                  B(k, j) = dy[n, co, (ih + p - kh) / s, (iw + p - kw) / s] where divisible and
//                  inside, else 0, for j = (n, ih, iw);  C(ci, j) -> dx[n, ci, ih, iw] +=
//   backward-filter M = Cout, Ng = Cin*KH*KW (the weight's own order), K = N*OH*OW
//                  A(co, k) = dy[n, co, oh, ow], B(k, j) = x[n, ci, oh*s - p + kh, ow*s - p + kw]
//                  split-K: slice z of the K tiles writes float partials ws[z][Cout][Ng]; a second
//                  kernel adds the slices in order into dw (deterministic, no atomics)
// A block computes a 128 x 128 tile of C with 8 warps laid out 2 (M) x 4 (Ng), a warp 64 x 32 =
// 4 x 4 mma tiles (bf16 m16n8k16, float TF32 m16n8k8, the fragment layout of gemm.cu), float
// accumulators in registers. K is walked in steps of BK (32 bf16, 16 float) with two shared
// stages: the global loads of step k + 1 go to registers while step k computes, then to the other
// stage (one barrier per step). Each thread gathers a fixed column of the B tile (forward,
// backward-data: consecutive threads take consecutive j, i.e. consecutive ow, so loads coalesce
// at stride 1), so the column's (n, oh, ow) is decoded once per block. When the channel count of
// the K order (Cin forward, Cout backward-data) is a multiple of BK, a K tile has one (kh, kw) and
// consecutive channels (the "fast" instantiation): the bounds check and address are per tile,
// one add per element. Otherwise (the stem's Cin = 3, odd test sizes) each element decodes its k.
// Backward-filter keeps a table of the block's (ci, kh, kw) columns in shared memory and decodes
// its thread's k = (n, oh, ow) once per tile. A is loaded with 16-byte vectors when it is an
// aligned weight matrix with K a multiple of 8 bf16 / 4 floats.
//
// Simple: a thread per output element (forward) or input-gradient element (backward-data), a
// block of 128 threads per weight-gradient element (fixed-order block reduction), float sums.
// Bias: forward adds it in the epilogue (Cudnn: a separate pass); its gradient is a block per
// channel, fixed order, for every kernel.
//
// Cudnn: cudnnConvolution{Forward,BackwardData,BackwardFilter} in NCHW with float compute, the
// algorithm picked by cuDNN's heuristic (the first one that runs, is deterministic, fits 1 GiB
// of workspace and, for exact float, is neither FFT nor Winograd), cached per shape, type and
// pass. Backward passes
// run with beta = 1 (accumulate).
//
// Wgmma: bf16 on Hopper, kernels/cuda/conv_wgmma.cu; the shapes it has no path for, and float
// storage, run the TensorCore kernel above.
#include "kernels/cuda/conv.cuh"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <type_traits>

#include "kernels/cuda/common/check.h"
#include "kernels/cuda/common/device.cuh"
#include "kernels/cuda/conv_wgmma.cuh"
#include "kernels/cuda/gemm.cuh"

namespace clipcu::cuda {

const char* conv_kernel_name(ConvKernel k) {
  switch (k) {
    case ConvKernel::Simple: return "simple";
    case ConvKernel::TensorCore: return "tensorcore";
    case ConvKernel::Cudnn: return "cudnn";
    case ConvKernel::Wgmma: return "wgmma";
  }
  return "?";
}

bool conv_cudnn_built() {
#ifdef CLIPCU_WITH_CUDNN
  return true;
#else
  return false;
#endif
}

std::vector<ConvKernel> conv_kernels(int device) {
  std::vector<ConvKernel> ks = {ConvKernel::Simple, ConvKernel::TensorCore};
  if (conv_cudnn_built()) ks.push_back(ConvKernel::Cudnn);
  if (conv_wgmma_available(device)) ks.push_back(ConvKernel::Wgmma);
  return ks;
}

bool conv_wgmma_available(int device) {
  static const bool hidden = [] {
    const char* v = std::getenv("CLIPCU_CONV_WGMMA");
    return v && std::string(v) == "0";
  }();
  return !hidden && gemm_wgmma_available(device);
}

ConvShape conv_shape(int64_t N, int64_t Cin, int64_t H, int64_t W, int64_t Cout, int64_t KH, int64_t KW,
                     int64_t stride, int64_t padding, ConvKernel kernel) {
  CLIPCU_CUDA_REQUIRE(N >= 0 && Cin > 0 && H > 0 && W > 0 && Cout > 0 && KH > 0 && KW > 0,
                      "conv2d: sizes N " << N << " Cin " << Cin << " H " << H << " W " << W << " Cout " << Cout
                                         << " KH " << KH << " KW " << KW << " (need N >= 0, the rest > 0)");
  CLIPCU_CUDA_REQUIRE(stride >= 1 && padding >= 0,
                      "conv2d: stride " << stride << " (need >= 1), padding " << padding << " (need >= 0)");
  CLIPCU_CUDA_REQUIRE(H + 2 * padding >= KH && W + 2 * padding >= KW,
                      "conv2d: kernel " << KH << "x" << KW << " larger than the padded input " << H + 2 * padding
                                        << "x" << W + 2 * padding);
  ConvShape s;
  s.N = N, s.Cin = Cin, s.H = H, s.W = W, s.Cout = Cout, s.KH = KH, s.KW = KW, s.stride = stride, s.padding = padding;
  s.OH = (H + 2 * padding - KH) / stride + 1;
  s.OW = (W + 2 * padding - KW) / stride + 1;
  s.kernel = kernel;
  return s;
}

namespace {

constexpr int kThreads = 256;
constexpr int kBM = 128;
constexpr int kBN = 128;
constexpr int kBPad = 8;  // elements on the rows of an Ng-contiguous B stage
// Backward-filter split-K: enough blocks for about two waves of a 132-SM GPU (a constant, not the
// device's count, so the partial sums and their order do not depend on the machine).
constexpr int64_t kSplitTargetBlocks = 264;
constexpr int64_t kMaxSplits = 256;
constexpr size_t kMaxSplitBytes = size_t(256) << 20;

template <class T>
struct Cfg;
template <>
struct Cfg<bf16> {
  static constexpr int BK = 32;
  static constexpr int KSTEP = 16;
  static constexpr int KPad = 8;  // 16 bytes on K-contiguous rows
};
template <>
struct Cfg<float> {
  static constexpr int BK = 16;
  static constexpr int KSTEP = 8;
  static constexpr int KPad = 4;
};

enum class Pass { Fwd, Dgrad, Wgrad };

size_t align256(size_t b) { return (b + 255) / 256 * 256; }

// The sizes of the GEMM a pass computes.
struct GemmDims {
  int64_t M, Ng, K;
};
GemmDims gemm_dims(const ConvShape& s, Pass pass) {
  switch (pass) {
    case Pass::Fwd: return {s.Cout, s.N * s.OH * s.OW, s.KH * s.KW * s.Cin};
    case Pass::Dgrad: return {s.Cin, s.N * s.H * s.W, s.KH * s.KW * s.Cout};
    case Pass::Wgrad: break;
  }
  return {s.Cout, s.Cin * s.KH * s.KW, s.N * s.OH * s.OW};
}

struct Split {
  int64_t splits = 1, tiles_per_split = 0, KT = 0;
};
// Backward-filter: how the K tiles are divided among the slices (a function of the shape only).
Split wgrad_split(const ConvShape& s, int BK) {
  const GemmDims g = gemm_dims(s, Pass::Wgrad);
  Split r;
  r.KT = (g.K + BK - 1) / BK;
  const int64_t blocks_mn = ((g.M + kBM - 1) / kBM) * ((g.Ng + kBN - 1) / kBN);
  int64_t S = (kSplitTargetBlocks + blocks_mn - 1) / blocks_mn;
  S = std::min({S, kMaxSplits, std::max<int64_t>(r.KT, 1)});
  const int64_t slice_bytes = g.M * g.Ng * int64_t(sizeof(float));
  S = std::max<int64_t>(1, std::min<int64_t>(S, int64_t(kMaxSplitBytes) / std::max<int64_t>(slice_bytes, 1)));
  r.tiles_per_split = std::max<int64_t>(1, (r.KT + S - 1) / S);
  r.splits = std::max<int64_t>(1, (r.KT + r.tiles_per_split - 1) / r.tiles_per_split);
  return r;
}

// ---------------------------------------------------------------- tensor-core helpers
__device__ __forceinline__ uint32_t pack2(bf16 lo, bf16 hi) {
  return uint32_t(__bfloat16_as_ushort(lo)) | (uint32_t(__bfloat16_as_ushort(hi)) << 16);
}
__device__ __forceinline__ uint32_t ld32(const bf16* p) { return *reinterpret_cast<const uint32_t*>(p); }
__device__ __forceinline__ uint32_t tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], bf16) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], float) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Fragments of one mma K step at kb for a warp at (wm0, wn0). Lane (g = lane / 4, t = lane % 4):
//   A bf16: pairs (g, 2t..), (g+8, 2t..), (g, 2t+8..), (g+8, 2t+8..);  tf32: (g, t), (g+8, t), (g, t+4), (g+8, t+4)
//   B bf16: pairs (2t.., g), (2t+8.., g);  tf32: (t, g), (t+4, g)
// A stages are [128][ALD] (K contiguous); B stages [BK][BLD] (Ng contiguous) or, kBKContig,
// [128][BLD] (K contiguous).
template <int ALD, int BLD, bool kBKContig>
__device__ __forceinline__ void frag_step(float (&acc)[4][4][4], const bf16* as, const bf16* bs, int wm0, int wn0,
                                          int kb, int g, int t) {
  uint32_t a[4][4], b[4][2];
#pragma unroll
  for (int mt = 0; mt < 4; ++mt) {
    const bf16* r0 = as + (wm0 + mt * 16 + g) * ALD + kb + 2 * t;
    const bf16* r1 = r0 + 8 * ALD;
    a[mt][0] = ld32(r0);
    a[mt][1] = ld32(r1);
    a[mt][2] = ld32(r0 + 8);
    a[mt][3] = ld32(r1 + 8);
  }
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
    const int n = wn0 + nt * 8 + g;
    if constexpr (kBKContig) {
      const bf16* r = bs + n * BLD + kb + 2 * t;
      b[nt][0] = ld32(r);
      b[nt][1] = ld32(r + 8);
    } else {
      const bf16* c = bs + (kb + 2 * t) * BLD + n;
      b[nt][0] = pack2(c[0], c[BLD]);
      b[nt][1] = pack2(c[8 * BLD], c[9 * BLD]);
    }
  }
#pragma unroll
  for (int mt = 0; mt < 4; ++mt)
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) mma(acc[mt][nt], a[mt], b[nt], bf16{});
}

template <int ALD, int BLD, bool kBKContig>
__device__ __forceinline__ void frag_step(float (&acc)[4][4][4], const float* as, const float* bs, int wm0, int wn0,
                                          int kb, int g, int t) {
  uint32_t a[4][4], b[4][2];
#pragma unroll
  for (int mt = 0; mt < 4; ++mt) {
    const float* r0 = as + (wm0 + mt * 16 + g) * ALD + kb + t;
    const float* r1 = r0 + 8 * ALD;
    a[mt][0] = tf32(r0[0]);
    a[mt][1] = tf32(r1[0]);
    a[mt][2] = tf32(r0[4]);
    a[mt][3] = tf32(r1[4]);
  }
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
    const int n = wn0 + nt * 8 + g;
    if constexpr (kBKContig) {
      const float* r = bs + n * BLD + kb + t;
      b[nt][0] = tf32(r[0]);
      b[nt][1] = tf32(r[4]);
    } else {
      const float* c = bs + (kb + t) * BLD + n;
      b[nt][0] = tf32(c[0]);
      b[nt][1] = tf32(c[4 * BLD]);
    }
  }
#pragma unroll
  for (int mt = 0; mt < 4; ++mt)
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) mma(acc[mt][nt], a[mt], b[nt], float{});
}

// ---------------------------------------------------------------- implicit GEMM kernel
template <class T>
struct IgemmParams {
  int64_t M = 0, Ng = 0, K = 0;
  int N = 0, Cin = 0, H = 0, W = 0, Cout = 0, KH = 0, KW = 0, stride = 1, pad = 0, OH = 0, OW = 0;
  const T* A = nullptr;     // forward / backward-data: weight matrix [M][K]; backward-filter: dy
  const T* B = nullptr;     // forward, backward-filter: x; backward-data: dy
  T* C = nullptr;           // forward: y; backward-data: dx
  float* partial = nullptr;  // backward-filter: [splits][M][Ng]
  const T* bias = nullptr;  // forward: [Cout] or nullptr
  int64_t KT = 0, tiles_per_split = 0;
  bool a_vec = false;  // A is read with 16-byte vectors
};

// grid: (ceil(Ng / 128), ceil(M / 128), splits); block: 256 threads, two blocks per SM (128
// registers a thread: ptxas spills a few loop-invariant words, cheaper than one block's 8 warps
// hiding the gather latency alone).
template <class T, Pass kPass, bool kFast>
__global__ void __launch_bounds__(kThreads, 2) conv_igemm_kernel(const IgemmParams<T> p) {
  constexpr int BK = Cfg<T>::BK;
  constexpr int KSTEP = Cfg<T>::KSTEP;
  constexpr int ALD = BK + Cfg<T>::KPad;
  constexpr bool kBKContig = kPass == Pass::Wgrad;
  constexpr int BLD = kBKContig ? BK + Cfg<T>::KPad : kBN + kBPad;
  constexpr int BRows = kBKContig ? kBN : BK;
  constexpr int AE = kBM * BK / kThreads;  // A elements a thread loads per step
  constexpr int BE = kBN * BK / kThreads;  // B elements
  constexpr int VE = 16 / int(sizeof(T));  // elements of a 16-byte vector
  constexpr int RowStep = kThreads / BK;   // rows between a thread's elements (K-fast mapping)
  static_assert(AE == 2 * VE, "two 16-byte A vectors per thread");
  __shared__ __align__(16) T As[2][kBM * ALD];
  __shared__ __align__(16) T Bs[2][BRows * BLD];
  __shared__ int jtab[kPass == Pass::Wgrad ? 3 * kBN : 1];  // backward-filter: ci, kh, kw of a column

  const int tid = int(threadIdx.x), warp = tid / 32, lane = tid % 32, g = lane >> 2, t4 = lane & 3;
  const int wm0 = (warp % 2) * 64, wn0 = (warp / 2) * 32;
  const int64_t m0 = int64_t(blockIdx.y) * kBM, n0 = int64_t(blockIdx.x) * kBN;
  const int64_t M = p.M, Ng = p.Ng, K = p.K;
  const int64_t HW = int64_t(p.H) * p.W, OHW = int64_t(p.OH) * p.OW;
  const T zero = from_float<T>(0.f);

  // ---- per-thread column state of the B gather
  // forward / backward-data: column jc, rows krow0 + 2e
  const int jc = tid % kBN, krow0 = tid / kBN;
  bool jvalid = false;
  int hb = 0, wb = 0;  // forward: oh*s - p, ow*s - p; backward-data: ih + p, iw + p
  int64_t bbase = 0;   // offset of image n in B
  if constexpr (kPass == Pass::Fwd) {
    const int64_t j = n0 + jc;
    jvalid = j < Ng;
    if (jvalid) {
      const int64_t n = j / OHW, q = j - n * OHW;
      const int oh = int(q / p.OW), ow = int(q - int64_t(oh) * p.OW);
      hb = oh * p.stride - p.pad, wb = ow * p.stride - p.pad;
      bbase = n * p.Cin * HW;
    }
  } else if constexpr (kPass == Pass::Dgrad) {
    const int64_t j = n0 + jc;
    jvalid = j < Ng;
    if (jvalid) {
      const int64_t n = j / HW, q = j - n * HW;
      const int ih = int(q / p.W), iw = int(q - int64_t(ih) * p.W);
      hb = ih + p.pad, wb = iw + p.pad;
      bbase = n * p.Cout * OHW;
    }
  } else {
    if (tid < kBN) {
      const int64_t j = n0 + tid;
      if (j < Ng) {
        const int KHW = p.KH * p.KW;
        const int ci = int(j / KHW), r = int(j - int64_t(ci) * KHW);
        jtab[tid] = ci, jtab[kBN + tid] = r / p.KW, jtab[2 * kBN + tid] = r % p.KW;
      } else {
        jtab[tid] = -1, jtab[kBN + tid] = 0, jtab[2 * kBN + tid] = 0;
      }
    }
    __syncthreads();
  }

  T ar[AE], br[BE];

  auto load_a = [&](int64_t kt) {
    const int64_t k0 = kt * BK;
    if constexpr (kPass != Pass::Wgrad) {
      if (p.a_vec) {
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int idx = tid + c * kThreads;
          const int r = idx / (BK / VE), col = (idx % (BK / VE)) * VE;
          const int64_t m = m0 + r, k = k0 + col;
          Vec<T, VE> v;
          if (m < M && k < K) {
            v = *reinterpret_cast<const Vec<T, VE>*>(p.A + m * K + k);
          } else {
#pragma unroll
            for (int e = 0; e < VE; ++e) v.v[e] = zero;
          }
#pragma unroll
          for (int e = 0; e < VE; ++e) ar[c * VE + e] = v.v[e];
        }
      } else {
        const int64_t k = k0 + tid % BK;
#pragma unroll
        for (int e = 0; e < AE; ++e) {
          const int64_t m = m0 + tid / BK + e * RowStep;
          ar[e] = (m < M && k < K) ? p.A[m * K + k] : zero;
        }
      }
    } else {
      // dy[n, co, q] for k = (n, q)
      const int64_t k = k0 + tid % BK;
      const bool kv = k < K;
      int64_t base = 0;
      if (kv) {
        const int64_t n = k / OHW;
        base = n * p.Cout * OHW + (k - n * OHW);
      }
#pragma unroll
      for (int e = 0; e < AE; ++e) {
        const int64_t m = m0 + tid / BK + e * RowStep;
        ar[e] = (kv && m < M) ? p.A[base + m * OHW] : zero;
      }
    }
  };

  auto store_a = [&](int buf) {
    T* as = As[buf];
    if (kPass != Pass::Wgrad && p.a_vec) {
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int idx = tid + c * kThreads;
        const int r = idx / (BK / VE), col = (idx % (BK / VE)) * VE;
        Vec<T, VE> v;
#pragma unroll
        for (int e = 0; e < VE; ++e) v.v[e] = ar[c * VE + e];
        *reinterpret_cast<Vec<T, VE>*>(as + r * ALD + col) = v;
      }
    } else {
#pragma unroll
      for (int e = 0; e < AE; ++e) as[(tid / BK + e * RowStep) * ALD + tid % BK] = ar[e];
    }
  };

  auto load_b = [&](int64_t kt) {
    const int64_t k0 = kt * BK;
    if constexpr (kPass == Pass::Fwd) {
      if constexpr (kFast) {
        // Cin % BK == 0: the tile is one (kh, kw) and channels ci0 .. ci0 + BK - 1
        const int khw = int(k0 / p.Cin), ci0 = int(k0 - int64_t(khw) * p.Cin);
        const int kh = khw / p.KW, kw = khw - kh * p.KW;
        const int ih = hb + kh, iw = wb + kw;
        const bool ok = jvalid && ih >= 0 && ih < p.H && iw >= 0 && iw < p.W;
        const T* src = p.B + bbase + (int64_t(ci0) + krow0) * HW + int64_t(ih) * p.W + iw;
#pragma unroll
        for (int e = 0; e < BE; ++e) br[e] = ok ? src[int64_t(2 * e) * HW] : zero;
      } else {
#pragma unroll
        for (int e = 0; e < BE; ++e) {
          const int64_t k = k0 + krow0 + 2 * e;
          T v = zero;
          if (jvalid && k < K) {
            const int khw = int(k / p.Cin), ci = int(k - int64_t(khw) * p.Cin);
            const int kh = khw / p.KW, kw = khw - kh * p.KW;
            const int ih = hb + kh, iw = wb + kw;
            if (ih >= 0 && ih < p.H && iw >= 0 && iw < p.W) v = p.B[bbase + int64_t(ci) * HW + int64_t(ih) * p.W + iw];
          }
          br[e] = v;
        }
      }
    } else if constexpr (kPass == Pass::Dgrad) {
      if constexpr (kFast) {
        const int khw = int(k0 / p.Cout), co0 = int(k0 - int64_t(khw) * p.Cout);
        const int kh = khw / p.KW, kw = khw - kh * p.KW;
        const int th = hb - kh, tw = wb - kw;
        const int oh = th / p.stride, ow = tw / p.stride;
        const bool ok = jvalid && th >= 0 && tw >= 0 && oh * p.stride == th && ow * p.stride == tw && oh < p.OH &&
                        ow < p.OW;
        const T* src = p.B + bbase + (int64_t(co0) + krow0) * OHW + int64_t(oh) * p.OW + ow;
#pragma unroll
        for (int e = 0; e < BE; ++e) br[e] = ok ? src[int64_t(2 * e) * OHW] : zero;
      } else {
#pragma unroll
        for (int e = 0; e < BE; ++e) {
          const int64_t k = k0 + krow0 + 2 * e;
          T v = zero;
          if (jvalid && k < K) {
            const int khw = int(k / p.Cout), co = int(k - int64_t(khw) * p.Cout);
            const int kh = khw / p.KW, kw = khw - kh * p.KW;
            const int th = hb - kh, tw = wb - kw;
            if (th >= 0 && tw >= 0) {
              const int oh = th / p.stride, ow = tw / p.stride;
              if (oh * p.stride == th && ow * p.stride == tw && oh < p.OH && ow < p.OW)
                v = p.B[bbase + int64_t(co) * OHW + int64_t(oh) * p.OW + ow];
            }
          }
          br[e] = v;
        }
      }
    } else {
      // x[n, ci, oh*s - p + kh, ow*s - p + kw] for k = (n, oh, ow) and the table's (ci, kh, kw)
      const int64_t k = k0 + tid % BK;
      const bool kv = k < K;
      int64_t base = 0;
      int h0 = 0, w0 = 0;
      if (kv) {
        const int64_t n = k / OHW, q = k - n * OHW;
        const int oh = int(q / p.OW), ow = int(q - int64_t(oh) * p.OW);
        h0 = oh * p.stride - p.pad, w0 = ow * p.stride - p.pad;
        base = n * p.Cin * HW;
      }
#pragma unroll
      for (int e = 0; e < BE; ++e) {
        const int jr = tid / BK + e * RowStep;
        const int ci = jtab[jr];
        T v = zero;
        if (kv && ci >= 0) {
          const int ih = h0 + jtab[kBN + jr], iw = w0 + jtab[2 * kBN + jr];
          if (ih >= 0 && ih < p.H && iw >= 0 && iw < p.W) v = p.B[base + int64_t(ci) * HW + int64_t(ih) * p.W + iw];
        }
        br[e] = v;
      }
    }
  };

  auto store_b = [&](int buf) {
    T* bs = Bs[buf];
    if constexpr (kBKContig) {
#pragma unroll
      for (int e = 0; e < BE; ++e) bs[(tid / BK + e * RowStep) * BLD + tid % BK] = br[e];
    } else {
#pragma unroll
      for (int e = 0; e < BE; ++e) bs[(krow0 + 2 * e) * BLD + jc] = br[e];
    }
  };

  float acc[4][4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

  const int64_t kt_begin = int64_t(blockIdx.z) * p.tiles_per_split;
  const int64_t kt_end = min64(p.KT, kt_begin + p.tiles_per_split);
  if (kt_begin < kt_end) {
    load_a(kt_begin);
    load_b(kt_begin);
    store_a(0);
    store_b(0);
    __syncthreads();
    for (int64_t kt = kt_begin; kt < kt_end; ++kt) {
      const int cur = int((kt - kt_begin) & 1);
      const bool more = kt + 1 < kt_end;
      if (more) {  // global loads of the next step in flight during this step's math
        load_a(kt + 1);
        load_b(kt + 1);
      }
#pragma unroll
      for (int kb = 0; kb < BK; kb += KSTEP)
        frag_step<ALD, BLD, kBKContig>(acc, As[cur], Bs[cur], wm0, wn0, kb, g, t4);
      if (more) {  // the other stage was last read before the previous barrier
        store_a(cur ^ 1);
        store_b(cur ^ 1);
      }
      __syncthreads();
    }
  }

  // ---- epilogue: accumulator e of tile (mt, nt) is row g (+8 for e >= 2), column 2t (+1 for odd e)
#pragma unroll
  for (int nt = 0; nt < 4; ++nt)
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const int64_t j = n0 + wn0 + nt * 8 + 2 * t4 + c;
      if (j >= Ng) continue;
      if constexpr (kPass == Pass::Wgrad) {
        float* out = p.partial + int64_t(blockIdx.z) * M * Ng + j;
#pragma unroll
        for (int mt = 0; mt < 4; ++mt)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int64_t m = m0 + wm0 + mt * 16 + g + 8 * h;
            if (m < M) out[m * Ng] = acc[mt][nt][2 * h + c];
          }
      } else {
        const int64_t P = kPass == Pass::Fwd ? OHW : HW;  // plane size of the output
        const int64_t n = j / P;
        T* out = p.C + n * M * P + (j - n * P);
#pragma unroll
        for (int mt = 0; mt < 4; ++mt)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int64_t m = m0 + wm0 + mt * 16 + g + 8 * h;
            if (m >= M) continue;
            float v = acc[mt][nt][2 * h + c];
            if constexpr (kPass == Pass::Fwd) {
              if (p.bias) v += to_float(p.bias[m]);
              out[m * P] = from_float<T>(v);
            } else {
              accumulate(out + m * P, v);
            }
          }
      }
    }
}

// ---------------------------------------------------------------- small kernels
// Wt[co][kh][kw][ci] = w[co][ci][kh][kw] (forward's A)
template <class T>
__global__ void weight_to_khwc_kernel(int64_t Cout, int64_t Cin, int64_t KHW,
                                      const T* w,  // [Cout, Cin, KH, KW]
                                      T* wt) {     // [Cout, KH, KW, Cin]
  const int64_t total = Cout * Cin * KHW;
  for (int64_t o = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; o < total; o += int64_t(gridDim.x) * blockDim.x) {
    const int64_t co = o / (KHW * Cin), r = o - co * KHW * Cin;
    const int64_t khw = r / Cin, ci = r - khw * Cin;
    wt[o] = w[(co * Cin + ci) * KHW + khw];
  }
}

// Wd[ci][kh][kw][co] = w[co][ci][kh][kw] (backward-data's A)
template <class T>
__global__ void weight_to_dgrad_kernel(int64_t Cout, int64_t Cin, int64_t KHW,
                                       const T* w,  // [Cout, Cin, KH, KW]
                                       T* wd) {     // [Cin, KH, KW, Cout]
  const int64_t total = Cout * Cin * KHW;
  for (int64_t o = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; o < total; o += int64_t(gridDim.x) * blockDim.x) {
    const int64_t ci = o / (KHW * Cout), r = o - ci * KHW * Cout;
    const int64_t khw = r / Cout, co = r - khw * Cout;
    wd[o] = w[(co * Cin + ci) * KHW + khw];
  }
}

// dw[i] += sum_z partial[z][i], z in order.
template <class T>
__global__ void split_reduce_kernel(int64_t MN, int64_t splits,
                                    const float* partial,  // [splits, MN]
                                    T* dw) {               // [MN] (accumulated)
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < MN; i += int64_t(gridDim.x) * blockDim.x) {
    float s = 0.f;
    for (int64_t z = 0; z < splits; ++z) s += partial[z * MN + i];
    accumulate(dw + i, s);
  }
}

// dbias[co] += sum_{n, q} dy[n, co, q]: a block per channel, fixed order.
template <class T>
__global__ void __launch_bounds__(256) bias_grad_kernel(int64_t N, int64_t Cout, int64_t P,
                                                        const T* dy,  // [N, Cout, P]
                                                        T* dbias) {   // [Cout] (accumulated)
  __shared__ float scratch[8];
  const int64_t co = blockIdx.x;
  float s = 0.f;
  for (int64_t n = 0; n < N; ++n) {
    const T* row = dy + (n * Cout + co) * P;
    for (int64_t q = threadIdx.x; q < P; q += 256) s += to_float(row[q]);
  }
  s = block_sum<8>(s, scratch);
  if (threadIdx.x == 0) accumulate(dbias + co, s);
}

// y[n, co, q] += bias[co] (after cuDNN's forward)
template <class T>
__global__ void bias_add_kernel(int64_t total, int64_t Cout, int64_t P,
                                const T* bias,  // [Cout]
                                T* y) {         // [N, Cout, P]
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x)
    accumulate(y + i, to_float(bias[(i / P) % Cout]));
}

// ---------------------------------------------------------------- SIMT direct kernels
struct Dims {
  int64_t N, Cin, H, W, Cout, KH, KW, stride, pad, OH, OW;
};
Dims dims_of(const ConvShape& s) {
  return {s.N, s.Cin, s.H, s.W, s.Cout, s.KH, s.KW, s.stride, s.padding, s.OH, s.OW};
}

template <class T>
__global__ void conv_fwd_simple_kernel(const Dims d,
                                       const T* x,     // [N, Cin, H, W]
                                       const T* w,     // [Cout, Cin, KH, KW]
                                       const T* bias,  // [Cout] or nullptr
                                       T* y) {         // [N, Cout, OH, OW]
  const int64_t total = d.N * d.Cout * d.OH * d.OW;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t ow = i % d.OW, oh = (i / d.OW) % d.OH, co = (i / (d.OW * d.OH)) % d.Cout,
                  n = i / (d.OW * d.OH * d.Cout);
    float acc = bias ? to_float(bias[co]) : 0.f;
    for (int64_t ci = 0; ci < d.Cin; ++ci)
      for (int64_t kh = 0; kh < d.KH; ++kh) {
        const int64_t ih = oh * d.stride - d.pad + kh;
        if (ih < 0 || ih >= d.H) continue;
        for (int64_t kw = 0; kw < d.KW; ++kw) {
          const int64_t iw = ow * d.stride - d.pad + kw;
          if (iw < 0 || iw >= d.W) continue;
          acc += to_float(w[((co * d.Cin + ci) * d.KH + kh) * d.KW + kw]) *
                 to_float(x[((n * d.Cin + ci) * d.H + ih) * d.W + iw]);
        }
      }
    y[i] = from_float<T>(acc);
  }
}

template <class T>
__global__ void conv_dgrad_simple_kernel(const Dims d,
                                         const T* dy,  // [N, Cout, OH, OW]
                                         const T* w,   // [Cout, Cin, KH, KW]
                                         T* dx) {      // [N, Cin, H, W] (accumulated)
  const int64_t total = d.N * d.Cin * d.H * d.W;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t iw = i % d.W, ih = (i / d.W) % d.H, ci = (i / (d.W * d.H)) % d.Cin, n = i / (d.W * d.H * d.Cin);
    float acc = 0.f;
    for (int64_t co = 0; co < d.Cout; ++co)
      for (int64_t kh = 0; kh < d.KH; ++kh) {
        const int64_t th = ih + d.pad - kh;
        if (th < 0 || th % d.stride != 0 || th / d.stride >= d.OH) continue;
        for (int64_t kw = 0; kw < d.KW; ++kw) {
          const int64_t tw = iw + d.pad - kw;
          if (tw < 0 || tw % d.stride != 0 || tw / d.stride >= d.OW) continue;
          acc += to_float(w[((co * d.Cin + ci) * d.KH + kh) * d.KW + kw]) *
                 to_float(dy[((n * d.Cout + co) * d.OH + th / d.stride) * d.OW + tw / d.stride]);
        }
      }
    accumulate(dx + i, acc);
  }
}

// grid: one block of 128 threads per weight element.
template <class T>
__global__ void __launch_bounds__(128) conv_wgrad_simple_kernel(const Dims d,
                                                                const T* x,   // [N, Cin, H, W]
                                                                const T* dy,  // [N, Cout, OH, OW]
                                                                T* dw) {      // [Cout, Cin, KH, KW] (accumulated)
  __shared__ float scratch[4];
  const int64_t i = blockIdx.x;
  const int64_t kw = i % d.KW, kh = (i / d.KW) % d.KH, ci = (i / (d.KW * d.KH)) % d.Cin, co = i / (d.KW * d.KH * d.Cin);
  const int64_t P = d.OH * d.OW;
  float acc = 0.f;
  for (int64_t r = threadIdx.x; r < d.N * P; r += 128) {
    const int64_t n = r / P, q = r - n * P, oh = q / d.OW, ow = q - oh * d.OW;
    const int64_t ih = oh * d.stride - d.pad + kh, iw = ow * d.stride - d.pad + kw;
    if (ih < 0 || ih >= d.H || iw < 0 || iw >= d.W) continue;
    acc += to_float(dy[(n * d.Cout + co) * P + q]) * to_float(x[((n * d.Cin + ci) * d.H + ih) * d.W + iw]);
  }
  acc = block_sum<4>(acc, scratch);
  if (threadIdx.x == 0) accumulate(dw + i, acc);
}

unsigned grid_for(int64_t total, int threads = 256) {
  return unsigned(std::max<int64_t>(1, std::min<int64_t>((total + threads - 1) / threads, int64_t(1) << 20)));
}

// ---------------------------------------------------------------- cuDNN
#ifdef CLIPCU_WITH_CUDNN
struct CudnnDescs {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  template <class T>
  CudnnDescs(const ConvShape& s, T) {
    const cudnnDataType_t dt = std::is_same_v<T, float> ? CUDNN_DATA_FLOAT : CUDNN_DATA_BFLOAT16;
    CLIPCU_CUDNN_CHECK(cudnnCreateTensorDescriptor(&x));
    CLIPCU_CUDNN_CHECK(cudnnCreateTensorDescriptor(&y));
    CLIPCU_CUDNN_CHECK(cudnnCreateFilterDescriptor(&w));
    CLIPCU_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&conv));
    CLIPCU_CUDNN_CHECK(cudnnSetTensor4dDescriptor(x, CUDNN_TENSOR_NCHW, dt, int(s.N), int(s.Cin), int(s.H), int(s.W)));
    CLIPCU_CUDNN_CHECK(
        cudnnSetTensor4dDescriptor(y, CUDNN_TENSOR_NCHW, dt, int(s.N), int(s.Cout), int(s.OH), int(s.OW)));
    CLIPCU_CUDNN_CHECK(
        cudnnSetFilter4dDescriptor(w, dt, CUDNN_TENSOR_NCHW, int(s.Cout), int(s.Cin), int(s.KH), int(s.KW)));
    CLIPCU_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(conv, int(s.padding), int(s.padding), int(s.stride),
                                                       int(s.stride), 1, 1, CUDNN_CROSS_CORRELATION,
                                                       CUDNN_DATA_FLOAT));
    const cudnnMathType_t math = std::is_same_v<T, float>
                                     ? (s.allow_tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH)
                                     : CUDNN_TENSOR_OP_MATH;
    CLIPCU_CUDNN_CHECK(cudnnSetConvolutionMathType(conv, math));
  }
  ~CudnnDescs() {
    if (conv) cudnnDestroyConvolutionDescriptor(conv);
    if (w) cudnnDestroyFilterDescriptor(w);
    if (y) cudnnDestroyTensorDescriptor(y);
    if (x) cudnnDestroyTensorDescriptor(x);
  }
  CudnnDescs(const CudnnDescs&) = delete;
  CudnnDescs& operator=(const CudnnDescs&) = delete;
};

struct CudnnChoice {
  int algo = 0;
  size_t workspace = 0;
  bool found = false;  // false: no algorithm passes the filters (cached too)
};
constexpr size_t kCudnnMaxWorkspace = size_t(1) << 30;

std::mutex& cudnn_cache_mutex() {
  static std::mutex m;
  return m;
}
std::map<std::array<int64_t, 13>, CudnnChoice>& cudnn_cache() {
  static std::map<std::array<int64_t, 13>, CudnnChoice> c;
  return c;
}

// The algorithm cuDNN's heuristic ranks first among those that run, are deterministic (the same
// bits on every run, like our kernels: some backward algorithms add with atomics), fit the
// workspace limit and, for exact float (no TF32), avoid FFT and Winograd (their rounding is not
// float32's). Throws when there is none, unless `none_ok` (then .found says).
template <class T>
CudnnChoice cudnn_choose(const ConvShape& s, Pass pass, bool none_ok = false) {
  CLIPCU_CUDA_REQUIRE(s.cudnn, "conv2d: the Cudnn kernel needs ConvShape::cudnn (a cudnnHandle_t)");
  const bool exact = std::is_same_v<T, float> && !s.allow_tf32;
  const std::array<int64_t, 13> key = {s.N,      s.Cin,    s.H,       s.W,     s.Cout,
                                       s.KH,     s.KW,     s.stride,  s.padding, int64_t(pass),
                                       int64_t(std::is_same_v<T, float>), int64_t(s.allow_tf32),
                                       int64_t(reinterpret_cast<uintptr_t>(s.cudnn))};
  {
    std::lock_guard<std::mutex> lock(cudnn_cache_mutex());
    auto it = cudnn_cache().find(key);
    if (it != cudnn_cache().end() && (it->second.found || none_ok)) return it->second;
  }
  cudnnHandle_t h = static_cast<cudnnHandle_t>(s.cudnn);
  CudnnDescs d(s, T{});
  CudnnChoice choice;
  bool& found = choice.found;
  int returned = 0;
  if (pass == Pass::Fwd) {
    cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    CLIPCU_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(h, d.x, d.w, d.conv, d.y,
                                                              CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &returned, perf));
    for (int i = 0; i < returned && !found; ++i) {
      const auto a = perf[i].algo;
      if (perf[i].status != CUDNN_STATUS_SUCCESS || perf[i].determinism != CUDNN_DETERMINISTIC ||
          perf[i].memory > kCudnnMaxWorkspace)
        continue;
      if (exact && (a == CUDNN_CONVOLUTION_FWD_ALGO_FFT || a == CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING ||
                    a == CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD || a == CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED))
        continue;
      size_t ws = 0;
      if (cudnnGetConvolutionForwardWorkspaceSize(h, d.x, d.w, d.conv, d.y, a, &ws) != CUDNN_STATUS_SUCCESS) continue;
      choice = {int(a), ws};
      found = true;
    }
  } else if (pass == Pass::Dgrad) {
    cudnnConvolutionBwdDataAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
    CLIPCU_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(
        h, d.w, d.y, d.conv, d.x, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &returned, perf));
    for (int i = 0; i < returned && !found; ++i) {
      const auto a = perf[i].algo;
      if (perf[i].status != CUDNN_STATUS_SUCCESS || perf[i].determinism != CUDNN_DETERMINISTIC ||
          perf[i].memory > kCudnnMaxWorkspace)
        continue;
      if (exact && (a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT || a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING ||
                    a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD ||
                    a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED))
        continue;
      size_t ws = 0;
      if (cudnnGetConvolutionBackwardDataWorkspaceSize(h, d.w, d.y, d.conv, d.x, a, &ws) != CUDNN_STATUS_SUCCESS)
        continue;
      choice = {int(a), ws};
      found = true;
    }
  } else {
    cudnnConvolutionBwdFilterAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
    CLIPCU_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(
        h, d.x, d.y, d.conv, d.w, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &returned, perf));
    for (int i = 0; i < returned && !found; ++i) {
      const auto a = perf[i].algo;
      if (perf[i].status != CUDNN_STATUS_SUCCESS || perf[i].determinism != CUDNN_DETERMINISTIC ||
          perf[i].memory > kCudnnMaxWorkspace)
        continue;
      if (exact && (a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT || a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING ||
                    a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED))
        continue;
      size_t ws = 0;
      if (cudnnGetConvolutionBackwardFilterWorkspaceSize(h, d.x, d.y, d.conv, d.w, a, &ws) != CUDNN_STATUS_SUCCESS)
        continue;
      choice = {int(a), ws};
      found = true;
    }
  }
  {
    std::lock_guard<std::mutex> lock(cudnn_cache_mutex());
    cudnn_cache()[key] = choice;
  }
  CLIPCU_CUDA_REQUIRE(found || none_ok, "conv2d: cuDNN offers no deterministic algorithm for N "
                                            << s.N << " Cin " << s.Cin << " " << s.H << "x" << s.W << " Cout " << s.Cout
                                            << " kernel " << s.KH << "x" << s.KW << " (pass " << int(pass) << ")");
  return choice;
}
#endif  // CLIPCU_WITH_CUDNN

// ---------------------------------------------------------------- checks
template <class T>
void check_common(const ConvShape& s, const ConvArgs<T>& a, Pass pass, const char* what) {
  CLIPCU_CUDA_REQUIRE(s.N >= 0 && s.Cin > 0 && s.H > 0 && s.W > 0 && s.Cout > 0 && s.KH > 0 && s.KW > 0 &&
                          s.stride >= 1 && s.padding >= 0,
                      what << ": bad shape N " << s.N << " Cin " << s.Cin << " H " << s.H << " W " << s.W << " Cout "
                           << s.Cout << " KH " << s.KH << " KW " << s.KW << " stride " << s.stride << " padding "
                           << s.padding);
  CLIPCU_CUDA_REQUIRE(s.OH == (s.H + 2 * s.padding - s.KH) / s.stride + 1 && s.OW == (s.W + 2 * s.padding - s.KW) / s.stride + 1 &&
                          s.OH > 0 && s.OW > 0,
                      what << ": OH " << s.OH << " OW " << s.OW << " do not follow from the shape (use conv_shape())");
  // 32-bit plane and per-image offsets inside the kernels
  CLIPCU_CUDA_REQUIRE(s.Cin * s.H * s.W < (int64_t(1) << 31) && s.Cout * s.OH * s.OW < (int64_t(1) << 31),
                      what << ": one image holds 2^31 or more elements");
  size_t need = 0;
  if (s.kernel != ConvKernel::Simple)
    need = conv2d_workspace_bytes<T>(s, pass == Pass::Fwd ? ConvPass::Forward
                                        : pass == Pass::Dgrad ? ConvPass::BackwardData
                                                              : ConvPass::BackwardFilter);
  CLIPCU_CUDA_REQUIRE(need == 0 || (a.workspace && a.workspace_bytes >= need),
                      what << ": workspace of " << a.workspace_bytes << " bytes, " << need << " needed");
  CLIPCU_CUDA_REQUIRE(need == 0 || detail::aligned_to(a.workspace, 256), what << ": workspace not 256-byte aligned");
}

// Wgmma: bf16 products go to conv_wgmma.cu (which needs a device that runs wgmma; the
// launchers ask only for bf16), float ones to the TensorCore kernel.
bool use_wgmma(const ConvShape& s, const char* what) {
  if (s.kernel != ConvKernel::Wgmma) return false;
  int device = 0;
  CLIPCU_CUDA_CHECK(cudaGetDevice(&device));
  CLIPCU_CUDA_REQUIRE(conv_wgmma_available(device), what << ": the wgmma kernel needs a Hopper GPU (compute "
                                                            "capability 9.x), a build with sm_90a code, and "
                                                            "CLIPCU_WGMMA / CLIPCU_CONV_WGMMA not 0");
  return true;
}

}  // namespace

// ---------------------------------------------------------------- workspace
template <class T>
size_t conv2d_workspace_bytes(const ConvShape& s, ConvPass pass) {
  switch (s.kernel) {
    case ConvKernel::Simple: return 0;
    case ConvKernel::Wgmma: {
      ConvShape t = s;
      t.kernel = ConvKernel::TensorCore;  // the fallback's needs
      const size_t fallback = conv2d_workspace_bytes<T>(t, pass);
      return std::is_same_v<T, bf16> ? std::max(fallback, convwg::workspace_bytes(s, pass)) : fallback;
    }
    case ConvKernel::TensorCore:
      if (pass == ConvPass::Forward) return s.KH * s.KW > 1 ? align256(size_t(s.Cout * s.Cin * s.KH * s.KW) * sizeof(T)) : 0;
      if (pass == ConvPass::BackwardData) return align256(size_t(s.Cout * s.Cin * s.KH * s.KW) * sizeof(T));
      {
        const Split sp = wgrad_split(s, Cfg<T>::BK);
        return align256(size_t(sp.splits) * size_t(s.Cout * s.Cin * s.KH * s.KW) * sizeof(float));
      }
    case ConvKernel::Cudnn:
#ifdef CLIPCU_WITH_CUDNN
      return align256(cudnn_choose<T>(s, pass == ConvPass::Forward        ? Pass::Fwd
                                         : pass == ConvPass::BackwardData ? Pass::Dgrad
                                                                          : Pass::Wgrad)
                          .workspace);
#else
      CLIPCU_CUDA_REQUIRE(false, "conv2d: this build has no cuDNN (ConvKernel::Cudnn)");
#endif
  }
  return 0;
}

// ---------------------------------------------------------------- forward
template <class T>
void conv2d_forward(const ConvShape& s, const ConvArgs<T>& a, cudaStream_t stream) {
  check_common(s, a, Pass::Fwd, "conv2d_forward");
  CLIPCU_CUDA_REQUIRE(a.x && a.w && a.y, "conv2d_forward: x, w and y are required");
  if (s.N == 0) return;
  const Dims d = dims_of(s);
  if (s.kernel == ConvKernel::Simple) {
    conv_fwd_simple_kernel<T><<<grid_for(s.N * s.Cout * s.OH * s.OW), 256, 0, stream>>>(d, a.x, a.w, a.bias, a.y);
    CLIPCU_CUDA_CHECK_LAUNCH("conv_fwd_simple_kernel");
    return;
  }
  if (s.kernel == ConvKernel::Cudnn) {
#ifdef CLIPCU_WITH_CUDNN
    const CudnnChoice c = cudnn_choose<T>(s, Pass::Fwd);
    CudnnDescs ds(s, T{});
    cudnnHandle_t h = static_cast<cudnnHandle_t>(s.cudnn);
    CLIPCU_CUDNN_CHECK(cudnnSetStream(h, stream));
    const float alpha = 1.f, beta = 0.f;
    CLIPCU_CUDNN_CHECK(cudnnConvolutionForward(h, &alpha, ds.x, a.x, ds.w, a.w, ds.conv,
                                               cudnnConvolutionFwdAlgo_t(c.algo), a.workspace, a.workspace_bytes,
                                               &beta, ds.y, a.y));
    if (a.bias) {
      const int64_t total = s.N * s.Cout * s.OH * s.OW;
      bias_add_kernel<T><<<grid_for(total), 256, 0, stream>>>(total, s.Cout, s.OH * s.OW, a.bias, a.y);
      CLIPCU_CUDA_CHECK_LAUNCH("bias_add_kernel");
    }
    return;
#else
    CLIPCU_CUDA_REQUIRE(false, "conv2d_forward: this build has no cuDNN (ConvKernel::Cudnn)");
#endif
  }
  if constexpr (std::is_same_v<T, bf16>)
    if (use_wgmma(s, "conv2d_forward") && convwg::forward(s, a, stream)) return;
  const GemmDims gd = gemm_dims(s, Pass::Fwd);
  IgemmParams<T> p;
  p.M = gd.M, p.Ng = gd.Ng, p.K = gd.K;
  p.N = int(s.N), p.Cin = int(s.Cin), p.H = int(s.H), p.W = int(s.W), p.Cout = int(s.Cout), p.KH = int(s.KH);
  p.KW = int(s.KW), p.stride = int(s.stride), p.pad = int(s.padding), p.OH = int(s.OH), p.OW = int(s.OW);
  const int64_t KHW = s.KH * s.KW;
  if (KHW > 1) {
    T* wt = static_cast<T*>(a.workspace);
    weight_to_khwc_kernel<T><<<grid_for(s.Cout * s.Cin * KHW), 256, 0, stream>>>(s.Cout, s.Cin, KHW, a.w, wt);
    CLIPCU_CUDA_CHECK_LAUNCH("weight_to_khwc_kernel");
    p.A = wt;
  } else {
    p.A = a.w;
  }
  p.B = a.x, p.C = a.y, p.bias = a.bias;
  p.KT = (gd.K + Cfg<T>::BK - 1) / Cfg<T>::BK;
  p.tiles_per_split = p.KT;
  p.a_vec = detail::aligned_to(p.A, 16) && gd.K % (16 / int64_t(sizeof(T))) == 0;
  const dim3 grid(unsigned((gd.Ng + kBN - 1) / kBN), unsigned((gd.M + kBM - 1) / kBM), 1);
  CLIPCU_CUDA_REQUIRE(grid.y <= 65535, "conv2d_forward: Cout " << s.Cout << " too large");
  if (s.Cin % Cfg<T>::BK == 0) {
    conv_igemm_kernel<T, Pass::Fwd, true><<<grid, kThreads, 0, stream>>>(p);
  } else {
    conv_igemm_kernel<T, Pass::Fwd, false><<<grid, kThreads, 0, stream>>>(p);
  }
  CLIPCU_CUDA_CHECK_LAUNCH("conv_igemm_kernel (forward)");
}

// ---------------------------------------------------------------- backward-data
template <class T>
void conv2d_backward_data(const ConvShape& s, const ConvArgs<T>& a, cudaStream_t stream) {
  check_common(s, a, Pass::Dgrad, "conv2d_backward_data");
  CLIPCU_CUDA_REQUIRE(a.dy && a.w && a.dx, "conv2d_backward_data: dy, w and dx are required");
  if (s.N == 0) return;
  const Dims d = dims_of(s);
  if (s.kernel == ConvKernel::Simple) {
    conv_dgrad_simple_kernel<T><<<grid_for(s.N * s.Cin * s.H * s.W), 256, 0, stream>>>(d, a.dy, a.w, a.dx);
    CLIPCU_CUDA_CHECK_LAUNCH("conv_dgrad_simple_kernel");
    return;
  }
  if (s.kernel == ConvKernel::Cudnn) {
#ifdef CLIPCU_WITH_CUDNN
    const CudnnChoice c = cudnn_choose<T>(s, Pass::Dgrad);
    CudnnDescs ds(s, T{});
    cudnnHandle_t h = static_cast<cudnnHandle_t>(s.cudnn);
    CLIPCU_CUDNN_CHECK(cudnnSetStream(h, stream));
    const float alpha = 1.f, beta = 1.f;  // dx += (the gradient contract)
    CLIPCU_CUDNN_CHECK(cudnnConvolutionBackwardData(h, &alpha, ds.w, a.w, ds.y, a.dy, ds.conv,
                                                    cudnnConvolutionBwdDataAlgo_t(c.algo), a.workspace,
                                                    a.workspace_bytes, &beta, ds.x, a.dx));
    return;
#else
    CLIPCU_CUDA_REQUIRE(false, "conv2d_backward_data: this build has no cuDNN (ConvKernel::Cudnn)");
#endif
  }
  if constexpr (std::is_same_v<T, bf16>)
    if (use_wgmma(s, "conv2d_backward_data") && convwg::backward_data(s, a, stream)) return;
  const GemmDims gd = gemm_dims(s, Pass::Dgrad);
  IgemmParams<T> p;
  p.M = gd.M, p.Ng = gd.Ng, p.K = gd.K;
  p.N = int(s.N), p.Cin = int(s.Cin), p.H = int(s.H), p.W = int(s.W), p.Cout = int(s.Cout), p.KH = int(s.KH);
  p.KW = int(s.KW), p.stride = int(s.stride), p.pad = int(s.padding), p.OH = int(s.OH), p.OW = int(s.OW);
  const int64_t KHW = s.KH * s.KW;
  T* wd = static_cast<T*>(a.workspace);
  weight_to_dgrad_kernel<T><<<grid_for(s.Cout * s.Cin * KHW), 256, 0, stream>>>(s.Cout, s.Cin, KHW, a.w, wd);
  CLIPCU_CUDA_CHECK_LAUNCH("weight_to_dgrad_kernel");
  p.A = wd, p.B = a.dy, p.C = a.dx;
  p.KT = (gd.K + Cfg<T>::BK - 1) / Cfg<T>::BK;
  p.tiles_per_split = p.KT;
  p.a_vec = gd.K % (16 / int64_t(sizeof(T))) == 0;  // the workspace is 256-byte aligned
  const dim3 grid(unsigned((gd.Ng + kBN - 1) / kBN), unsigned((gd.M + kBM - 1) / kBM), 1);
  CLIPCU_CUDA_REQUIRE(grid.y <= 65535, "conv2d_backward_data: Cin " << s.Cin << " too large");
  if (s.Cout % Cfg<T>::BK == 0) {
    conv_igemm_kernel<T, Pass::Dgrad, true><<<grid, kThreads, 0, stream>>>(p);
  } else {
    conv_igemm_kernel<T, Pass::Dgrad, false><<<grid, kThreads, 0, stream>>>(p);
  }
  CLIPCU_CUDA_CHECK_LAUNCH("conv_igemm_kernel (backward-data)");
}

// ---------------------------------------------------------------- backward-filter
template <class T>
void conv2d_backward_filter(const ConvShape& s, const ConvArgs<T>& a, cudaStream_t stream) {
  CLIPCU_CUDA_REQUIRE(a.dy && (a.dw || a.dbias), "conv2d_backward_filter: dy and dw and/or dbias are required");
  if (a.dw) {
    check_common(s, a, Pass::Wgrad, "conv2d_backward_filter");
    CLIPCU_CUDA_REQUIRE(a.x, "conv2d_backward_filter: x is required for dw");
  }
  if (s.N == 0) return;
  if (a.dbias) {
    bias_grad_kernel<T><<<unsigned(s.Cout), 256, 0, stream>>>(s.N, s.Cout, s.OH * s.OW, a.dy, a.dbias);
    CLIPCU_CUDA_CHECK_LAUNCH("bias_grad_kernel");
  }
  if (!a.dw) return;
  const Dims d = dims_of(s);
  if (s.kernel == ConvKernel::Simple) {
    const int64_t blocks = s.Cout * s.Cin * s.KH * s.KW;
    CLIPCU_CUDA_REQUIRE(blocks < (int64_t(1) << 31), "conv2d_backward_filter: weight too large for the simple kernel");
    conv_wgrad_simple_kernel<T><<<unsigned(blocks), 128, 0, stream>>>(d, a.x, a.dy, a.dw);
    CLIPCU_CUDA_CHECK_LAUNCH("conv_wgrad_simple_kernel");
    return;
  }
  if (s.kernel == ConvKernel::Cudnn) {
#ifdef CLIPCU_WITH_CUDNN
    const CudnnChoice c = cudnn_choose<T>(s, Pass::Wgrad);
    CudnnDescs ds(s, T{});
    cudnnHandle_t h = static_cast<cudnnHandle_t>(s.cudnn);
    CLIPCU_CUDNN_CHECK(cudnnSetStream(h, stream));
    const float alpha = 1.f, beta = 1.f;  // dw +=
    CLIPCU_CUDNN_CHECK(cudnnConvolutionBackwardFilter(h, &alpha, ds.x, a.x, ds.y, a.dy, ds.conv,
                                                      cudnnConvolutionBwdFilterAlgo_t(c.algo), a.workspace,
                                                      a.workspace_bytes, &beta, ds.w, a.dw));
    return;
#else
    CLIPCU_CUDA_REQUIRE(false, "conv2d_backward_filter: this build has no cuDNN (ConvKernel::Cudnn)");
#endif
  }
  if constexpr (std::is_same_v<T, bf16>)
    if (use_wgmma(s, "conv2d_backward_filter") && convwg::backward_filter(s, a, stream)) return;
  const GemmDims gd = gemm_dims(s, Pass::Wgrad);
  const Split sp = wgrad_split(s, Cfg<T>::BK);
  IgemmParams<T> p;
  p.M = gd.M, p.Ng = gd.Ng, p.K = gd.K;
  p.N = int(s.N), p.Cin = int(s.Cin), p.H = int(s.H), p.W = int(s.W), p.Cout = int(s.Cout), p.KH = int(s.KH);
  p.KW = int(s.KW), p.stride = int(s.stride), p.pad = int(s.padding), p.OH = int(s.OH), p.OW = int(s.OW);
  p.A = a.dy, p.B = a.x;
  p.partial = static_cast<float*>(a.workspace);
  p.KT = sp.KT, p.tiles_per_split = sp.tiles_per_split;
  const dim3 grid(unsigned((gd.Ng + kBN - 1) / kBN), unsigned((gd.M + kBM - 1) / kBM), unsigned(sp.splits));
  CLIPCU_CUDA_REQUIRE(grid.y <= 65535, "conv2d_backward_filter: Cout " << s.Cout << " too large");
  conv_igemm_kernel<T, Pass::Wgrad, false><<<grid, kThreads, 0, stream>>>(p);
  CLIPCU_CUDA_CHECK_LAUNCH("conv_igemm_kernel (backward-filter)");
  const int64_t MN = gd.M * gd.Ng;
  split_reduce_kernel<T><<<grid_for(MN), 256, 0, stream>>>(MN, sp.splits, p.partial, a.dw);
  CLIPCU_CUDA_CHECK_LAUNCH("split_reduce_kernel");
}

template <class T>
bool conv_cudnn_has_algorithms(const ConvShape& s) {
#ifdef CLIPCU_WITH_CUDNN
  for (Pass p : {Pass::Fwd, Pass::Dgrad, Pass::Wgrad})
    if (!cudnn_choose<T>(s, p, /*none_ok=*/true).found) return false;
  return true;
#else
  (void)s;
  return false;
#endif
}

#define CLIPCU_CONV_INSTANTIATE(T)                                                                 \
  template size_t conv2d_workspace_bytes<T>(const ConvShape&, ConvPass);                           \
  template bool conv_cudnn_has_algorithms<T>(const ConvShape&);                                    \
  template void conv2d_forward<T>(const ConvShape&, const ConvArgs<T>&, cudaStream_t);             \
  template void conv2d_backward_data<T>(const ConvShape&, const ConvArgs<T>&, cudaStream_t);       \
  template void conv2d_backward_filter<T>(const ConvShape&, const ConvArgs<T>&, cudaStream_t);
CLIPCU_CONV_INSTANTIATE(float)
CLIPCU_CONV_INSTANTIATE(bf16)
#undef CLIPCU_CONV_INSTANTIATE

}  // namespace clipcu::cuda
