// CUDA GEMM: C = epilogue(alpha op(A) op(B) + beta C), row-major (see gemm.cuh for the epilogue).
//
// TensorCore backend (mma.sync, sm_80 and later). A block of kWarpsM x kWarpsN warps (2 x 4:
// 128 x 256 tiles, one block per SM; or 2 x 2: 128 x 128, two per SM, for products with few
// tiles) computes one tile of C; a warp owns 64 x 64 = 4 x 8 mma tiles of 16 x 8 and keeps their
// 128 float accumulators in registers. K is walked in steps of BK (32 bf16 / 16 float: 64 bytes
// of every operand row) through a 4-stage ring of shared-memory stages filled by 16-byte
// cp.async.cg: the loads of steps kt + 1 .. kt + 3 are in flight while step kt computes, with
// one barrier per step. Shared tiles keep the global layout of their operand ([MN][BK] when K
// is contiguous, [BK][MN] when M or N is), with the 16-byte chunks of each row XOR-permuted by
// row bits, so that the fragment loads, ldmatrix.x4 (with .trans for the MN-contiguous bf16
// layouts, which hands out pairs along K), are free of bank conflicts in all four transpose
// forms. float uses TF32 m16n8k8 with inputs rounded to nearest TF32 (cvt.rna);
// its MN-contiguous tiles are read by scalar loads (ldmatrix .trans moves 16-bit halves), which
// their own swizzle also keeps conflict-free. The epilogue stages each warp's accumulators
// through shared memory (16 rows at a time) so that C, bias, residual and pre_act move as 4
// consecutive elements per lane, whole rows per warp access. Blocks are ordered in groups of
// 8 tile rows (consecutive blocks share operands in L2). When the output has too few tiles for
// the GPU (the dW products: small M x N, long K) and a workspace is given, K is split: each
// split writes float partial sums and a second pass adds them in split order and applies the
// epilogue (deterministic, no atomics). Operands whose base or row length is not a multiple of
// 16 bytes are loaded element by element with bounds checks instead of cp.async; out-of-range
// elements are zero in both paths, so partial tiles need no special case in the math.
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
#include <cstdlib>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cuda/common/check.h"
#include "kernels/cuda/common/device.cuh"
#include "kernels/cuda/common/wgmma.cuh"

