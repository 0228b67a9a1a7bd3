// CUDA fused attention, forward and backward (see attention.cuh for the math and the contract).
//
// Tiled (the SIMT variant, any storage type). 128-thread blocks seen as 8 row groups x 16
// column threads (common/tile.cuh); a block tile has 32 rows, a thread owns 4 rows and, of a 32-wide tile, the
// columns tx and tx + 16 (of a D-wide tile, tx + 16 c for c < kD / 16). Everything is float
// in shared memory and registers, whatever the storage type.
//   Forward, block = 32 query rows of one (b, h): Q (pre-scaled by 1/sqrt(D)) stays in shared
//   memory; for each tile of 32 keys, K and V are loaded, S = Q K^T is a 4 x 2 register tile per
//   thread, the running max / sum of each row are half-warp reductions (online softmax: earlier
//   output is rescaled by exp(m_old - m_new)), P goes through shared memory and O += P V is a
//   4 x (kD/16) register tile. Causal blocks stop at their last query's key.
//   Backward, after Delta_i = dO_i . O_i (one warp per row):
//   - dK/dV kernel, block = 32 keys: loops over query tiles (causal: only those at or after
//     the keys), recomputes S^T = K Q^T and dP^T = V dO^T, P^T = exp(scale S^T - lse),
//     dS^T = P^T (dP^T - Delta), and accumulates dV += P^T dO, dK += dS^T Q in registers.
//   - dQ kernel, block = 32 queries: loops over key tiles, recomputes S, dP, dS and
//     accumulates dQ += dS K.
//   Each gradient element has exactly one owning thread, which adds its sum into the output at
//   the end: no atomics, the same bits on every run.
// Simple (the reference): one warp per query row (forward, dQ) or key row (dK, dV); lanes hold
// d = lane + 32 c of the row; every score is a warp reduction; the forward is the same online
// softmax one key at a time.
// TensorCore (bf16 storage; float storage runs Tiled): mma.sync m16n8k16, bf16 operands, float
// accumulators; shared-memory tiles are bf16 rows padded by 16 bytes (conflict-free ldmatrix),
// filled by cp.async when D % 8 == 0 and the pointers are 16-byte aligned (else plain loads).
// A warp owns 16 rows; softmax statistics live in the four lanes of a quad that share a row;
// P and dS go from accumulator registers straight into A fragments (the C layout of a 16 x 16
// pair is the A layout), so they never touch shared memory except dS for dQ.
//   Forward, block = up to 8 warps (128 queries) of one (b, h): key tiles of 64 in shared
//   memory, S = Q K^T, online softmax in base 2 (exp2, scale * log2 e folded in), O += P V.
//   Backward, block = up to 8 warps (128 keys) of one (b, h), K and V resident: for each tile of
//   32 queries (64 for D <= 32, 16 for D > 64) it computes Delta = rowsum(dO o O), S^T = K Q^T,
//   dP^T = V dO^T, P^T = exp2(S^T - lse), dS^T = P^T (dP^T - Delta), dV += P^T dO, dK += dS^T Q.
//   When the block holds every key of its head (Tk <= 128: the CLIP shapes) it also writes dS^T
//   to shared memory and computes the tile's dQ = dS K, so the backward is one kernel and every
//   gradient element has one owner. Longer heads: Delta into the workspace and a dQ kernel (query blocks of 64,
//   key tiles streamed like the forward). No atomics anywhere: deterministic.
// Masked or out-of-range scores are -inf in the forward (rows of padding are computed but never
// stored) and give P = 0 in the backward.
#include "kernels/cuda/attention.cuh"

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "kernels/cuda/common/check.h"
#include "kernels/cuda/common/device.cuh"
#include "kernels/cuda/common/tile.cuh"

namespace clipcu::cuda {

const char* attention_kernel_name(AttentionKernel k) {
  switch (k) {
    case AttentionKernel::Simple: return "simple";
    case AttentionKernel::Tiled: return "tiled";
    case AttentionKernel::TensorCore: return "tensorcore";
  }
  return "?";
}

namespace {

constexpr int kRows = 32;  // rows of a block tile (queries or keys)
constexpr int kRPT = 4;    // rows per thread: 8 row groups x 4 = 32
constexpr int kNC = 2;     // columns per thread of a 32-wide tile
constexpr int kLdP = kRows + 1;
constexpr int kMaxD = 128;

struct Dims {
  int64_t BH = 0, Tq = 0, Tk = 0;
  int D = 0;
  bool causal = false;
  float scale = 1.f;
  int64_t blocks = 0;  // row blocks per (b, h) of the launch
};

// s[r][0..kD) = mul * g[r0 + r, 0..D) for r < 32, zero past the matrix or past D.
template <int kD, class T>
__device__ __forceinline__ void load_rows(float* s, const T* g, int64_t rows, int D, int64_t r0, float mul) {
  for (int idx = int(threadIdx.x); idx < kRows * kD; idx += tile::kThreads) {
    const int r = idx / kD, d = idx % kD;
    const int64_t gr = r0 + r;
    s[r * (kD + 1) + d] = (gr < rows && d < D) ? to_float(g[gr * D + d]) * mul : 0.f;
  }
}

template <int kD>
constexpr size_t fwd_smem_bytes() {
  return (3 * kRows * (kD + 1) + kRows * kLdP) * sizeof(float);
}
template <int kD>
constexpr size_t dkdv_smem_bytes() {
  return (4 * kRows * (kD + 1) + 2 * kRows * kLdP + 2 * kRows) * sizeof(float);
}
template <int kD>
constexpr size_t dq_smem_bytes() {
  return (4 * kRows * (kD + 1) + kRows * kLdP) * sizeof(float);
}

// ---------------------------------------------------------------- tiled forward
// grid: BH * ceil(Tq / 32); block: 128; dynamic shared memory: fwd_smem_bytes<kD>().
template <class T, int kD>
__global__ void __launch_bounds__(tile::kThreads) attn_fwd_tiled(const AttentionArgs<T> a, const Dims dm) {
  constexpr int LD = kD + 1, NCD = kD / 16;
  extern __shared__ float smem[];
  float* Qs = smem;             // [32][LD] queries times scale
  float* Ks = Qs + kRows * LD;  // [32][LD]
  float* Vs = Ks + kRows * LD;  // [32][LD]
  float* Ps = Vs + kRows * LD;  // [32][kLdP]
  const int64_t bh = blockIdx.x / dm.blocks, i0 = (blockIdx.x % dm.blocks) * kRows;
  const int tx = tile::tx(), ty = tile::ty(), D = dm.D;
  const T* q = a.q + bh * dm.Tq * D;  // [Tq, D]
  const T* k = a.k + bh * dm.Tk * D;  // [Tk, D]
  const T* v = a.v + bh * dm.Tk * D;  // [Tk, D]
  load_rows<kD>(Qs, q, dm.Tq, D, i0, dm.scale);

  float m[kRPT], l[kRPT], o[kRPT][NCD];
#pragma unroll
  for (int r = 0; r < kRPT; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.f;
#pragma unroll
    for (int c = 0; c < NCD; ++c) o[r][c] = 0.f;
  }
  const int64_t kend = dm.causal ? min64(dm.Tk, i0 + kRows) : dm.Tk;
  for (int64_t j0 = 0; j0 < kend; j0 += kRows) {
    __syncthreads();  // the previous tile's readers of Ks, Vs, Ps are done (and Qs is visible)
    load_rows<kD>(Ks, k, dm.Tk, D, j0, 1.f);
    load_rows<kD>(Vs, v, dm.Tk, D, j0, 1.f);
    __syncthreads();
    float s[kRPT][kNC];
#pragma unroll
    for (int r = 0; r < kRPT; ++r)
#pragma unroll
      for (int c = 0; c < kNC; ++c) s[r][c] = 0.f;
    tile::mul_abt<kRPT, kNC, kD>(s, Qs + ty * kRPT * LD, LD, Ks + tx * LD, LD);
#pragma unroll
    for (int r = 0; r < kRPT; ++r) {
      const int64_t i = i0 + ty * kRPT + r;
      float mx = -INFINITY;
#pragma unroll
      for (int c = 0; c < kNC; ++c) {
        const int64_t j = j0 + tx + 16 * c;
        if (j >= dm.Tk || (dm.causal && j > i)) s[r][c] = -INFINITY;
        mx = fmaxf(mx, s[r][c]);
      }
      mx = half_warp_max(mx);
      const float m_new = fmaxf(m[r], mx);
      const float ref = m_new == -INFINITY ? 0.f : m_new;  // a row with nothing visible yet: no NaN
      const float alpha = expf(m[r] - ref);
      float rs = 0.f;
#pragma unroll
      for (int c = 0; c < kNC; ++c) {
        const float p = expf(s[r][c] - ref);
        Ps[(ty * kRPT + r) * kLdP + tx + 16 * c] = p;
        rs += p;
      }
      rs = half_warp_sum(rs);
      l[r] = l[r] * alpha + rs;
      m[r] = m_new;
#pragma unroll
      for (int c = 0; c < NCD; ++c) o[r][c] *= alpha;
    }
    __syncthreads();  // P complete
    tile::mul_ab<kRPT, NCD, kRows>(o, Ps + ty * kRPT * kLdP, kLdP, Vs + tx, LD);
  }
#pragma unroll
  for (int r = 0; r < kRPT; ++r) {
    const int64_t i = i0 + ty * kRPT + r;
    if (i >= dm.Tq) continue;
    const float inv = 1.f / l[r];
    T* orow = a.out + (bh * dm.Tq + i) * D;
#pragma unroll
    for (int c = 0; c < NCD; ++c) {
      const int d = tx + 16 * c;
      if (d < D) orow[d] = from_float<T>(o[r][c] * inv);
    }
    if (tx == 0) a.lse[bh * dm.Tq + i] = m[r] + logf(l[r]);
  }
}

// ---------------------------------------------------------------- simple forward
// grid: ceil(BH * Tq / 4); block: 128 (one warp per query row).
template <class T>
__global__ void __launch_bounds__(128) attn_fwd_simple(const AttentionArgs<T> a, const Dims dm) {
  const int64_t row = int64_t(blockIdx.x) * 4 + threadIdx.x / 32;  // over BH * Tq
  if (row >= dm.BH * dm.Tq) return;                                 // whole warps leave together
  const int lane = int(threadIdx.x) % 32, D = dm.D;
  const int64_t bh = row / dm.Tq, i = row % dm.Tq;
  float q[4], o[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    const int d = lane + 32 * c;
    q[c] = d < D ? to_float(a.q[row * D + d]) * dm.scale : 0.f;
  }
  float m = -INFINITY, l = 0.f;
  const int64_t kend = dm.causal ? min64(dm.Tk, i + 1) : dm.Tk;
  for (int64_t j = 0; j < kend; ++j) {
    const T* kr = a.k + (bh * dm.Tk + j) * D;
    const T* vr = a.v + (bh * dm.Tk + j) * D;
    float part = 0.f;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int d = lane + 32 * c;
      if (d < D) part = fmaf(q[c], to_float(kr[d]), part);
    }
    const float s = warp_sum(part);
    const float m_new = fmaxf(m, s);
    const float alpha = expf(m - m_new), p = expf(s - m_new);
    l = l * alpha + p;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int d = lane + 32 * c;
      o[c] = o[c] * alpha + (d < D ? p * to_float(vr[d]) : 0.f);
    }
    m = m_new;
  }
  const float inv = 1.f / l;
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    const int d = lane + 32 * c;
    if (d < D) a.out[row * D + d] = from_float<T>(o[c] * inv);
  }
  if (lane == 0) a.lse[row] = m + logf(l);
}

