// CUDA GEMM: C = epilogue(alpha op(A) op(B) + beta C), row-major (see gemm.cuh for the epilogue).
//
// TensorCore backend. A block computes a 128 x 128 tile of C with 8 warps laid out 2 (M) x 4 (N);
// a warp owns 64 x 32 = 4 x 4 mma tiles of 16 x 8 and keeps their float accumulators in
// registers (64 per thread). K is walked in steps of BK (32 for bf16, 16 for float: 64 bytes per
// row either way) through a kStages-deep ring of shared-memory stages filled by cp.async: the
// loads of step kt + kStages - 1 are in flight while step kt computes. One barrier per step:
// the stage written at step kt was last read at step kt - 1, before that barrier.
// Shared tiles keep the global layout of their operand ([MN][BK] when K is contiguous, [BK][MN]
// when M or N is), so the four transpose forms differ only in how a fragment element is
// addressed; the row paddings make every fragment load of a warp conflict-free (a K-contiguous
// bf16 pair is one 32-bit load, an MN-contiguous one two 16-bit loads). Operands whose base or
// row length is not a multiple of 16 bytes (odd sizes) are loaded element by element with
// bounds checks instead of cp.async; out-of-range elements are zero in both paths, so partial
// tiles need no special case in the math. bf16 uses mma m16n8k16; float uses TF32 m16n8k8 with
// the inputs rounded to nearest TF32 (cvt.rna).
//
// Simple backend: SIMT, a block of 256 threads computes a 64 x 64 tile, each thread a 4 x 4
// register tile with rows ty + 16 i and columns tx + 16 j (conflict-free shared reads,
// coalesced stores); K in steps of 16 through shared memory, every load bounds-checked.
//
// Cublas backend: cublasLtMatmul in column-major terms (C^T = op(B)^T op(A)^T, so our B is
// cuBLAS's A), with the bias epilogue fused when it is the only epilogue step, otherwise a
// separate elementwise pass; cublasGemmEx when the Lt heuristic returns nothing.
#include "kernels/cuda/gemm.cuh"

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kernels/cuda/common/check.h"
#include "kernels/cuda/common/device.cuh"