namespace clipcu::cuda {

const char* gemm_backend_name(GemmBackend b) {
  switch (b) {
    case GemmBackend::Simple: return "simple";
    case GemmBackend::TensorCore: return "tensorcore";
    case GemmBackend::Cublas: return "cublas";
    case GemmBackend::Wgmma: return "wgmma";
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

// ---------------------------------------------------------------- tensor-core primitives
using tc::cp_async16;  // kernels/cuda/common/wgmma.cuh
using tc::cp_async_commit;
using tc::cp_async_wait;

__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
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


// ---------------------------------------------------------------- TensorCore: the ldmatrix kernel
// (see the file comment). Everything a thread addresses is a function of its lane and the tile
// coordinates; the index helpers are __host__ __device__ so a CPU model can check them.
namespace mma {

constexpr int kStages = 4;
constexpr int kWarpM = 64, kWarpN = 64;  // a warp's tile of C
constexpr int kMT = kWarpM / 16;         // mma tiles per warp along M (16 rows each)
constexpr int kNT = kWarpN / 8;          // along N (8 columns each)
constexpr int kScratchLd = kWarpN + 8;   // epilogue staging row in floats (conflict-free float2 writes)
constexpr int kGroupM = 8;               // block tiles per group of the rasterization (along M)

// K per stage: 64 bytes of every operand row (4 chunks of 16 bytes); K per mma: 2 chunks.
template <class T>
struct Cfg;
template <>
struct Cfg<bf16> {
  static constexpr int BK = 32, KSTEP = 16;
};
template <>
struct Cfg<float> {
  static constexpr int BK = 16, KSTEP = 8;
};

// One operand's tile in one stage: kRows rows of kChunks 16-byte chunks, chunks permuted inside
// each row by an XOR with bits of the row index so that the 8 rows one ldmatrix matrix reads
// (same logical chunk, consecutive rows) land in 8 different bank groups:
//   K-contiguous rows (64 bytes, two rows per 128-byte bank line): chunk ^ ((row / 2) % 4);
//   MN-contiguous rows (whole bank lines), bf16: chunk ^ (row % 8);
//   MN-contiguous rows, float (read by scalar loads of rows k = t and t + 4, t < 4, 8
//   consecutive columns each): chunk ^ 2 (row % 4), which gives the 4 rows disjoint chunk pairs.
// The cp.async writes of a warp cover whole 128-byte lines, so any permutation inside a line
// keeps them conflict-free.
template <class T, bool kKContig, int kRows, int kChunks>
struct Smem {
  static constexpr int E = 16 / int(sizeof(T));  // elements per chunk
  static constexpr int kElems = kRows * kChunks * E;
  static_assert(kKContig ? kChunks == 4 : kChunks % 8 == 0, "swizzle: 4 chunks per K row, whole lines per MN row");
  __host__ __device__ static constexpr int chunk(int r, int c) {
    if constexpr (kKContig) {
      return c ^ ((r >> 1) & 3);
    } else if constexpr (sizeof(T) == 2) {
      return c ^ (r & 7);
    } else {
      return c ^ ((r & 3) << 1);
    }
  }
  // element e of row r
  __host__ __device__ static constexpr int offset(int r, int e) { return (r * kChunks + chunk(r, e / E)) * E + e % E; }
};

// The block's geometry: kWarpsM x kWarpsN warps of 64 x 64.
template <class T, bool kTransA, bool kTransB, int kWarpsM, int kWarpsN>
struct Geo {
  static constexpr int BM = kWarpsM * kWarpM, BN = kWarpsN * kWarpN;
  static constexpr int BK = Cfg<T>::BK, KSTEP = Cfg<T>::KSTEP, E = 16 / int(sizeof(T));
  static constexpr int kThreads = 32 * kWarpsM * kWarpsN;
  // A is [BM][BK] (K-contiguous) or [BK][BM]; B is [BN][BK] (K-contiguous) or [BK][BN]
  using ATile = std::conditional_t<kTransA, Smem<T, false, BK, BM / E>, Smem<T, true, BM, BK / E>>;
  using BTile = std::conditional_t<kTransB, Smem<T, true, BN, BK / E>, Smem<T, false, BK, BN / E>>;
  static constexpr size_t kPipeBytes = size_t(kStages) * (ATile::kElems + BTile::kElems) * sizeof(T);
  static constexpr size_t kScratchBytes = size_t(kWarpsM * kWarpsN) * 16 * kScratchLd * sizeof(float);
  static constexpr size_t kSmemBytes = kPipeBytes > kScratchBytes ? kPipeBytes : kScratchBytes;
  static_assert(BK / E == 4 && KSTEP == 2 * E, "64-byte K rows, two chunks per mma");
};

// ldmatrix .x4: lane l gives the address of row l % 8 of matrix l / 8. The row each lane points
// at, as (row, element) of the stage tile, for the fragments of mma tile mt (A) or of the mma
// tile pair np (B: n tiles 2 np and 2 np + 1) at k offset kb of the stage. Register i of the
// result is matrix i, which the PTX fragment layouts need as
//   A (m16 x k16 bf16 / m16 x k8 tf32): (rows 0-7, k lo), (rows 8-15, k lo), (rows 0-7, k hi),
//       (rows 8-15, k hi), k lo / hi the first / second chunk of the k step;
//   B (k x n8, two n tiles): (n 0-7, k lo), (n 0-7, k hi), (n 8-15, k lo), (n 8-15, k hi).
// K-contiguous tiles are read as stored (row = m or n); MN-contiguous ones (bf16 only) with
// .trans (row = k), which hands every lane the pair along k the fragment wants.
template <class Tile, bool kKContig>
__host__ __device__ constexpr int a_ldsm_offset(int lane, int wm0, int mt, int kb) {
  const int j = lane >> 3, r = lane & 7;
  if constexpr (kKContig) {
    return Tile::offset(wm0 + mt * 16 + (j & 1) * 8 + r, kb + (j >> 1) * Tile::E);
  } else {
    return Tile::offset(kb + (j >> 1) * 8 + r, wm0 + mt * 16 + (j & 1) * 8);
  }
}
template <class Tile, bool kKContig>
__host__ __device__ constexpr int b_ldsm_offset(int lane, int wn0, int np, int kb) {
  const int j = lane >> 3, r = lane & 7;
  if constexpr (kKContig) {
    return Tile::offset(wn0 + np * 16 + (j >> 1) * 8 + r, kb + (j & 1) * Tile::E);
  } else {
    return Tile::offset(kb + (j & 1) * 8 + r, wn0 + np * 16 + (j >> 1) * 8);
  }
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const void* p) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}

// The fragments of one k step (kb: its first k inside the stage) for the warp at (wm0, wn0).
// bf16: ldmatrix for every layout. float: ldmatrix for K-contiguous tiles (a 16-byte row of 4
// floats hands lane l the float at (l / 4, l % 4), the tf32 fragment's element), scalar loads
// for MN-contiguous ones (.trans would split the floats), then rounding to TF32.
template <class T, class G, bool kTransA, bool kTransB>
__device__ __forceinline__ void load_frags(uint32_t (&a)[kMT][4], uint32_t (&b)[kNT][2], const T* as, const T* bs,
                                           int lane, int wm0, int wn0, int kb) {
  using ATile = typename G::ATile;
  using BTile = typename G::BTile;
  constexpr bool kF32 = std::is_same_v<T, float>;
  if constexpr (kF32 && kTransA) {
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      const int m = wm0 + mt * 16 + g;
      a[mt][0] = to_tf32(as[ATile::offset(kb + t, m)]);
      a[mt][1] = to_tf32(as[ATile::offset(kb + t, m + 8)]);
      a[mt][2] = to_tf32(as[ATile::offset(kb + t + 4, m)]);
      a[mt][3] = to_tf32(as[ATile::offset(kb + t + 4, m + 8)]);
    }
  } else {
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      const T* ptr = as + a_ldsm_offset<ATile, !kTransA>(lane, wm0, mt, kb);
      if constexpr (kTransA) {
        ldsm_x4_trans(a[mt], ptr);
      } else {
        ldsm_x4(a[mt], ptr);
      }
      if constexpr (kF32) {
#pragma unroll
        for (int i = 0; i < 4; ++i) a[mt][i] = to_tf32(__uint_as_float(a[mt][i]));
      }
    }
  }
  if constexpr (kF32 && !kTransB) {
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
      const int n = wn0 + nt * 8 + g;
      b[nt][0] = to_tf32(bs[BTile::offset(kb + t, n)]);
      b[nt][1] = to_tf32(bs[BTile::offset(kb + t + 4, n)]);
    }
  } else {
#pragma unroll
    for (int np = 0; np < kNT / 2; ++np) {
      uint32_t r[4];
      const T* ptr = bs + b_ldsm_offset<BTile, kTransB>(lane, wn0, np, kb);
      if constexpr (kTransB) {
        ldsm_x4(r, ptr);
      } else {
        ldsm_x4_trans(r, ptr);
      }
      if constexpr (kF32) {
#pragma unroll
        for (int i = 0; i < 4; ++i) r[i] = to_tf32(__uint_as_float(r[i]));
      }
      b[2 * np][0] = r[0];
      b[2 * np][1] = r[1];
      b[2 * np + 1][0] = r[2];
      b[2 * np + 1][1] = r[3];
    }
  }
}

// Copies the block at (r0, c0) of a row-major global matrix [rows][cols] into a stage tile,
// zero outside the matrix. Thread i moves chunks i, i + kThreads, ... (consecutive threads,
// consecutive chunks of a row: coalesced). vec: 16-byte aligned base and cols a multiple of a
// chunk, so a chunk is wholly inside or outside and cp.async can move it; otherwise element by
// element with bounds checks (synchronous; the stores are ordered by the pipeline's barriers
// like the cp.async data).
template <class Tile, int kRows, int kChunks, int kThreads, class T>
__device__ __forceinline__ void load_tile(T* s, const T* g, int64_t rows, int64_t cols, int64_t r0, int64_t c0,
                                          bool vec) {
  constexpr int E = Tile::E;
  constexpr int kTotal = kRows * kChunks;
  static_assert(kTotal % kThreads == 0, "whole chunks per thread");
#pragma unroll
  for (int i = 0; i < kTotal / kThreads; ++i) {
    const int idx = int(threadIdx.x) + i * kThreads;
    const int r = idx / kChunks, c = idx % kChunks;
    const int64_t gr = r0 + r, gc = c0 + int64_t(c) * E;
    T* dst = s + Tile::offset(r, c * E);
    if (vec) {
      const bool ok = gr < rows && gc < cols;
      cp_async16(dst, ok ? g + gr * cols + gc : g, ok ? 16 : 0);
    } else {
      Vec<T, E> v;
#pragma unroll
      for (int e = 0; e < E; ++e) v.v[e] = (gr < rows && gc + e < cols) ? g[gr * cols + gc + e] : from_float<T>(0.f);
      *reinterpret_cast<Vec<T, E>*>(dst) = v;
    }
  }
}