// ---------------------------------------------------------------- backward: Delta
// delta[row] = sum_d dO[row, d] O[row, d]. grid: ceil(rows / 4); block: 128 (a warp per row).
template <class T>
__global__ void __launch_bounds__(128) attn_bwd_delta(const AttentionArgs<T> a, int64_t rows, int D) {
  const int64_t row = int64_t(blockIdx.x) * 4 + threadIdx.x / 32;
  if (row >= rows) return;
  const int lane = int(threadIdx.x) % 32;
  float part = 0.f;
  for (int d = lane; d < D; d += 32) part = fmaf(to_float(a.dout[row * D + d]), to_float(a.out[row * D + d]), part);
  part = warp_sum(part);
  if (lane == 0) a.workspace[row] = part;
}

// ---------------------------------------------------------------- tiled backward: dK, dV
// grid: BH * ceil(Tk / 32); block: 128; dynamic shared memory: dkdv_smem_bytes<kD>().
template <class T, int kD>
__global__ void __launch_bounds__(tile::kThreads) attn_bwd_dkdv_tiled(const AttentionArgs<T> a, const Dims dm) {
  constexpr int LD = kD + 1, NCD = kD / 16;
  extern __shared__ float smem[];
  float* Ks = smem;               // [32][LD]
  float* Vs = Ks + kRows * LD;    // [32][LD]
  float* Qs = Vs + kRows * LD;    // [32][LD]
  float* dOs = Qs + kRows * LD;   // [32][LD]
  float* Ps = dOs + kRows * LD;   // [32 keys][kLdP] P^T
  float* dSs = Ps + kRows * kLdP; // [32 keys][kLdP] dS^T
  float* lse_s = dSs + kRows * kLdP;  // [32]
  float* dlt_s = lse_s + kRows;       // [32]
  const int64_t bh = blockIdx.x / dm.blocks, j0 = (blockIdx.x % dm.blocks) * kRows;
  const int tx = tile::tx(), ty = tile::ty(), D = dm.D;
  const T* q = a.q + bh * dm.Tq * D;      // [Tq, D]
  const T* dout = a.dout + bh * dm.Tq * D;
  const float* lse = a.lse + bh * dm.Tq;  // [Tq]
  const float* delta = a.workspace + bh * dm.Tq;
  load_rows<kD>(Ks, a.k + bh * dm.Tk * D, dm.Tk, D, j0, 1.f);
  load_rows<kD>(Vs, a.v + bh * dm.Tk * D, dm.Tk, D, j0, 1.f);

  float dk[kRPT][NCD], dv[kRPT][NCD];
#pragma unroll
  for (int r = 0; r < kRPT; ++r)
#pragma unroll
    for (int c = 0; c < NCD; ++c) dk[r][c] = dv[r][c] = 0.f;

  // causal (Tq == Tk): query i sees key j only when i >= j, so tiles before j0 contribute nothing
  const int64_t i_begin = dm.causal ? j0 : 0;
  for (int64_t i0 = i_begin; i0 < dm.Tq; i0 += kRows) {
    __syncthreads();  // the previous tile's readers are done (and Ks, Vs are visible)
    load_rows<kD>(Qs, q, dm.Tq, D, i0, 1.f);
    load_rows<kD>(dOs, dout, dm.Tq, D, i0, 1.f);
    if (threadIdx.x < kRows) {
      const int64_t i = i0 + threadIdx.x;
      lse_s[threadIdx.x] = i < dm.Tq ? lse[i] : 0.f;
      dlt_s[threadIdx.x] = i < dm.Tq ? delta[i] : 0.f;
    }
    __syncthreads();
    float st[kRPT][kNC], dpt[kRPT][kNC];
#pragma unroll
    for (int r = 0; r < kRPT; ++r)
#pragma unroll
      for (int c = 0; c < kNC; ++c) st[r][c] = dpt[r][c] = 0.f;
    tile::mul_abt<kRPT, kNC, kD>(st, Ks + ty * kRPT * LD, LD, Qs + tx * LD, LD);   // k_j . q_i
    tile::mul_abt<kRPT, kNC, kD>(dpt, Vs + ty * kRPT * LD, LD, dOs + tx * LD, LD);  // v_j . dO_i
#pragma unroll
    for (int r = 0; r < kRPT; ++r) {
      const int64_t j = j0 + ty * kRPT + r;
#pragma unroll
      for (int c = 0; c < kNC; ++c) {
        const int il = tx + 16 * c;
        const int64_t i = i0 + il;
        const bool valid = i < dm.Tq && j < dm.Tk && (!dm.causal || j <= i);
        const float p = valid ? expf(st[r][c] * dm.scale - lse_s[il]) : 0.f;
        Ps[(ty * kRPT + r) * kLdP + il] = p;
        dSs[(ty * kRPT + r) * kLdP + il] = p * (dpt[r][c] - dlt_s[il]);
      }
    }
    __syncthreads();  // P^T and dS^T complete
    tile::mul_ab<kRPT, NCD, kRows>(dv, Ps + ty * kRPT * kLdP, kLdP, dOs + tx, LD);  // dV_j += P_ij dO_i
    tile::mul_ab<kRPT, NCD, kRows>(dk, dSs + ty * kRPT * kLdP, kLdP, Qs + tx, LD);  // dK_j += dS_ij Q_i
  }
#pragma unroll
  for (int r = 0; r < kRPT; ++r) {
    const int64_t j = j0 + ty * kRPT + r;
    if (j >= dm.Tk) continue;
    const int64_t base = (bh * dm.Tk + j) * D;
#pragma unroll
    for (int c = 0; c < NCD; ++c) {
      const int d = tx + 16 * c;
      if (d >= D) continue;
      if (a.dk) accumulate(a.dk + base + d, dm.scale * dk[r][c]);
      if (a.dv) accumulate(a.dv + base + d, dv[r][c]);
    }
  }
}