namespace clipcu::cuda {

const char* gemm_backend_name(GemmBackend b) {
  switch (b) {
    case GemmBackend::Simple: return "simple";
    case GemmBackend::TensorCore: return "tensorcore";
    case GemmBackend::Cublas: return "cublas";
  }
  return "?";
}

namespace {

// ---------------------------------------------------------------- the epilogue (all backends)
__device__ __forceinline__ float act_forward_rt(Act a, float x) {
  switch (a) {
    case Act::None: return x;
    case Act::ReLU: return act_forward<Act::ReLU>(x);
    case Act::QuickGELU: return act_forward<Act::QuickGELU>(x);
    case Act::GELU: return act_forward<Act::GELU>(x);
    case Act::GELUTanh: return act_forward<Act::GELUTanh>(x);
  }
  return x;
}

// Writes element (m, n) of C from the raw accumulator value (m < M and n < N checked by callers).
template <class T>
__device__ __forceinline__ void epilogue_store(const GemmParams<T>& p, int64_t m, int64_t n, float acc) {
  const int64_t idx = m * p.N + n;
  float v = p.alpha * acc;
  if (p.beta != 0.f) v += p.beta * to_float(p.C[idx]);
  if (p.bias) v += to_float(p.bias[n]);
  if (p.pre_act) p.pre_act[idx] = from_float<T>(v);
  v = act_forward_rt(p.act, v);
  if (p.residual) v += to_float(p.residual[idx]);
  p.C[idx] = from_float<T>(v);
}

// ---------------------------------------------------------------- tensor-core kernel
constexpr int kTcThreads = 256;
constexpr int kTcBM = 128;
constexpr int kTcBN = 128;
constexpr int kTcStages = 3;

template <class T>
struct TcCfg;
template <>
struct TcCfg<bf16> {
  static constexpr int BK = 32;    // elements of K per stage
  static constexpr int KSTEP = 16;  // K of one mma
};
template <>
struct TcCfg<float> {
  static constexpr int BK = 16;
  static constexpr int KSTEP = 8;
};

// One operand's tile in one stage: [kRows][kLd] elements. K-contiguous operands (A not
// transposed, B transposed) are [128][BK]; MN-contiguous ones [BK][128]. Paddings: 16 bytes on
// K-contiguous rows, 8 elements on MN-contiguous rows (the strides that spread a fragment load
// of 32 lanes over 32 banks, worked out for both element sizes). Every row and every stage
// stays a multiple of 16 bytes (cp.async destinations).
template <class T, bool kKContig>
struct TileShape {
  static constexpr int BK = TcCfg<T>::BK;
  static constexpr int kRows = kKContig ? kTcBM : BK;
  static constexpr int kCols = kKContig ? BK : kTcBM;
  static constexpr int kLd = kCols + (kKContig ? int(16 / sizeof(T)) : 8);
  static constexpr int kElems = kRows * kLd;
  static_assert((kLd * sizeof(T)) % 16 == 0, "rows must stay 16-byte aligned");
};

template <bool kTransA, bool kTransB, class T>
constexpr size_t tc_smem_bytes() {
  return size_t(kTcStages) * (TileShape<T, !kTransA>::kElems + TileShape<T, kTransB>::kElems) * sizeof(T);
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// "memory": no shared-memory access may be moved across the wait by the compiler
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Copies the [kRows][kCols] block at (r0, c0) of a row-major global matrix [rows][cols] into
// shared memory (leading dimension kLd), zero outside the matrix. vec: the base is 16-byte
// aligned and cols is a multiple of 16 bytes, so a 16-byte chunk is wholly inside or outside.
template <class T, int kRows, int kCols, int kLd>
__device__ __forceinline__ void load_tile(T* s, const T* g, int64_t rows, int64_t cols, int64_t r0, int64_t c0,
                                          bool vec) {
  if (vec) {
    constexpr int E = 16 / sizeof(T);
    constexpr int kChunksPerRow = kCols / E;
    constexpr int kChunks = kRows * kChunksPerRow;
    static_assert(kChunks % kTcThreads == 0, "whole chunks per thread");
#pragma unroll
    for (int i = 0; i < kChunks / kTcThreads; ++i) {
      const int idx = int(threadIdx.x) + i * kTcThreads;
      const int r = idx / kChunksPerRow, c = (idx % kChunksPerRow) * E;
      const int64_t gr = r0 + r, gc = c0 + c;
      const bool ok = gr < rows && gc < cols;
      cp_async16(s + r * kLd + c, ok ? g + gr * cols + gc : g, ok ? 16 : 0);
    }
  } else {
    constexpr int kElems = kRows * kCols;
    static_assert(kElems % kTcThreads == 0, "whole elements per thread");
#pragma unroll 4
    for (int i = 0; i < kElems / kTcThreads; ++i) {
      const int idx = int(threadIdx.x) + i * kTcThreads;
      const int r = idx / kCols, c = idx % kCols;
      const int64_t gr = r0 + r, gc = c0 + c;
      s[r * kLd + c] = (gr < rows && gc < cols) ? g[gr * cols + gc] : from_float<T>(0.f);
    }
  }
}

__device__ __forceinline__ uint32_t pack_bf16(bf16 lo, bf16 hi) {
  return uint32_t(__bfloat16_as_ushort(lo)) | (uint32_t(__bfloat16_as_ushort(hi)) << 16);
}
__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}

// Element (m, k) of the A stage and (k, n) of the B stage, in either layout.
template <class T, bool kTransA>
__device__ __forceinline__ const T* a_ptr(const T* s, int m, int k) {
  constexpr int ld = TileShape<T, !kTransA>::kLd;
  return kTransA ? s + k * ld + m : s + m * ld + k;
}
template <class T, bool kTransB>
__device__ __forceinline__ const T* b_ptr(const T* s, int k, int n) {
  constexpr int ld = TileShape<T, kTransB>::kLd;
  return kTransB ? s + n * ld + k : s + k * ld + n;
}

// bf16 pairs along K: (m, k) and (m, k + 1) in one register, the lower k in the low half.
template <bool kTransA>
__device__ __forceinline__ uint32_t a_pair(const bf16* s, int m, int k) {
  if constexpr (!kTransA) {
    return *reinterpret_cast<const uint32_t*>(a_ptr<bf16, kTransA>(s, m, k));  // k even: 4-byte aligned
  } else {
    return pack_bf16(*a_ptr<bf16, kTransA>(s, m, k), *a_ptr<bf16, kTransA>(s, m, k + 1));
  }
}
template <bool kTransB>
__device__ __forceinline__ uint32_t b_pair(const bf16* s, int k, int n) {
  if constexpr (kTransB) {
    return *reinterpret_cast<const uint32_t*>(b_ptr<bf16, kTransB>(s, k, n));
  } else {
    return pack_bf16(*b_ptr<bf16, kTransB>(s, k, n), *b_ptr<bf16, kTransB>(s, k + 1, n));
  }
}

__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Fragments of one K step (kb: the step's first k inside the stage) for a warp at (wm0, wn0).
// Lane layout (PTX ISA, mma.m16n8k16 / m16n8k8): g = lane / 4, t = lane % 4;
//   A bf16: {(g, 2t..2t+1)}, {(g+8, 2t..)}, {(g, 2t+8..)}, {(g+8, 2t+8..)}
//   A tf32: (g, t), (g+8, t), (g, t+4), (g+8, t+4)
//   B bf16: {(2t..2t+1, g)}, {(2t+8.., g)};  B tf32: (t, g), (t+4, g)
template <bool kTransA, bool kTransB>
__device__ __forceinline__ void warp_mma_step(float (&acc)[4][4][4], const bf16* as, const bf16* bs, int wm0,
                                              int wn0, int kb, int g, int t) {
  uint32_t a[4][4], b[4][2];
#pragma unroll
  for (int mt = 0; mt < 4; ++mt) {
    const int m = wm0 + mt * 16 + g;
    a[mt][0] = a_pair<kTransA>(as, m, kb + 2 * t);
    a[mt][1] = a_pair<kTransA>(as, m + 8, kb + 2 * t);
    a[mt][2] = a_pair<kTransA>(as, m, kb + 2 * t + 8);
    a[mt][3] = a_pair<kTransA>(as, m + 8, kb + 2 * t + 8);
  }
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
    const int n = wn0 + nt * 8 + g;
    b[nt][0] = b_pair<kTransB>(bs, kb + 2 * t, n);
    b[nt][1] = b_pair<kTransB>(bs, kb + 2 * t + 8, n);
  }
#pragma unroll
  for (int mt = 0; mt < 4; ++mt)
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) mma_bf16(acc[mt][nt], a[mt], b[nt]);
}

template <bool kTransA, bool kTransB>
__device__ __forceinline__ void warp_mma_step(float (&acc)[4][4][4], const float* as, const float* bs, int wm0,
                                              int wn0, int kb, int g, int t) {
  uint32_t a[4][4], b[4][2];
#pragma unroll
  for (int mt = 0; mt < 4; ++mt) {
    const int m = wm0 + mt * 16 + g;
    a[mt][0] = to_tf32(*a_ptr<float, kTransA>(as, m, kb + t));
    a[mt][1] = to_tf32(*a_ptr<float, kTransA>(as, m + 8, kb + t));
    a[mt][2] = to_tf32(*a_ptr<float, kTransA>(as, m, kb + t + 4));
    a[mt][3] = to_tf32(*a_ptr<float, kTransA>(as, m + 8, kb + t + 4));
  }
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
    const int n = wn0 + nt * 8 + g;
    b[nt][0] = to_tf32(*b_ptr<float, kTransB>(bs, kb + t, n));
    b[nt][1] = to_tf32(*b_ptr<float, kTransB>(bs, kb + t + 4, n));
  }
#pragma unroll
  for (int mt = 0; mt < 4; ++mt)
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) mma_tf32(acc[mt][nt], a[mt], b[nt]);
}