// The epilogue of 4 consecutive outputs (m, n..n+3) from their raw accumulators (vec: N is a
// multiple of 4 and every [M, N] / [N] pointer is aligned to 4 elements, so one access each).
template <class T>
__device__ __forceinline__ void epilogue4(const GemmParams<T>& p, int64_t m, int64_t n, const float (&acc)[4], bool vec) {
  if (vec) {
    const int64_t idx = m * p.N + n;
    float v[4], x[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = p.alpha * acc[i];
    if (p.beta != 0.f) {
      load_vec<4>(p.C + idx, x);
#pragma unroll
      for (int i = 0; i < 4; ++i) v[i] += p.beta * x[i];
    }
    if (p.bias) {
      load_vec<4>(p.bias + n, x);
#pragma unroll
      for (int i = 0; i < 4; ++i) v[i] += x[i];
    }
    if (p.pre_act) store_vec<4>(p.pre_act + idx, v);
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = act_forward_rt(p.act, v[i]);
    if (p.residual) {
      load_vec<4>(p.residual + idx, x);  // may be C: read before the store below
#pragma unroll
      for (int i = 0; i < 4; ++i) v[i] += x[i];
    }
    store_vec<4>(p.C + idx, v);
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i)
      if (n + i < p.N) epilogue_store(p, m, n + i, acc[i]);
  }
}

// The origin of tile `pid` of C in the grouped order: consecutive tiles walk kGroupM tile rows
// down one tile column, then the next column, so that the blocks resident at one time share A
// rows and B columns in L2.
__device__ __forceinline__ void tile_origin(int64_t pid, int64_t M, int64_t N, int BM, int BN, int64_t& m0,
                                            int64_t& n0) {
  const int64_t tiles_m = (M + BM - 1) / BM, tiles_n = (N + BN - 1) / BN;
  const int64_t per_group = int64_t(kGroupM) * tiles_n;
  const int64_t first_m = (pid / per_group) * kGroupM;
  const int64_t group_rows = min(tiles_m - first_m, int64_t(kGroupM));
  const int64_t in_group = pid % per_group;
  m0 = (first_m + in_group % group_rows) * BM;
  n0 = (in_group / group_rows) * BN;
}

// What block `pid` of a tensor-core grid computes: blocks below whole_tiles compute tiles 0 ..
// whole_tiles - 1 over all of K; the rest split each remaining tile along K (k_chunk, a multiple
// of the kernel's K step, per split; the splits of a tile are consecutive blocks) and write raw
// float sums to `part` ([BM][BN], tile-local) instead of C. A split's last stage reads zeros
// past K only at the end of K, so no split reaches into the next.
struct BlockWork {
  int64_t m0 = 0, n0 = 0;            // the tile's origin in C
  int64_t k_begin = 0, k_end = 0;    // its K range
  float* part = nullptr;             // split tiles: this block's partial sums, else nullptr
};
__device__ __forceinline__ BlockWork block_work(int64_t pid, int64_t M, int64_t N, int64_t K, int BM, int BN,
                                                int64_t whole_tiles, int splits, int64_t k_chunk, float* partial) {
  BlockWork w;
  w.k_end = K;
  if (pid >= whole_tiles) {
    const int64_t q = pid - whole_tiles, split = q % splits;
    pid = whole_tiles + q / splits;
    w.k_begin = split * k_chunk;
    w.k_end = min(K, w.k_begin + k_chunk);
    w.part = partial + q * (int64_t(BM) * BN);
  }
  tile_origin(pid, M, N, BM, BN, w.m0, w.n0);
  return w;
}