// ---------------------------------------------------------------- tiled backward: dQ
// grid: BH * ceil(Tq / 32); block: 128; dynamic shared memory: dq_smem_bytes<kD>().
template <class T, int kD>
__global__ void __launch_bounds__(tile::kThreads) attn_bwd_dq_tiled(const AttentionArgs<T> a, const Dims dm) {
  constexpr int LD = kD + 1, NCD = kD / 16;
  extern __shared__ float smem[];
  float* Qs = smem;               // [32][LD]
  float* dOs = Qs + kRows * LD;   // [32][LD]
  float* Ks = dOs + kRows * LD;   // [32][LD]
  float* Vs = Ks + kRows * LD;    // [32][LD]
  float* dSs = Vs + kRows * LD;   // [32 queries][kLdP]
  const int64_t bh = blockIdx.x / dm.blocks, i0 = (blockIdx.x % dm.blocks) * kRows;
  const int tx = tile::tx(), ty = tile::ty(), D = dm.D;
  const T* k = a.k + bh * dm.Tk * D;  // [Tk, D]
  const T* v = a.v + bh * dm.Tk * D;
  load_rows<kD>(Qs, a.q + bh * dm.Tq * D, dm.Tq, D, i0, 1.f);
  load_rows<kD>(dOs, a.dout + bh * dm.Tq * D, dm.Tq, D, i0, 1.f);
  float lse_r[kRPT], dlt_r[kRPT], dq[kRPT][NCD];
#pragma unroll
  for (int r = 0; r < kRPT; ++r) {
    const int64_t i = i0 + ty * kRPT + r;
    lse_r[r] = i < dm.Tq ? a.lse[bh * dm.Tq + i] : 0.f;
    dlt_r[r] = i < dm.Tq ? a.workspace[bh * dm.Tq + i] : 0.f;
#pragma unroll
    for (int c = 0; c < NCD; ++c) dq[r][c] = 0.f;
  }
  const int64_t kend = dm.causal ? min64(dm.Tk, i0 + kRows) : dm.Tk;
  for (int64_t j0 = 0; j0 < kend; j0 += kRows) {
    __syncthreads();  // the previous tile's readers are done (and Qs, dOs are visible)
    load_rows<kD>(Ks, k, dm.Tk, D, j0, 1.f);
    load_rows<kD>(Vs, v, dm.Tk, D, j0, 1.f);
    __syncthreads();
    float s[kRPT][kNC], dp[kRPT][kNC];
#pragma unroll
    for (int r = 0; r < kRPT; ++r)
#pragma unroll
      for (int c = 0; c < kNC; ++c) s[r][c] = dp[r][c] = 0.f;
    tile::mul_abt<kRPT, kNC, kD>(s, Qs + ty * kRPT * LD, LD, Ks + tx * LD, LD);
    tile::mul_abt<kRPT, kNC, kD>(dp, dOs + ty * kRPT * LD, LD, Vs + tx * LD, LD);
#pragma unroll
    for (int r = 0; r < kRPT; ++r) {
      const int64_t i = i0 + ty * kRPT + r;
#pragma unroll
      for (int c = 0; c < kNC; ++c) {
        const int64_t j = j0 + tx + 16 * c;
        const bool valid = i < dm.Tq && j < dm.Tk && (!dm.causal || j <= i);
        const float p = valid ? expf(s[r][c] * dm.scale - lse_r[r]) : 0.f;
        dSs[(ty * kRPT + r) * kLdP + tx + 16 * c] = p * (dp[r][c] - dlt_r[r]);
      }
    }
    __syncthreads();  // dS complete
    tile::mul_ab<kRPT, NCD, kRows>(dq, dSs + ty * kRPT * kLdP, kLdP, Ks + tx, LD);  // dQ_i += dS_ij K_j
  }
#pragma unroll
  for (int r = 0; r < kRPT; ++r) {
    const int64_t i = i0 + ty * kRPT + r;
    if (i >= dm.Tq) continue;
    T* row = a.dq + (bh * dm.Tq + i) * D;
#pragma unroll
    for (int c = 0; c < NCD; ++c) {
      const int d = tx + 16 * c;
      if (d < D) accumulate(row + d, dm.scale * dq[r][c]);
    }
  }
}

// ---------------------------------------------------------------- simple backward
// dQ: one warp per query row. grid: ceil(BH * Tq / 4); block: 128.
template <class T>
__global__ void __launch_bounds__(128) attn_bwd_dq_simple(const AttentionArgs<T> a, const Dims dm) {
  const int64_t row = int64_t(blockIdx.x) * 4 + threadIdx.x / 32;
  if (row >= dm.BH * dm.Tq) return;
  const int lane = int(threadIdx.x) % 32, D = dm.D;
  const int64_t bh = row / dm.Tq, i = row % dm.Tq;
  float q[4], dO[4], acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    const int d = lane + 32 * c;
    q[c] = d < D ? to_float(a.q[row * D + d]) : 0.f;
    dO[c] = d < D ? to_float(a.dout[row * D + d]) : 0.f;
  }
  const float lse = a.lse[row], delta = a.workspace[row];
  const int64_t kend = dm.causal ? min64(dm.Tk, i + 1) : dm.Tk;
  for (int64_t j = 0; j < kend; ++j) {
    const T* kr = a.k + (bh * dm.Tk + j) * D;
    const T* vr = a.v + (bh * dm.Tk + j) * D;
    float kj[4], ps = 0.f, pd = 0.f;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int d = lane + 32 * c;
      kj[c] = d < D ? to_float(kr[d]) : 0.f;
      ps = fmaf(q[c], kj[c], ps);
      pd = fmaf(dO[c], d < D ? to_float(vr[d]) : 0.f, pd);
    }
    const float p = expf(warp_sum(ps) * dm.scale - lse);
    const float ds = p * (warp_sum(pd) - delta);
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[c] = fmaf(ds, kj[c], acc[c]);
  }
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    const int d = lane + 32 * c;
    if (d < D) accumulate(a.dq + row * D + d, dm.scale * acc[c]);
  }
}

// dK, dV: one warp per key row. grid: ceil(BH * Tk / 4); block: 128.
template <class T>
__global__ void __launch_bounds__(128) attn_bwd_dkdv_simple(const AttentionArgs<T> a, const Dims dm) {
  const int64_t row = int64_t(blockIdx.x) * 4 + threadIdx.x / 32;  // over BH * Tk
  if (row >= dm.BH * dm.Tk) return;
  const int lane = int(threadIdx.x) % 32, D = dm.D;
  const int64_t bh = row / dm.Tk, j = row % dm.Tk;
  float kj[4], vj[4], dk[4] = {0.f, 0.f, 0.f, 0.f}, dv[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    const int d = lane + 32 * c;
    kj[c] = d < D ? to_float(a.k[row * D + d]) : 0.f;
    vj[c] = d < D ? to_float(a.v[row * D + d]) : 0.f;
  }
  for (int64_t i = dm.causal ? j : 0; i < dm.Tq; ++i) {
    const int64_t qrow = bh * dm.Tq + i;
    float qi[4], doi[4], ps = 0.f, pd = 0.f;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int d = lane + 32 * c;
      qi[c] = d < D ? to_float(a.q[qrow * D + d]) : 0.f;
      doi[c] = d < D ? to_float(a.dout[qrow * D + d]) : 0.f;
      ps = fmaf(qi[c], kj[c], ps);
      pd = fmaf(doi[c], vj[c], pd);
    }
    const float p = expf(warp_sum(ps) * dm.scale - a.lse[qrow]);
    const float ds = p * (warp_sum(pd) - a.workspace[qrow]);
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      dv[c] = fmaf(p, doi[c], dv[c]);
      dk[c] = fmaf(ds, qi[c], dk[c]);
    }
  }
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    const int d = lane + 32 * c;
    if (d >= D) continue;
    if (a.dk) accumulate(a.dk + row * D + d, dm.scale * dk[c]);
    if (a.dv) accumulate(a.dv + row * D + d, dv[c]);
  }
}

