// CUDA fused attention, forward and backward (see attention.cuh for the math and the contract).
//
// Tiled (the fast variant). 128-thread blocks seen as 8 row groups x 16 column threads
// (common/tile.cuh); a block tile has 32 rows, a thread owns 4 rows and, of a 32-wide tile, the
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
// Masked or out-of-range scores are -inf in the forward (rows of padding are computed but never
// stored) and give P = 0 in the backward.
#include "kernels/cuda/attention.cuh"

#include <algorithm>
#include <cmath>

#include "kernels/cuda/common/check.h"
#include "kernels/cuda/common/device.cuh"
#include "kernels/cuda/common/tile.cuh"

namespace clipcu::cuda {

const char* attention_kernel_name(AttentionKernel k) {
  switch (k) {
    case AttentionKernel::Simple: return "simple";
    case AttentionKernel::Tiled: return "tiled";
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

}  // namespace

size_t attention_backward_workspace_floats(const AttentionShape& s) { return size_t(s.B * s.H * s.Tq); }

template <class T>
void attention_forward(const AttentionShape& s, const AttentionArgs<T>& a, cudaStream_t stream) {
  check_shape(s, "attention_forward");
  CLIPCU_CUDA_REQUIRE(a.q && a.k && a.v && a.out && a.lse, "attention_forward: a pointer is null");
  const int64_t rows = s.B * s.H * s.Tq;
  if (rows == 0) return;
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