// grid: (ceil(N / 128), ceil(M / 128)); block: 256 threads; dynamic shared memory:
// tc_smem_bytes<kTransA, kTransB, T>(). a_vec / b_vec: the operand may be loaded with cp.async.
template <class T, bool kTransA, bool kTransB>
__global__ void __launch_bounds__(kTcThreads) gemm_tc_kernel(const GemmParams<T> p, bool a_vec, bool b_vec) {
  using ATile = TileShape<T, !kTransA>;
  using BTile = TileShape<T, kTransB>;
  constexpr int BK = TcCfg<T>::BK;
  constexpr int KSTEP = TcCfg<T>::KSTEP;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* As = reinterpret_cast<T*>(smem_raw);   // [kTcStages][ATile::kElems]
  T* Bs = As + kTcStages * ATile::kElems;  // [kTcStages][BTile::kElems]

  const int64_t m0 = int64_t(blockIdx.y) * kTcBM, n0 = int64_t(blockIdx.x) * kTcBN;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int wm0 = (warp % 2) * 64, wn0 = (warp / 2) * 32;  // the warp's tile inside the block tile
  const int g = lane >> 2, t = lane & 3;
  const int64_t M = p.M, N = p.N, K = p.K;

  auto load_stage = [&](int stage, int64_t kt) {
    const int64_t k0 = kt * BK;
    T* as = As + stage * ATile::kElems;
    T* bs = Bs + stage * BTile::kElems;
    if constexpr (!kTransA) {
      load_tile<T, ATile::kRows, ATile::kCols, ATile::kLd>(as, p.A, M, K, m0, k0, a_vec);  // A [M, K]
    } else {
      load_tile<T, ATile::kRows, ATile::kCols, ATile::kLd>(as, p.A, K, M, k0, m0, a_vec);  // A [K, M]
    }
    if constexpr (kTransB) {
      load_tile<T, BTile::kRows, BTile::kCols, BTile::kLd>(bs, p.B, N, K, n0, k0, b_vec);  // B [N, K]
    } else {
      load_tile<T, BTile::kRows, BTile::kCols, BTile::kLd>(bs, p.B, K, N, k0, n0, b_vec);  // B [K, N]
    }
  };

  float acc[4][4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

  const int64_t KT = (K + BK - 1) / BK;
#pragma unroll
  for (int s = 0; s < kTcStages - 1; ++s) {
    if (s < KT) load_stage(s, s);
    cp_async_commit();  // possibly empty: keeps the group count uniform
  }
  for (int64_t kt = 0; kt < KT; ++kt) {
    // groups committed so far: kTcStages - 1 + kt; at most kTcStages - 2 pending => step kt landed
    cp_async_wait<kTcStages - 2>();
    __syncthreads();  // step kt visible to all; everyone is done with step kt - 1's stage
    const int64_t next = kt + kTcStages - 1;
    if (next < KT) load_stage(int(next % kTcStages), next);  // overwrites the stage of step kt - 1
    cp_async_commit();
    const int stage = int(kt % kTcStages);
    const T* as = As + stage * ATile::kElems;
    const T* bs = Bs + stage * BTile::kElems;
#pragma unroll
    for (int kb = 0; kb < BK; kb += KSTEP) warp_mma_step<kTransA, kTransB>(acc, as, bs, wm0, wn0, kb, g, t);
  }
  cp_async_wait<0>();  // nothing real is pending, but leave no group behind

  // accumulator element e of tile (mt, nt): row g (+8 for e >= 2), column 2t (+1 for odd e)
#pragma unroll
  for (int mt = 0; mt < 4; ++mt)
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t m = m0 + wm0 + mt * 16 + g + (e >= 2 ? 8 : 0);
        const int64_t n = n0 + wn0 + nt * 8 + 2 * t + (e & 1);
        if (m < M && n < N) epilogue_store(p, m, n, acc[mt][nt][e]);
      }
}