// ---------------------------------------------------------------- tensor-core primitives
// mma.sync m16n8k16 (bf16 in, float accumulate), ldmatrix and cp.async: sm_80 and later.
// Fragment layout (PTX ISA), g = lane / 4, t = lane % 4, pairs hold the lower column in the low
// half: A (16 x 16) {(g, 2t..2t+1)}, {(g+8, 2t..)}, {(g, 2t+8..)}, {(g+8, 2t+8..)};
// B (16 x 8) {(2t..2t+1, g)}, {(2t+8.., g)}; C (16 x 8) (g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1).
__device__ __forceinline__ void tc_mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// Four 8 x 8 bf16 matrices; lanes 8 i .. 8 i + 7 give the row addresses of matrix i (16-byte
// aligned rows). r[i] of lane l: matrix i's (l / 4, 2 (l % 4) ..+1), or with .trans its
// (2 (l % 4) ..+1, l / 4). "memory": no shared-memory store may move across it.
__device__ __forceinline__ void tc_ldsm(uint32_t (&r)[4], const bf16* p) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s)
               : "memory");
}
__device__ __forceinline__ void tc_ldsm_t(uint32_t (&r)[4], const bf16* p) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s)
               : "memory");
}
// 16 bytes global -> shared without registers; src_bytes 0 fills zeros.
__device__ __forceinline__ void tc_cp_async16(bf16* smem, const bf16* gmem, int src_bytes) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes) : "memory");
}
// Waits for all of this thread's cp.async copies (a __syncthreads must follow for the others').
__device__ __forceinline__ void tc_cp_async_wait_all() {
  asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;\n" ::: "memory");
}

// ---------------------------------------------------------------- tensor-core kernels (bf16)
constexpr int kTcMaxWarps = 8;  // a block owns at most 8 x 16 rows (queries or keys)
constexpr int kTcKeyTile = 64;  // keys per shared-memory tile of the forward
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

struct TcDims {
  int64_t BH = 0, Tq = 0, Tk = 0;
  int D = 0;
  bool causal = false;
  bool vec = false;        // D % 8 == 0 and every pointer 16-byte aligned: rows move in 16-byte chunks
  bool fuse_dq = false;    // backward: the key-block kernel also owns dQ (one key block per head)
  float scale = 1.f;       // 1 / sqrt(D)
  float scale_log2 = 1.f;  // scale * log2(e): the softmax runs in base 2 (exp2)
  int64_t blocks = 0;      // blocks per (b, h)
};

// Shared-memory rows of kD bf16 plus 16 bytes: the 8 rows of an ldmatrix fall in 8 different
// 16-byte bank groups (row stride = 4 mod 32 words for kD = 64), so no bank conflicts.
template <int kD>
__host__ __device__ constexpr int tc_ld() {
  return kD + 8;
}
// Queries per tile of the backward kernels. Registers: a warp holds dK and dV (kD / 2 each per
// thread) and the two score tiles S^T, dP^T (QT / 4 each); 32 keeps kD = 64 near 170 registers
// (two 160-thread blocks per SM), 16 keeps kD = 128 from spilling.
template <int kD>
__host__ __device__ constexpr int tc_bwd_qtile() {
  return kD <= 32 ? 64 : kD <= 64 ? 32 : 16;
}
// Keys per tile of the dQ kernel.
template <int kD>
__host__ __device__ constexpr int tc_dq_ktile() {
  return kD <= 64 ? 64 : 32;
}

__device__ __forceinline__ uint32_t tc_pack(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);  // .x (the lower column) in the low half
  return uint32_t(__bfloat16_as_ushort(h.x)) | (uint32_t(__bfloat16_as_ushort(h.y)) << 16);
}
// The A fragment of k step ks from two accumulator tiles (columns 16 ks .. 16 ks + 15 of C):
// the C layout of a 16 x 16 pair is the A layout, so P and dS never leave registers.
template <int N>
__device__ __forceinline__ void tc_acc_to_a(uint32_t (&a)[4], const float (&c)[N][4], int ks) {
  a[0] = tc_pack(c[2 * ks][0], c[2 * ks][1]);
  a[1] = tc_pack(c[2 * ks][2], c[2 * ks][3]);
  a[2] = tc_pack(c[2 * ks + 1][0], c[2 * ks + 1][1]);
  a[3] = tc_pack(c[2 * ks + 1][2], c[2 * ks + 1][3]);
}
// Sum of the 8 products of two chunks of 8 bf16 (exact bf16 -> float by shifting).
__device__ __forceinline__ float tc_dot8(const uint4& x, const uint4& y) {
  const uint32_t xs[4] = {x.x, x.y, x.z, x.w}, ys[4] = {y.x, y.y, y.z, y.w};
  float sum = 0.f;
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    sum = fmaf(__uint_as_float(xs[w] << 16), __uint_as_float(ys[w] << 16), sum);
    sum = fmaf(__uint_as_float(xs[w] & 0xffff0000u), __uint_as_float(ys[w] & 0xffff0000u), sum);
  }
  return sum;
}

// The 8 elements g[r, d0 .. d0 + 8) of a row-major [rows, D] matrix, zero outside it. vec: one
// 16-byte load (D % 8 == 0, aligned base).
__device__ __forceinline__ uint4 tc_load8(const bf16* g, int64_t rows, int D, int64_t r, int d0, bool vec) {
  uint4 x = make_uint4(0u, 0u, 0u, 0u);
  if (r >= rows || d0 >= D) return x;
  if (vec) return *reinterpret_cast<const uint4*>(g + r * D + d0);
  uint32_t w[4] = {0u, 0u, 0u, 0u};
#pragma unroll
  for (int e = 0; e < 8; ++e)
    if (d0 + e < D) w[e / 2] |= uint32_t(__bfloat16_as_ushort(g[r * D + d0 + e])) << (16 * (e % 2));
  x.x = w[0], x.y = w[1], x.z = w[2], x.w = w[3];
  return x;
}

// s[r][0 .. kD) = g[r0 + r][0 .. kD) for r < nrows (leading dimension tc_ld<kD>()), zero past
// the matrix or past D. vec: cp.async (the caller waits with tc_cp_async_wait_all, then syncs).
template <int kD>
__device__ __forceinline__ void tc_load_tile(bf16* s, const bf16* g, int64_t rows, int D, int64_t r0, int nrows,
                                             bool vec) {
  constexpr int LD = tc_ld<kD>(), kChunks = kD / 8;
  for (int idx = int(threadIdx.x); idx < nrows * kChunks; idx += int(blockDim.x)) {
    const int r = idx / kChunks, c = (idx % kChunks) * 8;
    const int64_t gr = r0 + r;
    bf16* dst = s + r * LD + c;
    if (vec) {
      const bool ok = gr < rows && c < D;
      tc_cp_async16(dst, ok ? g + gr * D + c : g, ok ? 16 : 0);
    } else {
      *reinterpret_cast<uint4*>(dst) = tc_load8(g, rows, D, gr, c, false);
    }
  }
}

// p[0] (+)= x0, p[1] (+)= x1 in bf16 (float math), n of the two inside the row (n >= 1).
// vec: both are inside (D % 8 == 0, even column) and p is 4-byte aligned.
template <bool kAdd>
__device__ __forceinline__ void tc_store2(bf16* p, float x0, float x1, int n, bool vec) {
  if (vec) {
    __nv_bfloat162* p2 = reinterpret_cast<__nv_bfloat162*>(p);
    if constexpr (kAdd) {
      const __nv_bfloat162 o = *p2;
      x0 += __bfloat162float(o.x);
      x1 += __bfloat162float(o.y);
    }
    *p2 = __floats2bfloat162_rn(x0, x1);
    return;
  }
  if constexpr (kAdd) {
    accumulate(p, x0);
    if (n > 1) accumulate(p + 1, x1);
  } else {
    p[0] = from_float<bf16>(x0);
    if (n > 1) p[1] = from_float<bf16>(x1);
  }
}

// Row `row` of a warp's 16 x (8 NT) accumulator tile (h = 0: row g, h = 1: row g + 8) times mul
// into dst[0 .. D) of a row-major matrix row (written, or added with kAdd).
template <bool kAdd, int NT>
__device__ __forceinline__ void tc_store_row(bf16* dst, const float (&c)[NT][4], int h, float mul, int D, int t,
                                             bool vec) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const int d = 8 * nt + 2 * t;
    if (d < D) tc_store2<kAdd>(dst + d, mul * c[nt][2 * h], mul * c[nt][2 * h + 1], D - d, vec);
  }
}