// grid: whole_tiles + (tiles - whole_tiles) * splits blocks (block_work: what each computes);
// block: G::kThreads; dynamic shared memory G::kSmemBytes. Split tiles store raw float sums to
// partial ([split tile][split][BM][BN], tile-local), which the reduce pass adds up; whole tiles
// apply the epilogue.
template <class T, bool kTransA, bool kTransB, int kWarpsM, int kWarpsN>
__global__ void __launch_bounds__(32 * kWarpsM * kWarpsN, kWarpsM * kWarpsN >= 8 ? 1 : 2)
    gemm_mma_kernel(const GemmParams<T> p, bool a_vec, bool b_vec, bool out_vec, int64_t whole_tiles, int splits,
                    int64_t k_chunk, float* partial) {
  using G = Geo<T, kTransA, kTransB, kWarpsM, kWarpsN>;
  using ATile = typename G::ATile;
  using BTile = typename G::BTile;
  constexpr int BM = G::BM, BN = G::BN, BK = G::BK, KSTEP = G::KSTEP, KS = BK / KSTEP;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* As = reinterpret_cast<T*>(smem_raw);  // [kStages][ATile::kElems]
  T* Bs = As + kStages * ATile::kElems;    // [kStages][BTile::kElems]

  const int64_t M = p.M, N = p.N, K = p.K;
  const BlockWork work = block_work(blockIdx.x, M, N, K, BM, BN, whole_tiles, splits, k_chunk, partial);
  const int64_t m0 = work.m0, n0 = work.n0, k_begin = work.k_begin, k_end = work.k_end;
  float* const part = work.part;
  const int64_t KT = k_end > k_begin ? (k_end - k_begin + BK - 1) / BK : 0;

  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int wm0 = (warp % kWarpsM) * kWarpM, wn0 = (warp / kWarpsM) * kWarpN;

  auto load_stage = [&](int stage, int64_t kt) {
    const int64_t k0 = k_begin + kt * BK;
    T* as = As + stage * ATile::kElems;
    T* bs = Bs + stage * BTile::kElems;
    if constexpr (!kTransA) {
      load_tile<ATile, BM, BK / G::E, G::kThreads>(as, p.A, M, K, m0, k0, a_vec);  // A [M, K]
    } else {
      load_tile<ATile, BK, BM / G::E, G::kThreads>(as, p.A, K, M, k0, m0, a_vec);  // A [K, M]
    }
    if constexpr (kTransB) {
      load_tile<BTile, BN, BK / G::E, G::kThreads>(bs, p.B, N, K, n0, k0, b_vec);  // B [N, K]
    } else {
      load_tile<BTile, BK, BN / G::E, G::kThreads>(bs, p.B, K, N, k0, n0, b_vec);  // B [K, N]
    }
  };

  float acc[kMT][kNT][4];
#pragma unroll
  for (int i = 0; i < kMT; ++i)
#pragma unroll
    for (int j = 0; j < kNT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

  // Pipeline: stages of steps kt + 1 .. kt + kStages - 1 are in flight while step kt computes.
  // One barrier per step: the stage written at step kt (that of step kt - 1) was last read at
  // step kt - 1, before that barrier. (Fragments are not double-buffered in registers: with
  // 128 accumulators per thread that spilled; the other warps of the SM hide the ldmatrix
  // latency instead.)
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < KT) load_stage(s, s);
    cp_async_commit();  // possibly empty: keeps the group count uniform
  }
  uint32_t fa[kMT][4], fb[kNT][2];
  int stage = 0, write_stage = kStages - 1;
  for (int64_t kt = 0; kt < KT; ++kt) {
    // groups committed so far: kStages - 1 + kt; at most kStages - 2 pending => step kt landed
    cp_async_wait<kStages - 2>();
    __syncthreads();  // step kt visible to all; everyone is done with step kt - 1's stage
    if (kt + kStages - 1 < KT) load_stage(write_stage, kt + kStages - 1);  // the stage of step kt - 1
    cp_async_commit();
    const T* as = As + stage * ATile::kElems;
    const T* bs = Bs + stage * BTile::kElems;
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      load_frags<T, G, kTransA, kTransB>(fa, fb, as, bs, lane, wm0, wn0, ks * KSTEP);
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
          if constexpr (std::is_same_v<T, bf16>) {
            mma_bf16(acc[mt][nt], fa[mt], fb[nt]);
          } else {
            mma_tf32(acc[mt][nt], fa[mt], fb[nt]);
          }
        }
    }
    stage = stage + 1 == kStages ? 0 : stage + 1;
    write_stage = write_stage + 1 == kStages ? 0 : write_stage + 1;
  }
  cp_async_wait<0>();  // only empty groups can be pending; leave none behind
  __syncthreads();     // every warp is done with the stages: the scratch below reuses them

  // Epilogue, 16 rows at a time per warp: the accumulators of mma row tile mt go to the warp's
  // scratch ([16][kScratchLd] floats; element e of tile nt is row g (+8 for e >= 2), column
  // 8 nt + 2t (+1 for odd e)), and come back as 4 consecutive columns per lane, 2 rows of 64 per
  // warp access: coalesced global accesses for C, bias, residual, pre_act.
  float* scratch = reinterpret_cast<float*>(smem_raw) + warp * 16 * kScratchLd;
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt) {
      *reinterpret_cast<float2*>(scratch + g * kScratchLd + nt * 8 + 2 * t) = make_float2(acc[mt][nt][0], acc[mt][nt][1]);
      *reinterpret_cast<float2*>(scratch + (g + 8) * kScratchLd + nt * 8 + 2 * t) =
          make_float2(acc[mt][nt][2], acc[mt][nt][3]);
    }
    __syncwarp();
    // not unrolled: the unrolled iterations' loads were hoisted together and spilled registers
#pragma unroll 1
    for (int it = 0; it < 8; ++it) {
      const int r = it * 2 + (lane >> 4), c = (lane & 15) * 4;
      const float4 v4 = *reinterpret_cast<const float4*>(scratch + r * kScratchLd + c);
      const float v[4] = {v4.x, v4.y, v4.z, v4.w};
      if (part) {
        // the whole tile, in or out of C (the reduce pass skips what is outside)
        *reinterpret_cast<float4*>(part + (wm0 + mt * 16 + r) * BN + wn0 + c) = v4;
      } else {
        const int64_t m = m0 + wm0 + mt * 16 + r, n = n0 + wn0 + c;
        if (m < M && n < N) epilogue4(p, m, n, v, out_vec);
      }
    }
    __syncwarp();  // the next row tile overwrites the scratch
  }
}