// ---------------------------------------------------------------- SIMT kernel (the reference)
constexpr int kSimtTile = 64;
constexpr int kSimtBK = 16;

// grid: (ceil(N / 64), ceil(M / 64)); block: 256 threads.
template <class T>
__global__ void __launch_bounds__(256) gemm_simt_kernel(const GemmParams<T> p) {
  __shared__ float As[kSimtBK][kSimtTile + 1];  // As[k][m]
  __shared__ float Bs[kSimtBK][kSimtTile + 1];  // Bs[k][n]
  const int tid = int(threadIdx.x), tx = tid % 16, ty = tid / 16;
  const int64_t m0 = int64_t(blockIdx.y) * kSimtTile, n0 = int64_t(blockIdx.x) * kSimtTile;
  const int64_t M = p.M, N = p.N, K = p.K;
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < K; k0 += kSimtBK) {
    for (int idx = tid; idx < kSimtBK * kSimtTile; idx += 256) {
      // consecutive threads walk the operand's contiguous dimension (coalesced loads)
      int mi, ki;
      if (!p.trans_a) {
        mi = idx / kSimtBK, ki = idx % kSimtBK;
      } else {
        ki = idx / kSimtTile, mi = idx % kSimtTile;
      }
      const int64_t m = m0 + mi, k = k0 + ki;
      As[ki][mi] = (m < M && k < K) ? to_float(p.trans_a ? p.A[k * M + m] : p.A[m * K + k]) : 0.f;
      int ni, kj;
      if (p.trans_b) {
        ni = idx / kSimtBK, kj = idx % kSimtBK;
      } else {
        kj = idx / kSimtTile, ni = idx % kSimtTile;
      }
      const int64_t n = n0 + ni, kk = k0 + kj;
      Bs[kj][ni] = (n < N && kk < K) ? to_float(p.trans_b ? p.B[n * K + kk] : p.B[kk * N + n]) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kSimtBK; ++k) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = As[k][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = Bs[k][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t m = m0 + ty + 16 * i, n = n0 + tx + 16 * j;
      if (m < M && n < N) epilogue_store(p, m, n, acc[i][j]);
    }
}

// ---------------------------------------------------------------- elementwise epilogue pass
// C already holds alpha op(A) op(B) + beta C; applies bias, pre_act, act, residual.
template <class T>
__global__ void gemm_epilogue_kernel(const GemmParams<T> p) {
  const int64_t total = p.M * p.N;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = idx % p.N;
    float v = to_float(p.C[idx]);
    if (p.bias) v += to_float(p.bias[n]);
    if (p.pre_act) p.pre_act[idx] = from_float<T>(v);
    v = act_forward_rt(p.act, v);
    if (p.residual) v += to_float(p.residual[idx]);
    p.C[idx] = from_float<T>(v);
  }
}