// ---- forward. grid: BH * blocks; block: 32 W threads, warp w owns queries q0 + 16 w .. + 15;
// dynamic shared memory: tc_fwd_smem_bytes<kD>(W). Keys stream through shared memory in tiles
// of 64: S = Q K^T (A = the warp's Q rows, kept as fragments), the running max / sum of each row
// are quad shuffles (online softmax in base 2), P stays in registers as the A operand of O += P V.
// Causal: a block stops at its last query's key, a warp skips 16-key steps past its last query.
template <int kD>
__global__ void __launch_bounds__(32 * kTcMaxWarps) attn_fwd_tc(const AttentionArgs<bf16> a, const TcDims dm) {
  constexpr int LD = tc_ld<kD>(), KT = kTcKeyTile, NKS = kD / 16;
  extern __shared__ __align__(16) unsigned char tc_smem[];
  const int W = int(blockDim.x) / 32, warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int g = lane / 4, t = lane % 4, lr = lane % 8, lm = lane / 8;  // ldmatrix: lane gives row lr of matrix lm
  bf16* Qs = reinterpret_cast<bf16*>(tc_smem);  // [16 W][LD]
  bf16* Ks = Qs + 16 * W * LD;                  // [KT][LD]
  bf16* Vs = Ks + KT * LD;                      // [KT][LD]
  const int64_t bh = blockIdx.x / dm.blocks, q0 = (blockIdx.x % dm.blocks) * 16 * W;
  const int D = dm.D;
  const bf16* k = a.k + bh * dm.Tk * D;  // [Tk, D]
  const bf16* v = a.v + bh * dm.Tk * D;  // [Tk, D]
  tc_load_tile<kD>(Qs, a.q + bh * dm.Tq * D, dm.Tq, D, q0, 16 * W, dm.vec);
  tc_cp_async_wait_all();
  __syncthreads();
  const int64_t wq0 = q0 + 16 * warp;  // the warp's first query
  const bool active = wq0 < dm.Tq;
  uint32_t qf[NKS][4];  // the warp's 16 query rows as A fragments, one per 16 of D
#pragma unroll
  for (int ks = 0; ks < NKS; ++ks) tc_ldsm(qf[ks], Qs + (16 * warp + lr + 8 * (lm % 2)) * LD + 16 * ks + 8 * (lm / 2));

  float o[kD / 8][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
#pragma unroll
  for (int nd = 0; nd < kD / 8; ++nd)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[nd][e] = 0.f;
  const int64_t kend = dm.causal ? min64(dm.Tk, q0 + 16 * W) : dm.Tk;
  const int64_t kend_w = dm.causal ? min64(dm.Tk, wq0 + 16) : dm.Tk;  // keys this warp can see
  for (int64_t j0 = 0; j0 < kend; j0 += KT) {
    __syncthreads();  // the previous tile's readers are done
    tc_load_tile<kD>(Ks, k, dm.Tk, D, j0, KT, dm.vec);
    tc_load_tile<kD>(Vs, v, dm.Tk, D, j0, KT, dm.vec);
    tc_cp_async_wait_all();
    __syncthreads();
    if (!active || j0 >= kend_w) continue;  // warp-uniform
    const int nk = int(min64(KT, kend_w - j0));  // keys of the tile that can be visible to the warp
    float s[KT / 8][4];
#pragma unroll
    for (int nt = 0; nt < KT / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] = 0.f;
#pragma unroll
    for (int np = 0; np < KT / 16; ++np) {
      if (16 * np >= nk) continue;
#pragma unroll
      for (int ks = 0; ks < NKS; ++ks) {
        uint32_t b[4];  // keys 16 np .. + 7 and + 8 .. + 15, D columns 16 ks .. + 15
        tc_ldsm(b, Ks + (16 * np + lr + 8 * (lm / 2)) * LD + 16 * ks + 8 * (lm % 2));
        tc_mma(s[2 * np], qf[ks], b[0], b[1]);
        tc_mma(s[2 * np + 1], qf[ks], b[2], b[3]);
      }
    }
    // scale into base 2, mask (past Tk, causal; skipped steps are past kend_w, so masked too)
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < KT / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t i = wq0 + g + 8 * (e / 2), j = j0 + 8 * nt + 2 * t + (e % 2);
        const bool ok = j < dm.Tk && (!dm.causal || j <= i);
        s[nt][e] = ok ? s[nt][e] * dm.scale_log2 : -INFINITY;
        mx[e / 2] = fmaxf(mx[e / 2], s[nt][e]);
      }
    float ref[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(kFullMask, mx[h], 1));  // the 4 lanes of a quad share a row
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(kFullMask, mx[h], 2));
      const float m_new = fmaxf(m[h], mx[h]);
      ref[h] = m_new == -INFINITY ? 0.f : m_new;  // nothing visible yet: no inf - inf
      const float alpha = exp2f(m[h] - ref[h]);
      m[h] = m_new;
      l[h] *= alpha;  // l is this lane's partial sum; the quad adds its four at the end
#pragma unroll
      for (int nd = 0; nd < kD / 8; ++nd) {
        o[nd][2 * h] *= alpha;
        o[nd][2 * h + 1] *= alpha;
      }
    }
#pragma unroll
    for (int nt = 0; nt < KT / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float p = exp2f(s[nt][e] - ref[e / 2]);
        s[nt][e] = p;
        l[e / 2] += p;
      }
    // O += P V (k = the tile's keys)
#pragma unroll
    for (int ks = 0; ks < KT / 16; ++ks) {
      if (16 * ks >= nk) continue;
      uint32_t pa[4];
      tc_acc_to_a(pa, s, ks);
#pragma unroll
      for (int np = 0; np < kD / 16; ++np) {
        uint32_t b[4];  // keys 16 ks .. + 15, D columns 16 np .. + 7 and + 8 .. + 15
        tc_ldsm_t(b, Vs + (16 * ks + lr + 8 * (lm % 2)) * LD + 16 * np + 8 * (lm / 2));
        tc_mma(o[2 * np], pa, b[0], b[1]);
        tc_mma(o[2 * np + 1], pa, b[2], b[3]);
      }
    }
  }
  if (!active) return;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l[h] += __shfl_xor_sync(kFullMask, l[h], 1);
    l[h] += __shfl_xor_sync(kFullMask, l[h], 2);
    const int64_t i = wq0 + g + 8 * h;
    if (i >= dm.Tq) continue;
    tc_store_row<false>(a.out + (bh * dm.Tq + i) * D, o, h, 1.f / l[h], D, t, dm.vec);
    if (t == 0) a.lse[bh * dm.Tq + i] = (m[h] + log2f(l[h])) * kLn2;
  }
}