// Split tiles: C = epilogue(sum over the splits of the partial sums), the splits added in
// order (the same bits on every run). One thread per 4 consecutive columns of a tile row.
// grid-stride over split_tiles * BM * BN / 4.
template <class T>
__global__ void gemm_splitk_reduce_kernel(const GemmParams<T> p, const float* partial, int64_t whole_tiles,
                                          int64_t split_tiles, int splits, int BM, int BN, bool out_vec) {
  const int64_t tile_elems = int64_t(BM) * BN, quads = split_tiles * tile_elems / 4;
  for (int64_t q = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; q < quads; q += int64_t(gridDim.x) * blockDim.x) {
    const int64_t st = (4 * q) / tile_elems;
    const int e = int((4 * q) % tile_elems), r = e / BN, c = e % BN;
    int64_t m0, n0;
    tile_origin(whole_tiles + st, p.M, p.N, BM, BN, m0, n0);
    const int64_t m = m0 + r, n = n0 + c;
    if (m >= p.M || n >= p.N) continue;
    const float* src = partial + st * splits * tile_elems + e;
    float4 sum = *reinterpret_cast<const float4*>(src);
    for (int k = 1; k < splits; ++k) {
      const float4 x = *reinterpret_cast<const float4*>(src + k * tile_elems);
      sum.x += x.x, sum.y += x.y, sum.z += x.z, sum.w += x.w;
    }
    const float v[4] = {sum.x, sum.y, sum.z, sum.w};
    epilogue4(p, m, n, v, out_vec);
  }
}

}  // namespace mma

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
namespace mma {

// The launch of one product: its block tile (one of the two of the kernel's TileMenu), how many
// tiles are computed whole (the first ones), and into how many K splits the remaining ones are
// cut.
struct Plan {
  int cfg = 0;          // index into the TileMenu
  int bm = 0, bn = 0;   // its block tile
  int64_t whole_tiles = 0;
  int splits = 1;
  int64_t k_chunk = 0;  // K per split, a multiple of BK
  int64_t tiles = 0;    // all tiles of C
  int64_t split_tiles() const { return tiles - whole_tiles; }
  int64_t blocks() const { return whole_tiles + split_tiles() * splits; }
  int64_t workspace_floats() const { return split_tiles() * splits * int64_t(bm) * bn; }
};

// The block tiles a tensor-core kernel offers and what the planner assumes about them.
struct TileMenu {
  int bm[2], bn[2];
  int per_sm[2];     // co-resident blocks per SM
  int bk;            // K per pipeline step
  double sm_rate;    // multiply-adds per second per SM (a rough guess: only ratios matter)
  double eff[2];     // per-SM throughput of each tile relative to the first (more bytes per flop)
};
// mma.sync kernel: cfg 0 is 2 x 4 warps (128 x 256, one block per SM), cfg 1 2 x 2 warps
// (128 x 128, two per SM).
inline constexpr int kCfgBM[2] = {128, 128}, kCfgBN[2] = {256, 128}, kCfgPerSM[2] = {1, 2};
template <class T>
TileMenu mma_menu() {
  return {{kCfgBM[0], kCfgBM[1]}, {kCfgBN[0], kCfgBN[1]}, {kCfgPerSM[0], kCfgPerSM[1]}, Cfg<T>::BK,
          std::is_same_v<T, bf16> ? 1.6e12 : 0.8e12, {1.0, 0.85}};
}

// Picks the plan with the smallest modelled time. Blocks run in waves over the SMs, and a
// partly filled last wave costs as much as a full one; products whose tiles do not fill the
// last wave (all of them when M x N is small, as for dW = dY^T X) can cut the tiles of that
// wave along K into several shorter blocks, at the price of writing, reading and adding their
// float partial sums. The rates are rough guesses (only their ratios matter). The plan depends
// only on the shape, the SM count and the workspace size, so a product is always computed the
// same way (deterministic).
template <class T>
Plan plan_for(const GemmParams<T>& p, int num_sms, const TileMenu& menu) {
  const int BK = menu.bk;
  const double sm_rate = menu.sm_rate;
  const double mem_rate = 3.5e12;  // bytes per second (partial sums stay mostly in L2)
  const double* eff = menu.eff;
  const bool ws_ok = p.workspace && detail::aligned_to(p.workspace, 16);
  const double ws_floats = ws_ok ? double(p.workspace_bytes) / 4 : 0;
  const int64_t k_steps = (p.K + BK - 1) / BK;
  Plan best;
  double best_t = 0;
  auto consider = [&](const Plan& c, double t) {
    if (best_t == 0 || t < 0.97 * best_t) best_t = t, best = c;  // a rival must be clearly faster
  };
  for (int c = 0; c < 2; ++c) {
    const int bm = menu.bm[c], bn = menu.bn[c];
    const int64_t slots = int64_t(num_sms) * menu.per_sm[c];
    // the time of one block over k elements of K (co-resident blocks share the SM)
    auto block_time = [&](int64_t k) { return double(bm) * bn * double(k) * menu.per_sm[c] / (sm_rate * eff[c]); };
    Plan whole;
    whole.cfg = c;
    whole.bm = bm, whole.bn = bn;
    whole.tiles = ((p.M + bm - 1) / bm) * ((p.N + bn - 1) / bn);
    whole.whole_tiles = whole.tiles;
    whole.k_chunk = std::max<int64_t>(k_steps, 1) * BK;
    const int64_t full_waves = whole.tiles / slots;
    consider(whole, double((whole.tiles + slots - 1) / slots) * block_time(whole.k_chunk));
    if (!ws_ok || whole.tiles % slots == 0) continue;
    for (int s = 2; s <= 16; ++s) {
      const int64_t chunk_steps = (k_steps + s - 1) / s;
      if (chunk_steps < 8) break;                                     // too short to pipeline
      if ((k_steps + chunk_steps - 1) / chunk_steps != s) continue;  // the same cut as a smaller s
      // the full waves whole, the tiles of the last, partly filled wave split (all of them when
      // there is no full wave)
      Plan split = whole;
      split.whole_tiles = full_waves * slots;
      split.splits = s;
      split.k_chunk = chunk_steps * BK;
      if (double(split.workspace_floats()) > ws_floats) continue;
      const double partial_bytes = double(split.workspace_floats()) * 4;
      const double t = double(full_waves) * block_time(whole.k_chunk) +
                       double((split.split_tiles() * s + slots - 1) / slots) * block_time(split.k_chunk) +
                       (2 * partial_bytes + 2.0 * split.split_tiles() * bm * bn * sizeof(T)) / mem_rate + 2e-6;
      consider(split, t);
    }
  }
  return best;
}

inline int sm_count() {
  int device = 0, num_sms = 0;
  CLIPCU_CUDA_CHECK(cudaGetDevice(&device));
  CLIPCU_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device));
  return std::max(num_sms, 1);
}

template <class T, bool kTransA, bool kTransB, int kWarpsM, int kWarpsN>
void launch_shape(const GemmParams<T>& p, const Plan& plan, bool a_vec, bool b_vec, bool out_vec, float* partial,
                  cudaStream_t stream) {
  using G = Geo<T, kTransA, kTransB, kWarpsM, kWarpsN>;
  static_assert(G::BM == kCfgBM[kWarpsN == 4 ? 0 : 1] && G::BN == kCfgBN[kWarpsN == 4 ? 0 : 1], "plan tile sizes");
  CLIPCU_CUDA_REQUIRE(plan.bm == G::BM && plan.bn == G::BN, "gemm: plan tile " << plan.bm << " x " << plan.bn);
  auto kernel = gemm_mma_kernel<T, kTransA, kTransB, kWarpsM, kWarpsN>;
  CLIPCU_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(G::kSmemBytes)));
  CLIPCU_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                         int(cudaSharedmemCarveoutMaxShared)));
  kernel<<<unsigned(plan.blocks()), G::kThreads, G::kSmemBytes, stream>>>(p, a_vec, b_vec, out_vec, plan.whole_tiles,
                                                                           plan.splits, plan.k_chunk, partial);
  CLIPCU_CUDA_CHECK_LAUNCH("gemm_mma_kernel");
}