template <class T>
bool needs_epilogue_pass(const GemmParams<T>& p) {
  return p.bias || p.pre_act || p.act != Act::None || p.residual;
}

template <class T>
void launch_epilogue(const GemmParams<T>& p, cudaStream_t stream) {
  const int64_t total = p.M * p.N;
  if (total == 0) return;
  const int64_t blocks = std::min<int64_t>((total + 255) / 256, 65536);
  gemm_epilogue_kernel<T><<<unsigned(blocks), 256, 0, stream>>>(p);
  CLIPCU_CUDA_CHECK_LAUNCH("gemm_epilogue_kernel");
}

// ---------------------------------------------------------------- launchers
template <class T, bool kTransA, bool kTransB>
void launch_tc(const GemmParams<T>& p, cudaStream_t stream) {
  constexpr int E = 16 / sizeof(T);
  // cp.async needs a 16-byte aligned base and rows that are whole 16-byte chunks
  const int64_t a_cols = kTransA ? p.M : p.K, b_cols = kTransB ? p.K : p.N;
  const bool a_vec = detail::aligned_to(p.A, 16) && a_cols % E == 0;
  const bool b_vec = detail::aligned_to(p.B, 16) && b_cols % E == 0;
  constexpr size_t smem = tc_smem_bytes<kTransA, kTransB, T>();
  auto kernel = gemm_tc_kernel<T, kTransA, kTransB>;
  CLIPCU_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  const dim3 grid(unsigned((p.N + kTcBN - 1) / kTcBN), unsigned((p.M + kTcBM - 1) / kTcBM));
  kernel<<<grid, kTcThreads, smem, stream>>>(p, a_vec, b_vec);
  CLIPCU_CUDA_CHECK_LAUNCH("gemm_tc_kernel");
}