// ---- backward, key blocks. grid: BH * blocks; block: 32 W threads, warp w owns keys
// k0 + 16 w .. + 15; dynamic shared memory: tc_bwd_smem_bytes<kD>(W). K, V of the block stay in
// shared memory; query tiles of QT rows stream through it (causal: from the block's first key on).
// Per tile: Delta = rowsum(dO o O), S^T = K Q^T and dP^T = V dO^T, P^T = exp2(S^T - lse),
// dS^T = P^T (dP^T - Delta), then dV += P^T dO and dK += dS^T Q with P^T, dS^T as A fragments.
// fuse_dq (the block holds all keys of its head): dS^T also goes to shared memory and the block
// computes the tile's dQ = dS K itself, so dQ has a single owner without a second kernel.
template <int kD>
__global__ void __launch_bounds__(32 * kTcMaxWarps) attn_bwd_kv_tc(const AttentionArgs<bf16> a, const TcDims dm) {
  constexpr int LD = tc_ld<kD>(), QT = tc_bwd_qtile<kD>(), LDS = QT + 8, NKS = kD / 16, NQ = QT / 8;
  static_assert(QT * (kD / 8) % 32 == 0, "the Delta loop runs whole warps");
  extern __shared__ __align__(16) unsigned char tc_smem[];
  const int W = int(blockDim.x) / 32, warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int g = lane / 4, t = lane % 4, lr = lane % 8, lm = lane / 8;
  bf16* Ks = reinterpret_cast<bf16*>(tc_smem);                  // [16 W][LD] the block's keys
  bf16* Vs = Ks + 16 * W * LD;                                  // [16 W][LD]
  bf16* Qs = Vs + 16 * W * LD;                                  // [QT][LD] one query tile
  bf16* dOs = Qs + QT * LD;                                     // [QT][LD]
  bf16* dSs = dOs + QT * LD;                                    // [16 W][LDS] dS^T (keys x queries)
  float* lse_s = reinterpret_cast<float*>(dSs + 16 * W * LDS);  // [QT] lse * log2(e)
  float* dlt_s = lse_s + QT;                                    // [QT] Delta
  const int64_t bh = blockIdx.x / dm.blocks, k0 = (blockIdx.x % dm.blocks) * 16 * W;
  const int D = dm.D;
  const int64_t qoff = bh * dm.Tq * D, koff = bh * dm.Tk * D;
  tc_load_tile<kD>(Ks, a.k + koff, dm.Tk, D, k0, 16 * W, dm.vec);
  tc_load_tile<kD>(Vs, a.v + koff, dm.Tk, D, k0, 16 * W, dm.vec);
  const int64_t wk0 = k0 + 16 * warp;  // the warp's first key
  const bool kactive = wk0 < dm.Tk;
  float dk[kD / 8][4], dv[kD / 8][4];
#pragma unroll
  for (int nd = 0; nd < kD / 8; ++nd)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[nd][e] = dv[nd][e] = 0.f;

  // causal (Tq == Tk): queries before k0 see none of the block's keys
  for (int64_t i0 = dm.causal ? k0 / QT * QT : 0; i0 < dm.Tq; i0 += QT) {
    __syncthreads();  // the previous tile's readers are done
    tc_load_tile<kD>(Qs, a.q + qoff, dm.Tq, D, i0, QT, dm.vec);
    tc_load_tile<kD>(dOs, a.dout + qoff, dm.Tq, D, i0, QT, dm.vec);
    for (int r = int(threadIdx.x); r < QT; r += int(blockDim.x)) {
      const int64_t i = i0 + r;
      lse_s[r] = i < dm.Tq ? a.lse[bh * dm.Tq + i] * kLog2e : 0.f;
    }
    tc_cp_async_wait_all();
    __syncthreads();
    // Delta_i = dO_i . O_i: kD / 8 neighbouring lanes share a row, 8 elements each
    for (int idx = int(threadIdx.x); idx < QT * (kD / 8); idx += int(blockDim.x)) {
      const int r = idx / (kD / 8), c = (idx % (kD / 8)) * 8;
      float part = tc_dot8(tc_load8(a.out + qoff, dm.Tq, D, i0 + r, c, dm.vec),
                           *reinterpret_cast<const uint4*>(dOs + r * LD + c));
#pragma unroll
      for (int off = 1; off < kD / 8; off <<= 1) part += __shfl_xor_sync(kFullMask, part, off);
      if (c == 0) dlt_s[r] = part;
    }
    __syncthreads();
    // causal: a tile wholly before the warp's keys adds nothing
    const bool work = kactive && !(dm.causal && i0 + QT <= wk0);
    if (work) {
      float st[NQ][4], dpt[NQ][4];
#pragma unroll
      for (int nt = 0; nt < NQ; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) st[nt][e] = dpt[nt][e] = 0.f;
#pragma unroll
      for (int ks = 0; ks < NKS; ++ks) {
        uint32_t ka[4], va[4];  // the warp's keys, D columns 16 ks .. + 15
        tc_ldsm(ka, Ks + (16 * warp + lr + 8 * (lm % 2)) * LD + 16 * ks + 8 * (lm / 2));
        tc_ldsm(va, Vs + (16 * warp + lr + 8 * (lm % 2)) * LD + 16 * ks + 8 * (lm / 2));
#pragma unroll
        for (int np = 0; np < QT / 16; ++np) {
          uint32_t b[4];  // queries 16 np .. + 15 as B columns
          tc_ldsm(b, Qs + (16 * np + lr + 8 * (lm / 2)) * LD + 16 * ks + 8 * (lm % 2));
          tc_mma(st[2 * np], ka, b[0], b[1]);
          tc_mma(st[2 * np + 1], ka, b[2], b[3]);
          tc_ldsm(b, dOs + (16 * np + lr + 8 * (lm / 2)) * LD + 16 * ks + 8 * (lm % 2));
          tc_mma(dpt[2 * np], va, b[0], b[1]);
          tc_mma(dpt[2 * np + 1], va, b[2], b[3]);
        }
      }
      // P^T and dS^T in place (row: key, column: query of the tile); masked entries are 0
#pragma unroll
      for (int nt = 0; nt < NQ; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int il = 8 * nt + 2 * t + (e % 2);
          const int64_t i = i0 + il, j = wk0 + g + 8 * (e / 2);
          const bool ok = i < dm.Tq && j < dm.Tk && (!dm.causal || j <= i);
          const float p = ok ? exp2f(st[nt][e] * dm.scale_log2 - lse_s[il]) : 0.f;
          st[nt][e] = p;
          dpt[nt][e] = p * (dpt[nt][e] - dlt_s[il]);
        }
      // dV += P^T dO, dK += dS^T Q (k = the tile's queries)
#pragma unroll
      for (int ks = 0; ks < QT / 16; ++ks) {
        uint32_t pa[4], sa[4];
        tc_acc_to_a(pa, st, ks);
        tc_acc_to_a(sa, dpt, ks);
#pragma unroll
        for (int np = 0; np < kD / 16; ++np) {
          uint32_t b[4];  // queries 16 ks .. + 15 as k, D columns 16 np .. + 15
          tc_ldsm_t(b, dOs + (16 * ks + lr + 8 * (lm % 2)) * LD + 16 * np + 8 * (lm / 2));
          tc_mma(dv[2 * np], pa, b[0], b[1]);
          tc_mma(dv[2 * np + 1], pa, b[2], b[3]);
          tc_ldsm_t(b, Qs + (16 * ks + lr + 8 * (lm % 2)) * LD + 16 * np + 8 * (lm / 2));
          tc_mma(dk[2 * np], sa, b[0], b[1]);
          tc_mma(dk[2 * np + 1], sa, b[2], b[3]);
        }
      }
      if (dm.fuse_dq) {
#pragma unroll
        for (int nt = 0; nt < NQ; ++nt)
#pragma unroll
          for (int h = 0; h < 2; ++h)
            *reinterpret_cast<uint32_t*>(dSs + (16 * warp + g + 8 * h) * LDS + 8 * nt + 2 * t) =
                tc_pack(dpt[nt][2 * h], dpt[nt][2 * h + 1]);
      }
    } else if (dm.fuse_dq) {
      for (int idx = lane; idx < 16 * QT / 2; idx += 32)  // the warp's rows of dS^T are zero
        *reinterpret_cast<uint32_t*>(dSs + (16 * warp + idx / (QT / 2)) * LDS + 2 * (idx % (QT / 2))) = 0u;
    }
    if (dm.fuse_dq) {
      __syncthreads();  // dS^T complete
      // dQ of the tile = dS (QT x 16 W) K (16 W x kD) in items of 16 rows x 32 columns spread
      // over the warps (all of them busy, 16 accumulator registers beside dK and dV)
      constexpr int RG = QT / 16, kItems = RG * (kD / 32);
      for (int item = warp; item < kItems; item += W) {
        const int rq = item % RG, c0 = 32 * (item / RG);
        if (i0 + 16 * rq >= dm.Tq || c0 >= D) continue;  // warp-uniform: rows past Tq or columns past D
        float acc[4][4];
#pragma unroll
        for (int nd = 0; nd < 4; ++nd)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[nd][e] = 0.f;
        for (int ks = 0; ks < W; ++ks) {
          uint32_t sa[4];  // dS rows (queries) 16 rq .. + 15, keys 16 ks .. + 15, from dS^T
          tc_ldsm_t(sa, dSs + (16 * ks + lr + 8 * (lm / 2)) * LDS + 16 * rq + 8 * (lm % 2));
#pragma unroll
          for (int np = 0; np < 2; ++np) {
            uint32_t b[4];  // keys 16 ks .. + 15 as k, D columns c0 + 16 np .. + 15
            tc_ldsm_t(b, Ks + (16 * ks + lr + 8 * (lm % 2)) * LD + c0 + 16 * np + 8 * (lm / 2));
            tc_mma(acc[2 * np], sa, b[0], b[1]);
            tc_mma(acc[2 * np + 1], sa, b[2], b[3]);
          }
        }
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int64_t i = i0 + 16 * rq + g + 8 * h;
          if (i < dm.Tq) tc_store_row<true>(a.dq + qoff + i * D + c0, acc, h, dm.scale, D - c0, t, dm.vec);
        }
      }
    }
  }
  // dq may be the same buffer as dk / dv (self-attention on one tensor): the block's dQ updates of
  // these rows are done and visible before its dK / dV updates.
  __syncthreads();
  if (!kactive) return;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t j = wk0 + g + 8 * h;
    if (j >= dm.Tk) continue;
    if (a.dk) tc_store_row<true>(a.dk + koff + j * D, dk, h, dm.scale, D, t, dm.vec);
    if (a.dv) tc_store_row<true>(a.dv + koff + j * D, dv, h, 1.f, D, t, dm.vec);
  }
}