// The plan of gemm_tensorcore_with_plan, checked.
template <class T>
Plan plan_from(const GemmParams<T>& p, const GemmTensorCorePlan& f, const TileMenu& menu) {
  const int BK = menu.bk;
  int cfg = -1;
  for (int c = 0; c < 2; ++c)
    if (f.block_m == menu.bm[c] && f.block_n == menu.bn[c]) cfg = c;
  CLIPCU_CUDA_REQUIRE(cfg >= 0, "gemm_tensorcore_with_plan: block tile " << f.block_m << " x " << f.block_n << " ("
                                    << menu.bm[0] << " x " << menu.bn[0] << " or " << menu.bm[1] << " x "
                                    << menu.bn[1] << ")");
  Plan plan;
  plan.cfg = cfg;
  plan.bm = menu.bm[cfg], plan.bn = menu.bn[cfg];
  plan.tiles = ((p.M + plan.bm - 1) / plan.bm) * ((p.N + plan.bn - 1) / plan.bn);
  CLIPCU_CUDA_REQUIRE(f.whole_tiles >= 0 && f.whole_tiles <= plan.tiles && f.splits >= 1,
                      "gemm_tensorcore_with_plan: whole_tiles " << f.whole_tiles << " of " << plan.tiles
                                                                << ", splits " << f.splits);
  plan.whole_tiles = f.whole_tiles;
  const int64_t k_steps = (p.K + BK - 1) / BK;
  const int64_t chunk_steps = std::max<int64_t>((k_steps + f.splits - 1) / f.splits, 1);
  plan.k_chunk = chunk_steps * BK;
  plan.splits = int(std::max<int64_t>((k_steps + chunk_steps - 1) / chunk_steps, 1));
  CLIPCU_CUDA_REQUIRE(plan.split_tiles() == 0 || (p.workspace && detail::aligned_to(p.workspace, 16) &&
                                                  double(plan.workspace_floats()) * 4 <= double(p.workspace_bytes)),
                      "gemm_tensorcore_with_plan: split tiles need a 16-byte aligned workspace of "
                          << plan.workspace_floats() * 4 << " bytes");
  return plan;
}

// cp.async needs a 16-byte aligned base and rows that are whole 16-byte chunks; the epilogue
// moves 4 elements at a time when every [M, N] and [N] operand allows it.
struct VecFlags {
  bool a = false, b = false, out = false;
};
template <class T>
VecFlags vec_flags(const GemmParams<T>& p) {
  constexpr int E = 16 / sizeof(T);
  const int64_t a_cols = p.trans_a ? p.M : p.K, b_cols = p.trans_b ? p.K : p.N;
  constexpr size_t kOut = 4 * sizeof(T);
  VecFlags v;
  v.a = detail::aligned_to(p.A, 16) && a_cols % E == 0;
  v.b = detail::aligned_to(p.B, 16) && b_cols % E == 0;
  v.out = p.N % 4 == 0 && detail::aligned_to(p.C, kOut) && (!p.bias || detail::aligned_to(p.bias, kOut)) &&
          (!p.pre_act || detail::aligned_to(p.pre_act, kOut)) && (!p.residual || detail::aligned_to(p.residual, kOut));
  return v;
}

// The second pass of split tiles (a no-op without them).
template <class T>
void launch_splitk_reduce(const GemmParams<T>& p, const Plan& plan, float* partial, bool out_vec, int num_sms,
                          cudaStream_t stream) {
  if (!partial) return;
  const int64_t quads = plan.split_tiles() * plan.bm * plan.bn / 4;
  const int64_t blocks = std::min<int64_t>((quads + 255) / 256, int64_t(num_sms) * 16);
  gemm_splitk_reduce_kernel<T><<<unsigned(blocks), 256, 0, stream>>>(p, partial, plan.whole_tiles, plan.split_tiles(),
                                                                     plan.splits, plan.bm, plan.bn, out_vec);
  CLIPCU_CUDA_CHECK_LAUNCH("gemm_splitk_reduce_kernel");
}

template <class T, bool kTransA, bool kTransB>
void launch(const GemmParams<T>& p, cudaStream_t stream, const Plan* forced) {
  const VecFlags v = vec_flags(p);
  const int num_sms = sm_count();
  const Plan plan = forced ? *forced : plan_for(p, num_sms, mma_menu<T>());
  CLIPCU_CUDA_REQUIRE(plan.blocks() <= INT32_MAX, "gemm: M " << p.M << " N " << p.N << " needs too many blocks");
  float* partial = plan.split_tiles() > 0 ? static_cast<float*>(p.workspace) : nullptr;
  if (plan.cfg == 0) {
    launch_shape<T, kTransA, kTransB, 2, 4>(p, plan, v.a, v.b, v.out, partial, stream);
  } else {
    launch_shape<T, kTransA, kTransB, 2, 2>(p, plan, v.a, v.b, v.out, partial, stream);
  }
  launch_splitk_reduce(p, plan, partial, v.out, num_sms, stream);
}

template <class T>
void launch_any(const GemmParams<T>& p, cudaStream_t stream, const Plan* forced) {
  if (!p.trans_a && !p.trans_b) launch<T, false, false>(p, stream, forced);
  else if (!p.trans_a && p.trans_b) launch<T, false, true>(p, stream, forced);
  else if (p.trans_a && !p.trans_b) launch<T, true, false>(p, stream, forced);
  else launch<T, true, true>(p, stream, forced);
}

}  // namespace mma