template <class T>
void launch_simt(const GemmParams<T>& p, cudaStream_t stream) {
  const dim3 grid(unsigned((p.N + kSimtTile - 1) / kSimtTile), unsigned((p.M + kSimtTile - 1) / kSimtTile));
  gemm_simt_kernel<T><<<grid, 256, 0, stream>>>(p);
  CLIPCU_CUDA_CHECK_LAUNCH("gemm_simt_kernel");
}

template <class T>
constexpr cudaDataType_t cuda_type() {
  return std::is_same_v<T, float> ? CUDA_R_32F : CUDA_R_16BF;
}

// RAII for the cuBLASLt descriptors of one call.
struct LtDescs {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~LtDescs() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

// Column-major view: D (N x M, ld N) = op(Bc) (N x K) * op(Ac) (K x M), where cuBLAS's first
// operand is our B and its second our A.
template <class T>
void launch_cublas(const GemmParams<T>& p_in, cudaStream_t stream) {
  CLIPCU_CUDA_REQUIRE(p_in.lt || p_in.cublas, "gemm: the Cublas backend needs a cuBLASLt or cuBLAS handle");
  GemmParams<T> p = p_in;
  if (p.residual && p.residual == p.C) {
    // cuBLAS overwrites C before the epilogue pass could read it as the residual. With no
    // activation and no pre_act, "+ residual" after everything equals "+ 1 * C" before: fold it.
    CLIPCU_CUDA_REQUIRE(p.act == Act::None && !p.pre_act,
                        "gemm: the Cublas backend cannot take residual == C together with an activation or "
                        "pre_act (pass a separate residual buffer)");
    p.beta += 1.f;
    p.residual = nullptr;
  }
  const cudaDataType_t dt = cuda_type<T>();
  const cublasComputeType_t compute =
      (std::is_same_v<T, float> && p.allow_tf32) ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  const cublasOperation_t op_first = p.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;   // our B
  const cublasOperation_t op_second = p.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;  // our A
  const int64_t m = p.N, n = p.M, k = p.K;
  const int64_t ld_first = p.trans_b ? p.K : p.N;   // rows of B's column-major view
  const int64_t ld_second = p.trans_a ? p.M : p.K;  // rows of A's column-major view
  // cuBLASLt's bias epilogue wants a 16-byte aligned bias (a view into a larger tensor may not be)
  const bool bias_only = p.bias && !p.pre_act && p.act == Act::None && !p.residual &&
                         reinterpret_cast<uintptr_t>(p.bias) % 16 == 0;
  bool done = false;

  if (p.lt) {
    LtDescs d;
    CLIPCU_CUBLAS_CHECK(cublasLtMatmulDescCreate(&d.op, compute, CUDA_R_32F));
    CLIPCU_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSA, &op_first, sizeof(op_first)));
    CLIPCU_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSB, &op_second, sizeof(op_second)));
    if (bias_only) {
      const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;  // bias per row of D (= per n), type of D
      const void* bias = p.bias;
      CLIPCU_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
      CLIPCU_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    }
    // stored shapes (before op): first operand rows x cols = (trans_b ? K x N : N x K)
    CLIPCU_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.a, dt, uint64_t(p.trans_b ? k : m), uint64_t(p.trans_b ? m : k), ld_first));
    CLIPCU_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.b, dt, uint64_t(p.trans_a ? n : k), uint64_t(p.trans_a ? k : n), ld_second));
    CLIPCU_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.c, dt, uint64_t(m), uint64_t(n), m));
    CLIPCU_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&d.pref));
    const uint64_t ws = p.workspace ? uint64_t(p.workspace_bytes) : 0;
    CLIPCU_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(d.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(p.lt, d.op, d.a, d.b, d.c, d.c, d.pref, 1, &result, &found);
    if (hs == CUBLAS_STATUS_SUCCESS && found > 0) {
      // an algorithm the heuristic offered can still refuse these operands (NOT_SUPPORTED): then
      // the plain cuBLAS call below does the product and the epilogue pass the rest
      const cublasStatus_t ms = cublasLtMatmul(p.lt, d.op, &p.alpha, p.B, d.a, p.A, d.b, &p.beta, p.C, d.c, p.C,
                                               d.c, &result.algo, p.workspace, p.workspace ? p.workspace_bytes : 0,
                                               stream);
      if (ms == CUBLAS_STATUS_SUCCESS) {
        done = true;
        if (bias_only) return;
      } else if (ms != CUBLAS_STATUS_NOT_SUPPORTED) {
        CLIPCU_CUBLAS_CHECK(ms);
      }
    }
  }
  if (!done) {
    CLIPCU_CUDA_REQUIRE(p.cublas, "gemm: cuBLASLt found no algorithm for M " << p.M << " N " << p.N << " K " << p.K
                                                                          << " and no cuBLAS handle was given");
    CLIPCU_CUBLAS_CHECK(cublasSetStream(p.cublas, stream));
    CLIPCU_CUBLAS_CHECK(cublasGemmEx(p.cublas, op_first, op_second, int(m), int(n), int(k), &p.alpha, p.B, dt,
                                     int(ld_first), p.A, dt, int(ld_second), &p.beta, p.C, dt, int(m), compute,
                                     CUBLAS_GEMM_DEFAULT));
  }
  if (needs_epilogue_pass(p)) launch_epilogue(p, stream);
}