// ---- backward, dQ alone (used when a head has more than one key block). grid: BH * blocks;
// block: 128 threads, warp w owns queries q0 + 16 w .. + 15; dynamic shared memory:
// tc_dq_smem_bytes<kD>(). Like the forward: key tiles stream through shared memory, S and
// dP = dO V^T are recomputed, dS = P (dP - Delta) stays in registers as the A operand of dQ += dS K.
// Delta comes from the workspace (attn_bwd_delta).
template <int kD>
__global__ void __launch_bounds__(128) attn_bwd_dq_tc(const AttentionArgs<bf16> a, const TcDims dm) {
  constexpr int LD = tc_ld<kD>(), KT = tc_dq_ktile<kD>(), NKS = kD / 16, QB = 64;
  extern __shared__ __align__(16) unsigned char tc_smem[];
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int g = lane / 4, t = lane % 4, lr = lane % 8, lm = lane / 8;
  bf16* Qs = reinterpret_cast<bf16*>(tc_smem);  // [QB][LD]
  bf16* dOs = Qs + QB * LD;                     // [QB][LD]
  bf16* Ks = dOs + QB * LD;                     // [KT][LD]
  bf16* Vs = Ks + KT * LD;                      // [KT][LD]
  const int64_t bh = blockIdx.x / dm.blocks, q0 = (blockIdx.x % dm.blocks) * QB;
  const int D = dm.D;
  const int64_t qoff = bh * dm.Tq * D, koff = bh * dm.Tk * D;
  tc_load_tile<kD>(Qs, a.q + qoff, dm.Tq, D, q0, QB, dm.vec);
  tc_load_tile<kD>(dOs, a.dout + qoff, dm.Tq, D, q0, QB, dm.vec);
  const int64_t wq0 = q0 + 16 * warp;
  const bool active = wq0 < dm.Tq;
  float lse2[2], dlt[2], acc[kD / 8][4];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t i = wq0 + g + 8 * h;
    lse2[h] = i < dm.Tq ? a.lse[bh * dm.Tq + i] * kLog2e : 0.f;
    dlt[h] = i < dm.Tq ? a.workspace[bh * dm.Tq + i] : 0.f;
  }
#pragma unroll
  for (int nd = 0; nd < kD / 8; ++nd)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[nd][e] = 0.f;
  const int64_t kend = dm.causal ? min64(dm.Tk, q0 + QB) : dm.Tk;
  const int64_t kend_w = dm.causal ? min64(dm.Tk, wq0 + 16) : dm.Tk;
  for (int64_t j0 = 0; j0 < kend; j0 += KT) {
    __syncthreads();  // the previous tile's readers are done
    tc_load_tile<kD>(Ks, a.k + koff, dm.Tk, D, j0, KT, dm.vec);
    tc_load_tile<kD>(Vs, a.v + koff, dm.Tk, D, j0, KT, dm.vec);
    tc_cp_async_wait_all();
    __syncthreads();
    if (!active || j0 >= kend_w) continue;  // warp-uniform
    const int nk = int(min64(KT, kend_w - j0));
    float s[KT / 8][4], dp[KT / 8][4];
#pragma unroll
    for (int nt = 0; nt < KT / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] = dp[nt][e] = 0.f;
#pragma unroll
    for (int ks = 0; ks < NKS; ++ks) {
      uint32_t qa[4], oa[4];
      tc_ldsm(qa, Qs + (16 * warp + lr + 8 * (lm % 2)) * LD + 16 * ks + 8 * (lm / 2));
      tc_ldsm(oa, dOs + (16 * warp + lr + 8 * (lm % 2)) * LD + 16 * ks + 8 * (lm / 2));
#pragma unroll
      for (int np = 0; np < KT / 16; ++np) {
        if (16 * np >= nk) continue;
        uint32_t b[4];
        tc_ldsm(b, Ks + (16 * np + lr + 8 * (lm / 2)) * LD + 16 * ks + 8 * (lm % 2));
        tc_mma(s[2 * np], qa, b[0], b[1]);
        tc_mma(s[2 * np + 1], qa, b[2], b[3]);
        tc_ldsm(b, Vs + (16 * np + lr + 8 * (lm / 2)) * LD + 16 * ks + 8 * (lm % 2));
        tc_mma(dp[2 * np], oa, b[0], b[1]);
        tc_mma(dp[2 * np + 1], oa, b[2], b[3]);
      }
    }
#pragma unroll
    for (int nt = 0; nt < KT / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t i = wq0 + g + 8 * (e / 2), j = j0 + 8 * nt + 2 * t + (e % 2);
        const bool ok = i < dm.Tq && j < dm.Tk && (!dm.causal || j <= i);
        const float p = ok ? exp2f(s[nt][e] * dm.scale_log2 - lse2[e / 2]) : 0.f;
        s[nt][e] = p * (dp[nt][e] - dlt[e / 2]);  // dS
      }
#pragma unroll
    for (int ks = 0; ks < KT / 16; ++ks) {
      if (16 * ks >= nk) continue;
      uint32_t sa[4];
      tc_acc_to_a(sa, s, ks);
#pragma unroll
      for (int np = 0; np < kD / 16; ++np) {
        uint32_t b[4];
        tc_ldsm_t(b, Ks + (16 * ks + lr + 8 * (lm % 2)) * LD + 16 * np + 8 * (lm / 2));
        tc_mma(acc[2 * np], sa, b[0], b[1]);
        tc_mma(acc[2 * np + 1], sa, b[2], b[3]);
      }
    }
  }
  tc_cp_async_wait_all();
  if (!active) return;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t i = wq0 + g + 8 * h;
    if (i < dm.Tq) tc_store_row<true>(a.dq + qoff + i * D, acc, h, dm.scale, D, t, dm.vec);
  }
}

// ---------------------------------------------------------------- launch helpers
// Calls f.template operator()<kD>() with the compiled tile width that holds D.
template <class F>
void dispatch_head_dim(int64_t D, F&& f) {
  if (D <= 32) f.template operator()<32>();
  else if (D <= 64) f.template operator()<64>();
  else f.template operator()<128>();
}

Dims make_dims(const AttentionShape& s, int64_t rows_per_head) {
  Dims d;
  d.BH = s.B * s.H;
  d.Tq = s.Tq;
  d.Tk = s.Tk;
  d.D = int(s.D);
  d.causal = s.causal;
  d.scale = float(1.0 / std::sqrt(double(s.D)));
  d.blocks = (rows_per_head + kRows - 1) / kRows;
  return d;
}

void check_shape(const AttentionShape& s, const char* op) {
  CLIPCU_CUDA_REQUIRE(s.B >= 0 && s.H >= 0 && s.Tq >= 0 && s.Tk >= 0,
                      op << ": negative size B " << s.B << " H " << s.H << " Tq " << s.Tq << " Tk " << s.Tk);
  CLIPCU_CUDA_REQUIRE(s.D >= 1 && s.D <= kMaxD, op << ": head dim D " << s.D << " outside [1, " << kMaxD << "]");
  CLIPCU_CUDA_REQUIRE(s.Tq == 0 || s.Tk >= 1, op << ": Tk " << s.Tk << " with Tq " << s.Tq << " (no keys to attend)");
  CLIPCU_CUDA_REQUIRE(!s.causal || s.Tq == s.Tk, op << ": causal needs Tq == Tk, got " << s.Tq << " and " << s.Tk);
  // one warp per row in the Simple kernels: the row count / 4 must fit gridDim.x
  CLIPCU_CUDA_REQUIRE(s.B * s.H * std::max(s.Tq, s.Tk) <= (int64_t(1) << 32), op << ": too many rows");
}

// ---------------------------------------------------------------- tensor-core launchers (bf16)
template <int kD>
size_t tc_fwd_smem_bytes(int W) {
  return size_t(16 * W + 2 * kTcKeyTile) * tc_ld<kD>() * sizeof(bf16);
}
template <int kD>
size_t tc_bwd_smem_bytes(int W) {
  constexpr int QT = tc_bwd_qtile<kD>();
  return size_t(2 * 16 * W + 2 * QT) * tc_ld<kD>() * sizeof(bf16) + size_t(16 * W) * (QT + 8) * sizeof(bf16) +
         2 * QT * sizeof(float);
}
template <int kD>
size_t tc_dq_smem_bytes() {
  return size_t(2 * 64 + 2 * tc_dq_ktile<kD>()) * tc_ld<kD>() * sizeof(bf16);
}

// Warps of a block owning up to 128 rows of T (16 rows a warp): a short head is one block.
int tc_warps(int64_t T) { return int(std::clamp<int64_t>((T + 15) / 16, 1, kTcMaxWarps)); }