// ---------------------------------------------------------------- Wgmma: the sm_90a kernel
// (see gemm.cuh). The block tile, shared-memory layouts, K pipeline and epilogue staging are
// kernels/cuda/common/wgmma.cuh's (shared with the convolution); this kernel adds the operand
// loads of the four transpose forms (16-byte cp.async chunks, consecutive threads on consecutive
// chunks of a global row, or element-wise stores for unaligned operands; zero outside the
// matrix), the GEMM epilogue and the mma.sync kernel's split-K.
namespace wg {

constexpr int BM = 128;
using tc::BK;
using tc::kThreads;
template <int BN>
using Geo = tc::Geo<BM, BN>;

// An unaligned operand block, element by element with bounds checks: a call, so that the
// registers of this rare path do not crowd the main loop's (the K loop of the 128 x 256 tile
// spilled with it inlined).
template <class Tile, int kRows, int kChunks>
__device__ __noinline__ void load_operand_slow(bf16* s, const bf16* g, int64_t rows, int64_t cols, int64_t r0,
                                               int64_t c0) {
  mma::load_tile<Tile, kRows, kChunks, kThreads>(s, g, rows, cols, r0, c0, false);
}
// An operand block: tc::load_stage_tile (16-byte cp.async) when aligned, else the slow path.
template <class Tile, int kRows, int kChunks>
__device__ __forceinline__ void load_operand(bf16* s, const bf16* g, int64_t rows, int64_t cols, int64_t r0,
                                             int64_t c0, bool vec) {
  if (vec) {
    tc::load_stage_tile<Tile, kRows, kChunks>(s, g, rows, cols, r0, c0);
  } else {
    load_operand_slow<Tile, kRows, kChunks>(s, g, rows, cols, r0, c0);
  }
}

// grid, workspace and tile order as gemm_mma_kernel; block: 256 threads; dynamic shared memory
// Geo<BN>::kSmemBytes.
template <bool kTransA, bool kTransB, int BN>
__global__ void __launch_bounds__(kThreads, 1)
    gemm_wgmma_kernel(const GemmParams<bf16> p, bool a_vec, bool b_vec, bool out_vec, int64_t whole_tiles, int splits,
                      int64_t k_chunk, float* partial) {
#if CLIPCU_HAS_WGMMA
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const tc::Stages<BM, BN> sm = tc::stages<BM, BN>(smem_raw);
  const int64_t M = p.M, N = p.N, K = p.K;
  const mma::BlockWork work = mma::block_work(blockIdx.x, M, N, K, BM, BN, whole_tiles, splits, k_chunk, partial);
  const int64_t m0 = work.m0, n0 = work.n0, k_begin = work.k_begin;
  float* const part = work.part;
  const int64_t KT = work.k_end > k_begin ? (work.k_end - k_begin + BK - 1) / BK : 0;

  auto load_stage = [&](int stage, int64_t kt) {
    const int64_t k0 = k_begin + kt * BK;
    bf16* const as = sm.as + stage * Geo<BN>::kAElems;
    bf16* const bs = sm.bs + stage * Geo<BN>::kBElems;
    if constexpr (!kTransA) {
      load_operand<tc::KMajorTile, BM, BK / 8>(as, p.A, M, K, m0, k0, a_vec);  // A [M, K]
    } else {
      load_operand<tc::MnMajorTile, BK, BM / 8>(as, p.A, K, M, k0, m0, a_vec);  // A [K, M]
    }
    if constexpr (kTransB) {
      load_operand<tc::KMajorTile, BN, BK / 8>(bs, p.B, N, K, n0, k0, b_vec);  // B [N, K]
    } else {
      load_operand<tc::MnMajorTile, BK, BN / 8>(bs, p.B, K, N, k0, n0, b_vec);  // B [K, N]
    }
  };
  float acc[Geo<BN>::kInsts][64];
#pragma unroll
  for (int i = 0; i < Geo<BN>::kInsts; ++i)
#pragma unroll
    for (int e = 0; e < 64; ++e) acc[i][e] = 0.f;
  tc::mainloop<BM, BN, kTransA, !kTransB>(acc, sm, KT, load_stage);

  // split tiles: raw sums to the tile-local partials; whole tiles: the epilogue, in bounds
  auto store = [&](int r, int c, const float (&v)[4]) {
    if (part) {
      *reinterpret_cast<float4*>(part + r * BN + c) = make_float4(v[0], v[1], v[2], v[3]);
    } else {
      const int64_t m = m0 + r, n = n0 + c;
      if (m < M && n < N) mma::epilogue4(p, m, n, v, out_vec);
    }
  };
  tc::epilogue<BM, BN>(acc, sm.base, store);
#else
  (void)p, (void)a_vec, (void)b_vec, (void)out_vec, (void)whole_tiles, (void)splits, (void)k_chunk, (void)partial;
  __trap();  // never launched: the host checks gemm_wgmma_available first
#endif
}

// Writes 1 where the kernel above has a body (sm_90a code running on the device).
__global__ void wgmma_probe_kernel(int* out) { *out = CLIPCU_HAS_WGMMA; }

// bf16 runs at roughly twice the mma.sync rate per SM (only the ratio to memory matters).
inline mma::TileMenu menu() { return {{BM, BM}, {256, 128}, {1, 1}, BK, 3.2e12, {1.0, 0.9}}; }

template <bool kTransA, bool kTransB, int BN>
void launch_shape(const GemmParams<bf16>& p, const mma::Plan& plan, const mma::VecFlags& v, float* partial,
                  cudaStream_t stream) {
  using G = Geo<BN>;
  CLIPCU_CUDA_REQUIRE(plan.bm == BM && plan.bn == BN, "gemm: plan tile " << plan.bm << " x " << plan.bn);
  auto kernel = gemm_wgmma_kernel<kTransA, kTransB, BN>;
  CLIPCU_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(G::kSmemBytes)));
  kernel<<<unsigned(plan.blocks()), kThreads, G::kSmemBytes, stream>>>(p, v.a, v.b, v.out, plan.whole_tiles,
                                                                      plan.splits, plan.k_chunk, partial);
  CLIPCU_CUDA_CHECK_LAUNCH("gemm_wgmma_kernel");
}

template <bool kTransA, bool kTransB>
void launch(const GemmParams<bf16>& p, cudaStream_t stream, const mma::Plan* forced) {
  const mma::VecFlags v = mma::vec_flags(p);
  const int num_sms = mma::sm_count();
  const mma::Plan plan = forced ? *forced : mma::plan_for(p, num_sms, menu());
  CLIPCU_CUDA_REQUIRE(plan.blocks() <= INT32_MAX, "gemm: M " << p.M << " N " << p.N << " needs too many blocks");
  float* partial = plan.split_tiles() > 0 ? static_cast<float*>(p.workspace) : nullptr;
  if (plan.bn == 256) {
    launch_shape<kTransA, kTransB, 256>(p, plan, v, partial, stream);
  } else {
    launch_shape<kTransA, kTransB, 128>(p, plan, v, partial, stream);
  }
  mma::launch_splitk_reduce(p, plan, partial, v.out, num_sms, stream);
}

void launch_any(const GemmParams<bf16>& p, cudaStream_t stream, const mma::Plan* forced) {
  if (!p.trans_a && !p.trans_b) launch<false, false>(p, stream, forced);
  else if (!p.trans_a && p.trans_b) launch<false, true>(p, stream, forced);
  else if (p.trans_a && !p.trans_b) launch<true, false>(p, stream, forced);
  else launch<true, true>(p, stream, forced);
}

}  // namespace wg

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

int current_device() {
  int device = 0;
  CLIPCU_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

// The Wgmma backend: bf16 on the wgmma kernel (which must exist for this device), float on the
// mma.sync kernel (TF32; wgmma's TF32 form cannot read MN-major operands).
template <class T>
void launch_wgmma_or_mma(const GemmParams<T>& p, cudaStream_t stream, const mma::Plan* forced) {
  if constexpr (std::is_same_v<T, bf16>) {
    CLIPCU_CUDA_REQUIRE(gemm_wgmma_available(current_device()),
                        "gemm: the wgmma backend needs a Hopper GPU (compute capability 9.x) and a build with "
                        "sm_90a device code (CMAKE_CUDA_ARCHITECTURES including 90a)");
    wg::launch_any(p, stream, forced);
  } else {
    mma::launch_any(p, stream, forced);
  }
}

// The tile menu of the kernel that runs p (TensorCore, or Wgmma: wgmma for bf16).
template <class T>
mma::TileMenu tensorcore_menu(const GemmParams<T>& p) {
  CLIPCU_CUDA_REQUIRE(p.backend == GemmBackend::TensorCore || p.backend == GemmBackend::Wgmma,
                      "gemm tensor-core plan: backend " << gemm_backend_name(p.backend)
                                                        << " is not a tensor-core backend (tensorcore, wgmma)");
  if (p.backend == GemmBackend::Wgmma && std::is_same_v<T, bf16>) return wg::menu();
  return mma::mma_menu<T>();
}

}  // namespace