template <class T>
void check_params(const GemmParams<T>& p) {
  CLIPCU_CUDA_REQUIRE(p.M >= 0 && p.N >= 0 && p.K >= 0,
                      "gemm: negative size M " << p.M << " N " << p.N << " K " << p.K);
  // gridDim.y counts row tiles (at most 65535 of the smaller, 64-row tile)
  CLIPCU_CUDA_REQUIRE(p.M <= int64_t(65535) * kSimtTile && p.N <= (int64_t(1) << 31),
                      "gemm: M " << p.M << " or N " << p.N << " is beyond the grid limits");
  CLIPCU_CUDA_REQUIRE(p.C, "gemm: C is null");
  CLIPCU_CUDA_REQUIRE(p.K == 0 || (p.A && p.B), "gemm: A or B is null");
  CLIPCU_CUDA_REQUIRE(p.pre_act != p.C || !p.pre_act, "gemm: pre_act must not be C");
}

}  // namespace

template <class T>
void gemm(const GemmParams<T>& p, cudaStream_t stream) {
  check_params(p);
  if (p.M == 0 || p.N == 0) return;
  GemmBackend backend = p.backend;
  // cuBLAS does not take K == 0 everywhere, and its int arguments bound the fallback's sizes
  if (backend == GemmBackend::Cublas && (p.K == 0 || p.M > INT32_MAX || p.N > INT32_MAX || p.K > INT32_MAX))
    backend = GemmBackend::Simple;
  switch (backend) {
    case GemmBackend::Simple: launch_simt(p, stream); break;
    case GemmBackend::TensorCore:
      if (!p.trans_a && !p.trans_b) launch_tc<T, false, false>(p, stream);
      else if (!p.trans_a && p.trans_b) launch_tc<T, false, true>(p, stream);
      else if (p.trans_a && !p.trans_b) launch_tc<T, true, false>(p, stream);
      else launch_tc<T, true, true>(p, stream);
      break;
    case GemmBackend::Cublas: launch_cublas(p, stream); break;
  }
}

template <class T>
void gemm_epilogue(const GemmParams<T>& p, cudaStream_t stream) {
  CLIPCU_CUDA_REQUIRE(p.M >= 0 && p.N >= 0 && p.C, "gemm_epilogue: bad arguments");
  launch_epilogue(p, stream);
}

template void gemm<float>(const GemmParams<float>&, cudaStream_t);
template void gemm<bf16>(const GemmParams<bf16>&, cudaStream_t);
template void gemm_epilogue<float>(const GemmParams<float>&, cudaStream_t);
template void gemm_epilogue<bf16>(const GemmParams<bf16>&, cudaStream_t);

}  // namespace clipcu::cuda