TcDims tc_dims(const AttentionShape& s, const AttentionArgs<bf16>& a) {
  TcDims d;
  d.BH = s.B * s.H;
  d.Tq = s.Tq;
  d.Tk = s.Tk;
  d.D = int(s.D);
  d.causal = s.causal;
  d.scale = float(1.0 / std::sqrt(double(s.D)));
  d.scale_log2 = float(1.4426950408889634 / std::sqrt(double(s.D)));
  d.vec = s.D % 8 == 0;
  for (const void* p : {(const void*)a.q, (const void*)a.k, (const void*)a.v, (const void*)a.out,
                        (const void*)a.dout, (const void*)a.dq, (const void*)a.dk, (const void*)a.dv})
    if (p && !detail::aligned_to(p, 16)) d.vec = false;
  return d;
}

// Opts a kernel into more than the default 48 KiB of dynamic shared memory when it needs it.
template <class K>
void tc_allow_smem(K kernel, size_t smem) {
  if (smem > 48 * 1024)
    CLIPCU_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
}

void tc_forward(const AttentionShape& s, const AttentionArgs<bf16>& a, cudaStream_t stream) {
  TcDims dm = tc_dims(s, a);
  const int W = tc_warps(s.Tq);
  dm.blocks = (s.Tq + 16 * W - 1) / (16 * W);
  dispatch_head_dim(s.D, [&]<int kD>() {
    const size_t smem = tc_fwd_smem_bytes<kD>(W);
    tc_allow_smem(attn_fwd_tc<kD>, smem);
    attn_fwd_tc<kD><<<unsigned(dm.BH * dm.blocks), unsigned(32 * W), smem, stream>>>(a, dm);
    CLIPCU_CUDA_CHECK_LAUNCH("attn_fwd_tc");
  });
}

// One key block per head (Tk <= 128): a single kernel computes Delta, dK, dV and dQ. Longer
// heads: the key-block kernel (dK, dV), then Delta into the workspace and the dQ kernel.
void tc_backward(const AttentionShape& s, const AttentionArgs<bf16>& a, cudaStream_t stream) {
  TcDims dm = tc_dims(s, a);
  const int W = tc_warps(s.Tk);
  const int64_t kblocks = (s.Tk + 16 * W - 1) / (16 * W);
  const bool want_kv = a.dk || a.dv;
  dispatch_head_dim(s.D, [&]<int kD>() {
    if (want_kv || (kblocks == 1 && a.dq)) {
      TcDims d = dm;
      d.blocks = kblocks;
      d.fuse_dq = kblocks == 1 && a.dq;
      const size_t smem = tc_bwd_smem_bytes<kD>(W);
      tc_allow_smem(attn_bwd_kv_tc<kD>, smem);
      attn_bwd_kv_tc<kD><<<unsigned(d.BH * d.blocks), unsigned(32 * W), smem, stream>>>(a, d);
      CLIPCU_CUDA_CHECK_LAUNCH("attn_bwd_kv_tc");
    }
    if (kblocks > 1 && a.dq) {
      const int64_t qrows = s.B * s.H * s.Tq;
      attn_bwd_delta<bf16><<<unsigned((qrows + 3) / 4), 128, 0, stream>>>(a, qrows, int(s.D));
      CLIPCU_CUDA_CHECK_LAUNCH("attn_bwd_delta");
      TcDims d = dm;
      d.blocks = (s.Tq + 63) / 64;
      const size_t smem = tc_dq_smem_bytes<kD>();
      tc_allow_smem(attn_bwd_dq_tc<kD>, smem);
      attn_bwd_dq_tc<kD><<<unsigned(d.BH * d.blocks), 128, smem, stream>>>(a, d);
      CLIPCU_CUDA_CHECK_LAUNCH("attn_bwd_dq_tc");
    }
  });
}

}  // namespace

size_t attention_backward_workspace_floats(const AttentionShape& s) { return size_t(s.B * s.H * s.Tq); }

template <class T>
void attention_forward(const AttentionShape& s, const AttentionArgs<T>& a, cudaStream_t stream) {
  check_shape(s, "attention_forward");
  CLIPCU_CUDA_REQUIRE(a.q && a.k && a.v && a.out && a.lse, "attention_forward: a pointer is null");
  const int64_t rows = s.B * s.H * s.Tq;
  if (rows == 0) return;
  if constexpr (std::is_same_v<T, bf16>) {
    if (s.kernel == AttentionKernel::TensorCore) return tc_forward(s, a, stream);
  }
  if (s.kernel == AttentionKernel::Simple) {
    const Dims dm = make_dims(s, s.Tq);
    attn_fwd_simple<T><<<unsigned((rows + 3) / 4), 128, 0, stream>>>(a, dm);
    CLIPCU_CUDA_CHECK_LAUNCH("attn_fwd_simple");
    return;
  }
  const Dims dm = make_dims(s, s.Tq);
  dispatch_head_dim(s.D, [&]<int kD>() {
    constexpr size_t smem = fwd_smem_bytes<kD>();
    auto kernel = attn_fwd_tiled<T, kD>;
    if (smem > 48 * 1024)
      CLIPCU_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    kernel<<<unsigned(dm.BH * dm.blocks), tile::kThreads, smem, stream>>>(a, dm);
    CLIPCU_CUDA_CHECK_LAUNCH("attn_fwd_tiled");
  });
}

template <class T>
void attention_backward(const AttentionShape& s, const AttentionArgs<T>& a, cudaStream_t stream) {
  check_shape(s, "attention_backward");
  CLIPCU_CUDA_REQUIRE(a.q && a.k && a.v && a.out && a.lse && a.dout,
                      "attention_backward: an input pointer is null");
  CLIPCU_CUDA_REQUIRE(a.workspace, "attention_backward: no workspace (attention_backward_workspace_floats)");
  const int64_t qrows = s.B * s.H * s.Tq, krows = s.B * s.H * s.Tk;
  if (qrows == 0) return;  // no query: every gradient is zero, nothing to add
  if constexpr (std::is_same_v<T, bf16>) {
    if (s.kernel == AttentionKernel::TensorCore) return tc_backward(s, a, stream);
  }
  attn_bwd_delta<T><<<unsigned((qrows + 3) / 4), 128, 0, stream>>>(a, qrows, int(s.D));
  CLIPCU_CUDA_CHECK_LAUNCH("attn_bwd_delta");
  const bool want_kv = a.dk || a.dv;
  if (s.kernel == AttentionKernel::Simple) {
    const Dims dm = make_dims(s, s.Tq);
    if (a.dq) {
      attn_bwd_dq_simple<T><<<unsigned((qrows + 3) / 4), 128, 0, stream>>>(a, dm);
      CLIPCU_CUDA_CHECK_LAUNCH("attn_bwd_dq_simple");
    }
    if (want_kv) {
      attn_bwd_dkdv_simple<T><<<unsigned((krows + 3) / 4), 128, 0, stream>>>(a, dm);
      CLIPCU_CUDA_CHECK_LAUNCH("attn_bwd_dkdv_simple");
    }
    return;
  }
  dispatch_head_dim(s.D, [&]<int kD>() {
    if (a.dq) {
      const Dims dm = make_dims(s, s.Tq);
      constexpr size_t smem = dq_smem_bytes<kD>();
      auto kernel = attn_bwd_dq_tiled<T, kD>;
      if (smem > 48 * 1024)
        CLIPCU_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
      kernel<<<unsigned(dm.BH * dm.blocks), tile::kThreads, smem, stream>>>(a, dm);
      CLIPCU_CUDA_CHECK_LAUNCH("attn_bwd_dq_tiled");
    }
    if (want_kv) {
      const Dims dm = make_dims(s, s.Tk);
      constexpr size_t smem = dkdv_smem_bytes<kD>();
      auto kernel = attn_bwd_dkdv_tiled<T, kD>;
      if (smem > 48 * 1024)
        CLIPCU_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
      kernel<<<unsigned(dm.BH * dm.blocks), tile::kThreads, smem, stream>>>(a, dm);
      CLIPCU_CUDA_CHECK_LAUNCH("attn_bwd_dkdv_tiled");
    }
  });
}

template void attention_forward<float>(const AttentionShape&, const AttentionArgs<float>&, cudaStream_t);
template void attention_forward<bf16>(const AttentionShape&, const AttentionArgs<bf16>&, cudaStream_t);
template void attention_backward<float>(const AttentionShape&, const AttentionArgs<float>&, cudaStream_t);
template void attention_backward<bf16>(const AttentionShape&, const AttentionArgs<bf16>&, cudaStream_t);

}  // namespace clipcu::cuda