bool gemm_wgmma_available(int device) {
  static std::mutex mu;
  static std::vector<int> known;  // per device: -1 unknown, 0 no, 1 yes
  std::lock_guard<std::mutex> lock(mu);
  if (device < 0) return false;
  if (size_t(device) >= known.size()) known.resize(size_t(device) + 1, -1);
  if (known[size_t(device)] >= 0) return known[size_t(device)] == 1;
  static const bool hidden = [] {
    const char* v = std::getenv("CLIPCU_WGMMA");
    return v && std::string(v) == "0";
  }();
  if (hidden) {
    known[size_t(device)] = 0;
    return false;
  }
  int major = 0;
  CLIPCU_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  bool yes = false;
  if (major == 9) {
    // the probe answers whether the code this build has for the device is sm_90a's (an sm_80 or
    // plain sm_90 binary runs here too, with the kernel compiled empty)
    int prev = 0;
    CLIPCU_CUDA_CHECK(cudaGetDevice(&prev));
    CLIPCU_CUDA_CHECK(cudaSetDevice(device));
    int* flag = nullptr;
    CLIPCU_CUDA_CHECK(cudaMalloc(&flag, sizeof(int)));
    CLIPCU_CUDA_CHECK(cudaMemset(flag, 0, sizeof(int)));
    wg::wgmma_probe_kernel<<<1, 1>>>(flag);
    CLIPCU_CUDA_CHECK_LAUNCH("wgmma_probe_kernel");
    int host = 0;
    CLIPCU_CUDA_CHECK(cudaMemcpy(&host, flag, sizeof(int), cudaMemcpyDeviceToHost));
    CLIPCU_CUDA_CHECK(cudaFree(flag));
    CLIPCU_CUDA_CHECK(cudaSetDevice(prev));
    yes = host == 1;
  }
  known[size_t(device)] = yes ? 1 : 0;
  return yes;
}

template <class T>
void gemm(const GemmParams<T>& p, cudaStream_t stream) {
  check_params(p);
  if (p.M == 0 || p.N == 0) return;
  GemmBackend backend = p.backend;
  // cuBLAS does not take K == 0 everywhere, and its int arguments bound the fallback's sizes
  if (backend == GemmBackend::Cublas && (p.K == 0 || p.M > INT32_MAX || p.N > INT32_MAX || p.K > INT32_MAX))
    backend = GemmBackend::Simple;
  // the tensor-core grids count all tiles in x (at most 2^31 - 1 of the 128 x 128 ones)
  CLIPCU_CUDA_REQUIRE(backend == GemmBackend::Simple || backend == GemmBackend::Cublas ||
                          ((p.M + 127) / 128) * ((p.N + 127) / 128) <= INT32_MAX,
                      "gemm: M " << p.M << " x N " << p.N << " is beyond the tensor-core kernel's grid");
  switch (backend) {
    case GemmBackend::Simple: launch_simt(p, stream); break;
    case GemmBackend::TensorCore: mma::launch_any(p, stream, nullptr); break;
    case GemmBackend::Cublas: launch_cublas(p, stream); break;
    case GemmBackend::Wgmma: launch_wgmma_or_mma(p, stream, nullptr); break;
  }
}

template <class T>
void gemm_epilogue(const GemmParams<T>& p, cudaStream_t stream) {
  CLIPCU_CUDA_REQUIRE(p.M >= 0 && p.N >= 0 && p.C, "gemm_epilogue: bad arguments");
  launch_epilogue(p, stream);
}

template <class T>
GemmTensorCorePlan gemm_tensorcore_plan(const GemmParams<T>& p) {
  check_params(p);
  const mma::TileMenu menu = tensorcore_menu(p);
  if (p.M == 0 || p.N == 0) return {};
  const mma::Plan plan = mma::plan_for(p, mma::sm_count(), menu);
  GemmTensorCorePlan r;
  r.block_m = plan.bm, r.block_n = plan.bn;
  r.whole_tiles = plan.whole_tiles, r.split_tiles = plan.split_tiles();
  r.splits = r.split_tiles > 0 ? plan.splits : 1;
  return r;
}

template <class T>
void gemm_tensorcore_with_plan(const GemmParams<T>& p, const GemmTensorCorePlan& plan, cudaStream_t stream) {
  check_params(p);
  const mma::TileMenu menu = tensorcore_menu(p);
  if (p.M == 0 || p.N == 0) return;
  const mma::Plan forced = mma::plan_from(p, plan, menu);
  if (p.backend == GemmBackend::Wgmma) {
    launch_wgmma_or_mma(p, stream, &forced);
  } else {
    mma::launch_any(p, stream, &forced);
  }
}

std::vector<GemmBackend> gemm_backends(int device) {
  int major = 0;
  CLIPCU_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  // the tensor-core kernels use mma.sync bf16 / tf32, ldmatrix and cp.async: sm_80 and later
  if (major < 8) return {GemmBackend::Simple, GemmBackend::Cublas};
  std::vector<GemmBackend> all = {GemmBackend::Simple, GemmBackend::TensorCore, GemmBackend::Cublas};
  if (gemm_wgmma_available(device)) all.push_back(GemmBackend::Wgmma);
  return all;
}

template void gemm<float>(const GemmParams<float>&, cudaStream_t);
template void gemm<bf16>(const GemmParams<bf16>&, cudaStream_t);
template GemmTensorCorePlan gemm_tensorcore_plan<float>(const GemmParams<float>&);
template GemmTensorCorePlan gemm_tensorcore_plan<bf16>(const GemmParams<bf16>&);
template void gemm_tensorcore_with_plan<float>(const GemmParams<float>&, const GemmTensorCorePlan&, cudaStream_t);
template void gemm_tensorcore_with_plan<bf16>(const GemmParams<bf16>&, const GemmTensorCorePlan&, cudaStream_t);
template void gemm_epilogue<float>(const GemmParams<float>&, cudaStream_t);
template void gemm_epilogue<bf16>(const GemmParams<bf16>&, cudaStream_t);

}  // namespace clipcu::cuda
