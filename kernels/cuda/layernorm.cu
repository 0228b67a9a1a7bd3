// CUDA layer norm (+ residual add), bias + activation, column sums; forward and backward
// (see layernorm.cuh for the math and the contract).
//
// Statistics are two-pass (mean, then the centred sum of squares) in float, like the CPU twin's
// float64 two-pass form, which avoids E[x^2] - E[x]^2 cancellation. With a residual, h = x + r
// is rounded to the storage type before the statistics, exactly as an unfused add followed by a
// layer norm would see it.
//
// Warp variant: a block of 256 threads handles 8 rows in the forward, one per warp; lane l holds
// the 4-element vectors l, l + 32, ... of its row in registers (kChunks of them), so the row is
// read once and written once. Backward: a block owns a fixed chunk of rows; each warp walks
// rows warp, warp + 8, ... of the chunk, writes dh and keeps the column partials of dweight /
// dbias for its lane's columns in its own slice of shared memory; at the end the block adds the
// 8 warps' partials per column in warp order and writes its chunk's row of the [chunks, C]
// workspace. A second kernel adds the chunks per column in chunk order.
// Simple variant: one block per row (forward) or per chunk (backward) with block reductions;
// the backward's thread-owned columns accumulate in shared memory.
// Column partial kernel (bias + activation backward, column sums): blocks of 32 columns x 8 row
// phases over one chunk, the 8 phases added in order through shared memory.
//
// Pipelined variant (backward only; its forward is Warp's). Why the Warp backward reaches only a
// third of the bandwidth (0.33x f32, 0.20x bf16 of a copy on an H200): after a row's reductions
// its second loop reads dx[k], writes dx[k], reads dresidual[k], writes it, then reads dx[k + 1];
// the compiler may not move a load above a store through a pointer that can alias it (the PTX
// alternates ld.global / st.global), so every row costs 1 + kChunks dependent DRAM round trips
// (7 for C = 768 in f32) with the warp idle in each. And its pass 2 is ceil(C / 256) = 3 blocks
// whose threads add ~400 chunk partials in a chain, launched once for dweight and once for dbias.
// The Pipelined backward:
//  - a warp takes kRows consecutive rows at once (1-3, so that kRows x kVecs = 3-8 16-byte
//    vectors per lane and stream; a vector is 4 float or 8 bf16) and issues every load of the
//    group (dy, h, the dx it accumulates into, mean, rstd) before it uses any: no global store
//    sits between them, so the group costs one DRAM round trip. The values stay in registers as
//    raw words (bf16 packed, converted on use): 12 registers per vector-row, at most 96;
//  - the group's 2 kRows warp reductions (sum g and sum g (h - mean) per row) run interleaved;
//  - dx is updated in registers and stored as one batch; dresidual next to dx (a separate
//    instantiation) gets a second batch of loads after those stores, the same dh (recomputed
//    with explicitly rounded operations, so the same bits) and a batch of stores;
//  - dweight / dbias: the group's rows are summed in registers, then added (float4) to the warp's
//    slice of shared memory; at the end the 8 warps' slices are added in warp order into the
//    chunk's row of the workspace. Chunks and workspace are Warp's (rows per chunk from N only);
//  - pass 2 (ln_param_reduce): one launch for dweight and dbias, blocks of 32 columns x 32 phases
//    (phase p adds chunks p, p + 32, ... in order; then the 32 phases in order): ~13 independent
//    loads per thread instead of ~400 in a chain.
// ptxas (CUDA 13, sm_90a and sm_80): <= 128 registers (2 blocks of 8 warps per SM) without spills
// for the widths of C = 512 and 768; a few words for bf16 C = 512 and ~110 bytes per thread for
// f32 C > 896 (8 vectors: 96 registers of data).
// Bytes: the backward must read dy, h and dx and write dx, 4 N C sizeof(T) (+ 8 N: mean, rstd),
// what the benchmark's base-copy moves. On top: the chunk partials, 2 C floats per chunk written
// and read back once (N = 12800, C = 768: 400 chunks, 2 x 2.5 MB, +3% over f32's 157 MB, +6%
// over bf16's 79 MB; N = 19712, C = 512: 506 chunks, 2 x 2.1 MB, +2.5% / +5%).
// Loads in flight: a group is 6-9 KB per warp (f32 C = 768: 1 row x 6 vectors x 3 streams x
// 512 B = 9 KB; bf16 C = 768: 2 rows x 3 vectors, 9 KB; bf16 C = 512: 3 rows x 2 vectors, 9 KB;
// f32 C = 512: 6 KB). With 16 warps per SM each loading about 2/3 of the time, an SM keeps
// 60-100 KB in flight, 2-3x the ~30 KB that Little's law asks (4.8 TB/s x ~0.8 us loaded latency
// / 132 SMs). So the main kernel should run at the copy's bandwidth on its 3-6% more bytes, plus
// a tail of about one block's unloaded time (400-506 blocks over 264 resident: the last blocks
// run alone for 2-5 groups of ~1-1.5 us) and pass 2 (~2-3 us with its launch):
//   ViT-B/32 12800 x 768: f32 copy 42.3 us -> ~44 + 5 + 3 = ~52 us (0.8x);
//                         bf16 copy 23.9 us -> ~25.5 + 3 + 3 = ~31.5 us (0.75x);
//   text 19712 x 512:     f32 copy ~43.5 us -> ~44.5 + 6 + 3 = ~54 us (0.8x);
//                         bf16 copy ~24.5 us -> ~25.7 + 3 + 3 = ~32 us (0.77x).
#include "kernels/cuda/layernorm.cuh"

#include <algorithm>
#include <type_traits>

#include "kernels/cuda/common/check.h"
#include "kernels/cuda/common/device.cuh"

namespace clipcu::cuda {

const char* layernorm_kernel_name(LayerNormKernel k) {
  switch (k) {
    case LayerNormKernel::Simple: return "simple";
    case LayerNormKernel::Warp: return "warp";
    case LayerNormKernel::Pipelined: return "pipelined";
  }
  return "?";
}

namespace {

// Fixed chunks of rows for the two-pass column reductions; they depend only on N, so the sums
// are the same bits on every GPU and every run.
constexpr int64_t kMaxChunks = 512;
constexpr int64_t kMinChunkRows = 32;
int64_t chunk_rows(int64_t N) { return std::max(kMinChunkRows, (N + kMaxChunks - 1) / kMaxChunks); }
int64_t num_chunks(int64_t N) { return N <= 0 ? 0 : (N + chunk_rows(N) - 1) / chunk_rows(N); }

constexpr int kVec = 4;             // elements per vector access in the Warp kernels
constexpr int64_t kWarpMaxC = 16 * 32 * kVec;     // forward: 2048 (kChunks <= 16)
constexpr int64_t kWarpBwdMaxC = 8 * 32 * kVec;   // backward: 1024 (it holds dy, xhat and two partials)
constexpr int64_t kSimpleMaxC = 16384;     // shared memory of the Simple backward: 2 C floats
constexpr int64_t kPipeMaxC = kWarpBwdMaxC;  // Pipelined backward: 8 vectors of 4 f32 / 4 of 8 bf16

// ---------------------------------------------------------------- pass 2: chunk partials -> out
// (common/device.cuh's column_chunks_total)
template <class T>
void launch_column_reduce(int64_t chunks, int64_t C, const float* partial, T* out, cudaStream_t stream) {
  column_chunks_total<T><<<ceil_div_u(C, 256), 256, 0, stream>>>(chunks, C, partial, out);
  CLIPCU_CUDA_CHECK_LAUNCH("column_chunks_total");
}

// ---------------------------------------------------------------- layer norm forward
// grid: ceil(N / 8); block: 256 (a warp per row).
template <class T, int kChunks>
__global__ void __launch_bounds__(256) ln_fwd_warp(const LayerNormForwardArgs<T> a) {
  const int64_t row = int64_t(blockIdx.x) * 8 + threadIdx.x / 32;
  if (row >= a.N) return;  // whole warps
  const int lane = int(threadIdx.x) % 32;
  const int64_t C = a.C, base = row * C;
  float v[kChunks][kVec];
  float sum = 0.f;
#pragma unroll
  for (int k = 0; k < kChunks; ++k) {
    const int64_t c = int64_t(lane + 32 * k) * kVec;
    if (c < C) {
      load_vec<kVec>(a.x + base + c, v[k]);
      if (a.residual) {
        float r[kVec];
        load_vec<kVec>(a.residual + base + c, r);
#pragma unroll
        for (int e = 0; e < kVec; ++e) v[k][e] = to_float(from_float<T>(v[k][e] + r[e]));
      }
      if (a.h_out) store_vec<kVec>(a.h_out + base + c, v[k]);
#pragma unroll
      for (int e = 0; e < kVec; ++e) sum += v[k][e];
    } else {
#pragma unroll
      for (int e = 0; e < kVec; ++e) v[k][e] = 0.f;
    }
  }
  const float mean = warp_sum(sum) / float(C);
  float ss = 0.f;
#pragma unroll
  for (int k = 0; k < kChunks; ++k) {
    const int64_t c = int64_t(lane + 32 * k) * kVec;
    if (c < C) {
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        const float d = v[k][e] - mean;
        ss += d * d;
      }
    }
  }
  const float rstd = 1.f / sqrtf(warp_sum(ss) / float(C) + a.eps);
#pragma unroll
  for (int k = 0; k < kChunks; ++k) {
    const int64_t c = int64_t(lane + 32 * k) * kVec;
    if (c >= C) continue;
    float w[kVec] = {1.f, 1.f, 1.f, 1.f}, b[kVec] = {0.f, 0.f, 0.f, 0.f}, y[kVec];
    if (a.weight) load_vec<kVec>(a.weight + c, w);
    if (a.bias) load_vec<kVec>(a.bias + c, b);
#pragma unroll
    for (int e = 0; e < kVec; ++e) y[e] = (v[k][e] - mean) * rstd * w[e] + b[e];
    store_vec<kVec>(a.y + base + c, y);
  }
  if (lane == 0) {
    a.mean[row] = mean;
    a.rstd[row] = rstd;
  }
}

// h(c) of a row: x, or x + residual rounded to T.
template <class T>
__device__ __forceinline__ float ln_input(const LayerNormForwardArgs<T>& a, int64_t idx) {
  float h = to_float(a.x[idx]);
  if (a.residual) h = to_float(from_float<T>(h + to_float(a.residual[idx])));
  return h;
}

// grid: N; block: 256 (a block per row).
template <class T>
__global__ void __launch_bounds__(256) ln_fwd_simple(const LayerNormForwardArgs<T> a) {
  __shared__ float scratch[8];
  const int64_t row = blockIdx.x, C = a.C, base = row * C;
  float sum = 0.f;
  for (int64_t c = threadIdx.x; c < C; c += 256) {
    const float h = ln_input(a, base + c);
    if (a.h_out) a.h_out[base + c] = from_float<T>(h);
    sum += h;
  }
  const float mean = block_sum<8>(sum, scratch) / float(C);
  float ss = 0.f;
  for (int64_t c = threadIdx.x; c < C; c += 256) {
    const float d = ln_input(a, base + c) - mean;
    ss += d * d;
  }
  const float rstd = 1.f / sqrtf(block_sum<8>(ss, scratch) / float(C) + a.eps);
  for (int64_t c = threadIdx.x; c < C; c += 256) {
    float y = (ln_input(a, base + c) - mean) * rstd;
    if (a.weight) y *= to_float(a.weight[c]);
    if (a.bias) y += to_float(a.bias[c]);
    a.y[base + c] = from_float<T>(y);
  }
  if (threadIdx.x == 0) {
    a.mean[row] = mean;
    a.rstd[row] = rstd;
  }
}

// ---------------------------------------------------------------- layer norm backward
// The end of both backward kernels' dweight / dbias work: the 8 warps' column partials (red:
// [8 warps][2][C], dweight then dbias) added per column in warp order (a fixed order) into the
// chunk's rows of the workspace ([2][chunks, C]: dweight rows, then dbias rows). Block of 256.
__device__ __forceinline__ void write_chunk_partials(const float* red, int64_t C, int64_t chunk, int64_t chunks,
                                                     float* workspace) {
  float* part_w = workspace + chunk * C;             // [chunks, C]
  float* part_b = workspace + (chunks + chunk) * C;  // [chunks, C] after part_w
  for (int64_t c = threadIdx.x; c < C; c += 256) {
    float sw = 0.f, sb = 0.f;
#pragma unroll
    for (int wi = 0; wi < 8; ++wi) {
      sw += red[int64_t(wi) * 2 * C + c];
      sb += red[int64_t(wi) * 2 * C + C + c];
    }
    part_w[c] = sw;
    part_b[c] = sb;
  }
}

// grid: chunks; block: 256 (8 warps); dynamic shared memory: 16 C floats when dweight or dbias
// (per warp, its dweight and dbias partials: a lane only ever touches its own columns, so no
// races and no atomics). Keeping the partials out of registers is what lets 2-3 blocks share an
// SM: with them in registers the kernel needed 189 registers and ran one block (8 warps) per SM,
// too few loads in flight to come near the memory bandwidth.
template <class T, int kChunks>
__global__ void __launch_bounds__(256, kChunks > 6 ? 2 : 3) ln_bwd_warp(const LayerNormBackwardArgs<T> a, int64_t rows_per_chunk,
                                                      int64_t chunks) {
  extern __shared__ float red[];  // [8 warps][2][C]: dweight partials, dbias partials
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int64_t C = a.C, chunk = blockIdx.x;
  const int64_t r_begin = chunk * rows_per_chunk, r_end = min64(a.N, r_begin + rows_per_chunk);
  const bool want_params = a.dweight || a.dbias;
  const float inv_c = 1.f / float(C);
  float* const pw = red + int64_t(warp) * 2 * C;  // this warp's [C] dweight partials
  float* const pb = pw + C;                       // and [C] dbias partials
  if (want_params) {
#pragma unroll
    for (int k = 0; k < kChunks; ++k) {
      const int64_t c = int64_t(lane + 32 * k) * kVec;
      if (c < C) {
#pragma unroll
        for (int e = 0; e < kVec; ++e) pw[c + e] = 0.f, pb[c + e] = 0.f;
      }
    }
  }
  for (int64_t row = r_begin + warp; row < r_end; row += 8) {
    const int64_t base = row * C;
    const float mean = a.mean[row], rstd = a.rstd[row];
    float dy[kChunks][kVec], xh[kChunks][kVec];
    float s1 = 0.f, s2 = 0.f;
#pragma unroll
    for (int k = 0; k < kChunks; ++k) {
      const int64_t c = int64_t(lane + 32 * k) * kVec;
      if (c < C) {
        float h[kVec], w[kVec] = {1.f, 1.f, 1.f, 1.f};
        load_vec<kVec>(a.dy + base + c, dy[k]);
        load_vec<kVec>(a.h + base + c, h);
        if (a.weight) load_vec<kVec>(a.weight + c, w);
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          xh[k][e] = (h[e] - mean) * rstd;
          const float g = dy[k][e] * w[e];
          s1 += g;
          s2 += g * xh[k][e];
        }
      } else {
#pragma unroll
        for (int e = 0; e < kVec; ++e) dy[k][e] = 0.f, xh[k][e] = 0.f;
      }
    }
    s1 = warp_sum(s1) * inv_c;
    s2 = warp_sum(s2) * inv_c;
#pragma unroll
    for (int k = 0; k < kChunks; ++k) {
      const int64_t c = int64_t(lane + 32 * k) * kVec;
      if (c >= C) continue;
      float dh[kVec], w[kVec] = {1.f, 1.f, 1.f, 1.f};
      if (a.weight) load_vec<kVec>(a.weight + c, w);
#pragma unroll
      for (int e = 0; e < kVec; ++e) dh[e] = rstd * (dy[k][e] * w[e] - s1 - xh[k][e] * s2);
      if (want_params) {
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          pw[c + e] += dy[k][e] * xh[k][e];
          pb[c + e] += dy[k][e];
        }
      }
      T* const outs[2] = {a.dx, a.dresidual};
#pragma unroll
      for (int o = 0; o < 2; ++o) {
        if (!outs[o]) continue;
        float cur[kVec];
        load_vec<kVec>(outs[o] + base + c, cur);
#pragma unroll
        for (int e = 0; e < kVec; ++e) cur[e] += dh[e];
        store_vec<kVec>(outs[o] + base + c, cur);
      }
    }
  }
  if (!want_params) return;  // uniform over the block
  __syncthreads();
  write_chunk_partials(red, C, chunk, chunks, a.workspace);
}


// ---------------------------------------------------------------- layer norm backward, Pipelined
// (see the file comment). A row group lives in registers as raw 16-byte words (Raw: 4 floats or
// 8 bf16, converted on use; bf16 -> float is a shift). Between the phases, launder() adds an
// opaque zero (a kernel argument, so neither nvcc nor ptxas can fold it) to the words and
// clobbers memory: otherwise the compilers keep the first phase's float conversions, differences
// and weight loads alive across the reductions instead of redoing them (ptxas sees through an
// empty asm), which for bf16 doubled the registers and spilled; redoing them costs a few ALU
// operations and L1 hits per element.
struct Raw {
  uint32_t w[4];
};

template <class T>
__device__ __forceinline__ Raw load_raw(const T* p) {  // 16-byte aligned
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  return Raw{{u.x, u.y, u.z, u.w}};
}
template <class T>
__device__ __forceinline__ void store_raw(T* p, const Raw& r) {
  *reinterpret_cast<uint4*>(p) = make_uint4(r.w[0], r.w[1], r.w[2], r.w[3]);
}
// element e (a compile-time constant after unrolling) as float; element 0 is the lowest address
template <class T>
__device__ __forceinline__ float raw_get(const Raw& r, int e) {
  if constexpr (std::is_same_v<T, float>) {
    return __uint_as_float(r.w[e]);
  } else {
    const uint32_t u = r.w[e / 2];
    return __uint_as_float(e % 2 == 0 ? u << 16 : u & 0xffff0000u);
  }
}
template <class T>
__device__ __forceinline__ void raw_set(Raw& r, int e, float x) {
  if constexpr (std::is_same_v<T, float>) {
    r.w[e] = __float_as_uint(x);
  } else {
    const uint32_t b = __bfloat16_as_ushort(__float2bfloat16_rn(x));  // from_float<bf16>
    uint32_t& u = r.w[e / 2];
    u = e % 2 == 0 ? (u & 0xffff0000u) | b : (u & 0xffffu) | (b << 16);
  }
}
__device__ __forceinline__ void launder(Raw& r, uint32_t zero) {
  asm volatile(
      "add.u32 %0, %0, %4;\n\tadd.u32 %1, %1, %4;\n\tadd.u32 %2, %2, %4;\n\tadd.u32 %3, %3, %4;"
      : "+r"(r.w[0]), "+r"(r.w[1]), "+r"(r.w[2]), "+r"(r.w[3])
      : "r"(zero)
      : "memory");
}

// xhat and dh with explicitly rounded operations (no FMA contraction): the dresidual phase
// recomputes exactly the dh that went into dx.
__device__ __forceinline__ float ln_dh(float dy, float w, float xh, float rstd, float s1, float s2) {
  return __fmul_rn(rstd, __fsub_rn(__fsub_rn(__fmul_rn(dy, w), s1), __fmul_rn(xh, s2)));
}
__device__ __forceinline__ float ln_xhat(float h, float mean, float rstd) {
  return __fmul_rn(__fsub_rn(h, mean), rstd);
}

// Rows a warp takes at once for kVecs 16-byte vectors per lane and row: 3-8 vector-rows in flight.
__host__ __device__ constexpr int pipe_rows(int kVecs) { return kVecs >= 4 ? 1 : kVecs == 3 ? 2 : 3; }

// grid: chunks; block: 256 (8 warps); dynamic shared memory: 16 C floats when dweight or dbias
// ([8 warps][2][C]: each warp's dweight and dbias partials, a lane touching only its own columns).
// Warp w takes rows r_begin + w kRows + 8 kRows i + (0 .. kRows - 1) of its chunk; lane l holds
// the vectors at columns l kW + 32 kW k, k < kVecs. out0 = dx (dresidual when there is no dx) is
// read with dy and h; kBoth: dresidual next to dx, a second batch after dx's stores (a separate
// instantiation, so that its registers do not weigh on the usual single-output kernel).
template <class T, int kVecs, bool kBoth>
__global__ void __launch_bounds__(256, 2) ln_bwd_pipelined(const LayerNormBackwardArgs<T> a, int64_t rows_per_chunk,
                                                           int64_t chunks, uint32_t zero /* 0, see launder */) {
  constexpr int kW = 16 / int(sizeof(T));  // elements per 16-byte vector
  constexpr int kStep = 32 * kW;           // columns between a lane's vectors k and k + 1
  constexpr int kRows = pipe_rows(kVecs);
  extern __shared__ float4 red4[];  // [8 warps][2][C / 4]
  float* const red = reinterpret_cast<float*>(red4);
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int64_t C = a.C, chunk = blockIdx.x;
  const int64_t r_begin = chunk * rows_per_chunk, r_end = min64(a.N, r_begin + rows_per_chunk);
  const bool want_params = a.dweight || a.dbias;
  const float inv_c = 1.f / float(C);
  const int64_t c0 = int64_t(lane) * kW;  // the lane's first column
  float* const pw = red + int64_t(warp) * 2 * C + c0;  // this warp's dweight partials, at c0
  float* const pb = pw + C;                            // and its dbias partials
  T* const out0 = a.dx ? a.dx : a.dresidual;
  T* const out1 = a.dresidual;  // used when kBoth
  auto col_ok = [c0, C](int k) { return c0 + int64_t(kStep) * k < C; };
  if (want_params) {
#pragma unroll
    for (int k = 0; k < kVecs; ++k) {
      if (!col_ok(k)) continue;
#pragma unroll
      for (int e = 0; e < kW; ++e) pw[kStep * k + e] = 0.f, pb[kStep * k + e] = 0.f;
    }
  }
  // the weight of the lane's vector k; ones without weight, zeros past C (dy is zero there)
  auto load_w = [&a, c0, &col_ok](int k, float (&w)[kW]) {
    if (a.weight && col_ok(k)) {
      const Raw r = load_raw(a.weight + c0 + kStep * k);
#pragma unroll
      for (int e = 0; e < kW; ++e) w[e] = raw_get<T>(r, e);
    } else {
#pragma unroll
      for (int e = 0; e < kW; ++e) w[e] = col_ok(k) ? 1.f : 0.f;
    }
  };

  for (int64_t r0 = r_begin + int64_t(warp) * kRows; r0 < r_end; r0 += 8 * kRows) {  // warp-uniform
    // ---- every load of the group first: nothing is stored until they have all been issued
    Raw dyv[kRows][kVecs], hv[kRows][kVecs], ov[kRows][kVecs];
    float mean[kRows], rstd[kRows];
    bool row_ok[kRows];
#pragma unroll
    for (int j = 0; j < kRows; ++j) {
      row_ok[j] = r0 + j < r_end;
      mean[j] = row_ok[j] ? a.mean[r0 + j] : 0.f;
      rstd[j] = row_ok[j] ? a.rstd[r0 + j] : 0.f;
      const int64_t i = (r0 + j) * C + c0;  // the lane's first element of row r0 + j
#pragma unroll
      for (int k = 0; k < kVecs; ++k) {
        if (row_ok[j] && col_ok(k)) {
          dyv[j][k] = load_raw(a.dy + i + kStep * k);
          hv[j][k] = load_raw(a.h + i + kStep * k);
          ov[j][k] = out0 ? load_raw(out0 + i + kStep * k) : Raw{{0u, 0u, 0u, 0u}};
        } else {  // zeros: no contribution to the sums
          dyv[j][k] = hv[j][k] = ov[j][k] = Raw{{0u, 0u, 0u, 0u}};
        }
      }
    }
    // ---- s1 = mean_c(g), s2 = mean_c(g xhat) = rstd mean_c(g (h - mean)) per row, g = dy weight
    float s1[kRows], s2[kRows];
#pragma unroll
    for (int j = 0; j < kRows; ++j) s1[j] = 0.f, s2[j] = 0.f;
#pragma unroll
    for (int k = 0; k < kVecs; ++k) {
      float w[kW];
      load_w(k, w);
#pragma unroll
      for (int j = 0; j < kRows; ++j) {
#pragma unroll
        for (int e = 0; e < kW; ++e) {
          const float g = raw_get<T>(dyv[j][k], e) * w[e];
          s1[j] += g;
          s2[j] += g * (raw_get<T>(hv[j][k], e) - mean[j]);
        }
      }
    }
    // the 2 kRows butterflies interleaved (independent shuffle chains)
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
#pragma unroll
      for (int j = 0; j < kRows; ++j) {
        s1[j] += __shfl_xor_sync(kFullMask, s1[j], o);
        s2[j] += __shfl_xor_sync(kFullMask, s2[j], o);
      }
    }
#pragma unroll
    for (int j = 0; j < kRows; ++j) s1[j] *= inv_c, s2[j] *= inv_c * rstd[j];

    // ---- dh into out0's words; the group's column partials into shared memory
#pragma unroll
    for (int j = 0; j < kRows; ++j)
#pragma unroll
      for (int k = 0; k < kVecs; ++k) launder(dyv[j][k], zero), launder(hv[j][k], zero);
#pragma unroll
    for (int k = 0; k < kVecs; ++k) {
      if (!col_ok(k)) continue;
      float w[kW], sw[kW], sb[kW];
      load_w(k, w);
#pragma unroll
      for (int e = 0; e < kW; ++e) sw[e] = 0.f, sb[e] = 0.f;
#pragma unroll
      for (int j = 0; j < kRows; ++j) {
        if (!row_ok[j]) continue;
#pragma unroll
        for (int e = 0; e < kW; ++e) {
          const float dy = raw_get<T>(dyv[j][k], e);
          const float xh = ln_xhat(raw_get<T>(hv[j][k], e), mean[j], rstd[j]);
          raw_set<T>(ov[j][k], e, raw_get<T>(ov[j][k], e) + ln_dh(dy, w[e], xh, rstd[j], s1[j], s2[j]));
          sw[e] += dy * xh;
          sb[e] += dy;
        }
      }
      if (want_params) {
#pragma unroll
        for (int q = 0; q < kW; q += 4) {  // float4: conflict-free, one access per 4 columns
          float4* const tw = reinterpret_cast<float4*>(pw + kStep * k + q);
          float4* const tb = reinterpret_cast<float4*>(pb + kStep * k + q);
          float4 vw = *tw, vb = *tb;
          vw.x += sw[q], vw.y += sw[q + 1], vw.z += sw[q + 2], vw.w += sw[q + 3];
          vb.x += sb[q], vb.y += sb[q + 1], vb.z += sb[q + 2], vb.w += sb[q + 3];
          *tw = vw, *tb = vb;
        }
      }
    }
    // ---- the group's stores
    if (out0) {
#pragma unroll
      for (int j = 0; j < kRows; ++j)
#pragma unroll
        for (int k = 0; k < kVecs; ++k)
          if (row_ok[j] && col_ok(k)) store_raw(out0 + (r0 + j) * C + c0 + kStep * k, ov[j][k]);
    }
    // ---- dresidual next to dx: a batch of loads, the same dh recomputed, a batch of stores
    if constexpr (kBoth) {
#pragma unroll
      for (int j = 0; j < kRows; ++j)
#pragma unroll
        for (int k = 0; k < kVecs; ++k) {
          launder(dyv[j][k], zero), launder(hv[j][k], zero);
          if (row_ok[j] && col_ok(k)) ov[j][k] = load_raw(out1 + (r0 + j) * C + c0 + kStep * k);
        }
#pragma unroll
      for (int k = 0; k < kVecs; ++k) {
        if (!col_ok(k)) continue;
        float w[kW];
        load_w(k, w);
#pragma unroll
        for (int j = 0; j < kRows; ++j) {
          if (!row_ok[j]) continue;
#pragma unroll
          for (int e = 0; e < kW; ++e) {
            const float xh = ln_xhat(raw_get<T>(hv[j][k], e), mean[j], rstd[j]);
            const float dh = ln_dh(raw_get<T>(dyv[j][k], e), w[e], xh, rstd[j], s1[j], s2[j]);
            raw_set<T>(ov[j][k], e, raw_get<T>(ov[j][k], e) + dh);
          }
          store_raw(out1 + (r0 + j) * C + c0 + kStep * k, ov[j][k]);
        }
      }
    }
  }
  if (!want_params) return;  // uniform over the block
  __syncthreads();
  write_chunk_partials(red, C, chunk, chunks, a.workspace);
}

// Pass 2 of the Pipelined backward, dweight and dbias in one launch: out[c] += sum over chunks of
// partial[chunk, c]; phase p (threadIdx.y) adds chunks p, p + 32, ... in order, then the 32
// phases are added in order. grid: (ceil(C / 32), 2: dweight, dbias); block: (32, 32).
template <class T>
__global__ void __launch_bounds__(1024) ln_param_reduce(int64_t chunks, int64_t C,
                                                        const float* partial,  // [2][chunks, C]
                                                        T* dweight,            // [C] or nullptr
                                                        T* dbias) {            // [C] or nullptr
  __shared__ float red[32][33];
  T* const out = blockIdx.y == 0 ? dweight : dbias;
  if (!out) return;  // uniform over the block
  const int tx = int(threadIdx.x), ty = int(threadIdx.y);
  const int64_t c = int64_t(blockIdx.x) * 32 + tx;
  const float* const p = partial + int64_t(blockIdx.y) * chunks * C;
  float s = 0.f;
  if (c < C) {
#pragma unroll 4
    for (int64_t k = ty; k < chunks; k += 32) s += p[k * C + c];
  }
  red[ty][tx] = s;
  __syncthreads();
  if (ty == 0 && c < C) {
    float t = 0.f;
#pragma unroll
    for (int i = 0; i < 32; ++i) t += red[i][tx];
    accumulate(out + c, t);
  }
}

// grid: chunks; block: 256; dynamic shared memory: 2 C floats (thread-owned column partials).
template <class T>
__global__ void __launch_bounds__(256) ln_bwd_simple(const LayerNormBackwardArgs<T> a, int64_t rows_per_chunk,
                                                     int64_t chunks) {
  extern __shared__ float red[];  // [2][C]
  __shared__ float scratch[8];
  const int64_t C = a.C, chunk = blockIdx.x;
  const int64_t r_begin = chunk * rows_per_chunk, r_end = min64(a.N, r_begin + rows_per_chunk);
  const float inv_c = 1.f / float(C);
  for (int64_t c = threadIdx.x; c < C; c += 256) red[c] = red[C + c] = 0.f;  // own columns only
  for (int64_t row = r_begin; row < r_end; ++row) {
    const int64_t base = row * C;
    const float mean = a.mean[row], rstd = a.rstd[row];
    float s1 = 0.f, s2 = 0.f;
    for (int64_t c = threadIdx.x; c < C; c += 256) {
      const float xh = (to_float(a.h[base + c]) - mean) * rstd;
      const float g = to_float(a.dy[base + c]) * (a.weight ? to_float(a.weight[c]) : 1.f);
      s1 += g;
      s2 += g * xh;
    }
    s1 = block_sum<8>(s1, scratch) * inv_c;
    s2 = block_sum<8>(s2, scratch) * inv_c;
    for (int64_t c = threadIdx.x; c < C; c += 256) {
      const float xh = (to_float(a.h[base + c]) - mean) * rstd;
      const float dy = to_float(a.dy[base + c]);
      const float dh = rstd * (dy * (a.weight ? to_float(a.weight[c]) : 1.f) - s1 - xh * s2);
      if (a.dx) accumulate(a.dx + base + c, dh);
      if (a.dresidual) accumulate(a.dresidual + base + c, dh);
      red[c] += dy * xh;
      red[C + c] += dy;
    }
  }
  if (!(a.dweight || a.dbias)) return;
  for (int64_t c = threadIdx.x; c < C; c += 256) {  // the same thread wrote these columns
    a.workspace[chunk * C + c] = red[c];
    a.workspace[(chunks + chunk) * C + c] = red[C + c];
  }
}

// ---------------------------------------------------------------- bias + activation, column sums
// y = act(x + bias). Grid-stride over N * C.
template <class T, Act A>
__global__ void bias_act_fwd_kernel(int64_t total, int64_t C, const T* x, const T* bias, T* y) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    float z = to_float(x[i]);
    if (bias) z += to_float(bias[i % C]);
    y[i] = from_float<T>(act_forward<A>(z));
  }
}

// Pass 1 of the column sums over one chunk of rows: with kGrad, d = dy * act'(x + bias) is also
// accumulated into dx; without, d = x. partial[chunk, c] = sum of d over the chunk's rows.
// grid: (ceil(C / 32), chunks); block: (32, 8).
template <class T, Act A, bool kGrad>
__global__ void __launch_bounds__(256) column_partial_kernel(int64_t N, int64_t C, const T* x, const T* bias,
                                                             const T* dy, T* dx, float* partial,
                                                             int64_t rows_per_chunk) {
  __shared__ float red[8][33];
  const int tx = int(threadIdx.x), ty = int(threadIdx.y);
  const int64_t c = int64_t(blockIdx.x) * 32 + tx, chunk = blockIdx.y;
  const int64_t r_begin = chunk * rows_per_chunk, r_end = min64(N, r_begin + rows_per_chunk);
  float acc = 0.f;
  if (c < C) {
    const float b = (kGrad && bias) ? to_float(bias[c]) : 0.f;
    for (int64_t r = r_begin + ty; r < r_end; r += 8) {
      const int64_t idx = r * C + c;
      if constexpr (kGrad) {
        const float d = to_float(dy[idx]) * act_backward<A>(to_float(x[idx]) + b);
        if (dx) accumulate(dx + idx, d);
        acc += d;
      } else {
        acc += to_float(x[idx]);
      }
    }
  }
  if (!partial) return;  // uniform: no column sums wanted
  red[ty][tx] = acc;
  __syncthreads();
  if (ty == 0 && c < C) {
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < 8; ++k) s += red[k][tx];
    partial[chunk * C + c] = s;
  }
}

template <class T>
bool warp_path_ok(int64_t C, int64_t max_c, std::initializer_list<const void*> ptrs) {
  if (C % kVec != 0 || C > max_c) return false;
  for (const void* p : ptrs)
    if (p && !detail::aligned_to(p, kVec * sizeof(T))) return false;
  return true;
}

// Calls f.template operator()<kChunks>() with the smallest compiled register width holding C
// (kMax: the widest one compiled for the caller's kernel).
template <int kMax, class F>
void dispatch_chunks(int64_t C, F&& f) {
  // exact widths for CLIP's usual C (384, 768: 3 and 6 vectors per lane), so no lane holds
  // registers for columns that do not exist
  const int64_t need = (C + 32 * kVec - 1) / (32 * kVec);
  if (need <= 1) f.template operator()<1>();
  else if (need <= 2) f.template operator()<2>();
  else if (need <= 3) f.template operator()<3>();
  else if (need <= 4) f.template operator()<4>();
  else if (need <= 6) f.template operator()<6>();
  else if (need <= 8 || kMax <= 8) f.template operator()<8>();
  else if (need <= 12) f.template operator()<(kMax > 8 ? 12 : 8)>();
  else f.template operator()<(kMax > 8 ? 16 : 8)>();
}

// Calls f.template operator()<kVecs>() with the Pipelined backward's smallest compiled width
// holding C (16-byte vectors per lane and row: 32 kW columns each; C <= kPipeMaxC).
template <class T, class F>
void dispatch_pipelined(int64_t C, F&& f) {
  constexpr int64_t kW = 16 / int64_t(sizeof(T));
  const int64_t need = (C + 32 * kW - 1) / (32 * kW);
  if (need <= 1) f.template operator()<1>();
  else if (need <= 2) f.template operator()<2>();
  else if (need <= 3) f.template operator()<3>();
  else if (need <= 4 || kW == 8) f.template operator()<4>();  // bf16: C <= 1024 needs at most 4
  else if constexpr (kW == 4) {
    if (need <= 6) f.template operator()<6>();
    else f.template operator()<8>();
  }
}

template <class T>
bool pipelined_path_ok(const LayerNormBackwardArgs<T>& a) {
  if (a.C % int64_t(16 / sizeof(T)) != 0 || a.C > kPipeMaxC) return false;
  for (const void* p : {static_cast<const void*>(a.dy), static_cast<const void*>(a.h),
                        static_cast<const void*>(a.weight), static_cast<const void*>(a.dx),
                        static_cast<const void*>(a.dresidual)})
    if (p && !detail::aligned_to(p, 16)) return false;
  return true;
}

template <class K>
void allow_smem(K kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    CLIPCU_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

}  // namespace

size_t layernorm_backward_workspace_floats(int64_t N, int64_t C) { return size_t(2 * num_chunks(N) * C); }
size_t column_sum_workspace_floats(int64_t R, int64_t C) { return size_t(num_chunks(R) * C); }

template <class T>
void layernorm_forward(const LayerNormForwardArgs<T>& a, cudaStream_t stream) {
  CLIPCU_CUDA_REQUIRE(a.N >= 0 && a.C >= 1, "layernorm_forward: N " << a.N << " C " << a.C);
  CLIPCU_CUDA_REQUIRE(a.x && a.y && a.mean && a.rstd, "layernorm_forward: a pointer is null");
  CLIPCU_CUDA_REQUIRE(a.N < (int64_t(1) << 31), "layernorm_forward: N " << a.N << " beyond the grid");
  if (a.N == 0) return;
  // Pipelined changes only the backward: its forward is Warp's
  const bool warp = a.kernel != LayerNormKernel::Simple &&
                    warp_path_ok<T>(a.C, kWarpMaxC, {a.x, a.residual, a.h_out, a.weight, a.bias, a.y});
  if (!warp) {
    ln_fwd_simple<T><<<unsigned(a.N), 256, 0, stream>>>(a);
    CLIPCU_CUDA_CHECK_LAUNCH("ln_fwd_simple");
    return;
  }
  dispatch_chunks<16>(a.C, [&]<int kChunks>() {
    ln_fwd_warp<T, kChunks><<<ceil_div_u(a.N, 8), 256, 0, stream>>>(a);
    CLIPCU_CUDA_CHECK_LAUNCH("ln_fwd_warp");
  });
}

template <class T>
LayerNormKernel layernorm_backward_kernel(const LayerNormBackwardArgs<T>& a) {
  if (a.kernel == LayerNormKernel::Pipelined && pipelined_path_ok(a)) return LayerNormKernel::Pipelined;
  if (a.kernel != LayerNormKernel::Simple &&
      warp_path_ok<T>(a.C, kWarpBwdMaxC, {a.dy, a.h, a.weight, a.dx, a.dresidual}))
    return LayerNormKernel::Warp;
  return LayerNormKernel::Simple;
}

template <class T>
void layernorm_backward(const LayerNormBackwardArgs<T>& a, cudaStream_t stream) {
  CLIPCU_CUDA_REQUIRE(a.N >= 0 && a.C >= 1, "layernorm_backward: N " << a.N << " C " << a.C);
  CLIPCU_CUDA_REQUIRE(a.dy && a.h && a.mean && a.rstd, "layernorm_backward: an input pointer is null");
  const bool want_params = a.dweight || a.dbias;
  CLIPCU_CUDA_REQUIRE(!want_params || a.workspace,
                      "layernorm_backward: no workspace (layernorm_backward_workspace_floats)");
  if (a.N == 0) return;
  const int64_t rows = chunk_rows(a.N), chunks = num_chunks(a.N);
  const size_t smem = want_params ? size_t(16 * a.C) * sizeof(float) : 0;  // 8 warps x [2][C]
  const LayerNormKernel kernel_run = layernorm_backward_kernel(a);
  if (kernel_run == LayerNormKernel::Pipelined) {
    dispatch_pipelined<T>(a.C, [&]<int kVecs>() {
      auto kernel = (a.dx && a.dresidual) ? ln_bwd_pipelined<T, kVecs, true> : ln_bwd_pipelined<T, kVecs, false>;
      allow_smem(kernel, smem);
      kernel<<<unsigned(chunks), 256, smem, stream>>>(a, rows, chunks, 0u);
      CLIPCU_CUDA_CHECK_LAUNCH("ln_bwd_pipelined");
    });
    if (want_params) {
      ln_param_reduce<T><<<dim3(ceil_div_u(a.C, 32), 2), dim3(32, 32), 0, stream>>>(chunks, a.C, a.workspace,
                                                                                    a.dweight, a.dbias);
      CLIPCU_CUDA_CHECK_LAUNCH("ln_param_reduce");
    }
    return;
  }
  if (kernel_run == LayerNormKernel::Warp) {
    dispatch_chunks<8>(a.C, [&]<int kChunks>() {
      auto kernel = ln_bwd_warp<T, kChunks>;
      allow_smem(kernel, smem);
      kernel<<<unsigned(chunks), 256, smem, stream>>>(a, rows, chunks);
      CLIPCU_CUDA_CHECK_LAUNCH("ln_bwd_warp");
    });
  } else {
    CLIPCU_CUDA_REQUIRE(a.C <= kSimpleMaxC, "layernorm_backward: C " << a.C << " > " << kSimpleMaxC);
    const size_t simple_smem = size_t(2 * a.C) * sizeof(float);
    auto kernel = ln_bwd_simple<T>;
    allow_smem(kernel, simple_smem);
    kernel<<<unsigned(chunks), 256, simple_smem, stream>>>(a, rows, chunks);
    CLIPCU_CUDA_CHECK_LAUNCH("ln_bwd_simple");
  }
  if (a.dweight) launch_column_reduce(chunks, a.C, a.workspace, a.dweight, stream);
  if (a.dbias) launch_column_reduce(chunks, a.C, a.workspace + chunks * a.C, a.dbias, stream);
}

template <class T>
void bias_act_forward(int64_t N, int64_t C, Act act, const T* x, const T* bias, T* y, cudaStream_t stream) {
  CLIPCU_CUDA_REQUIRE(N >= 0 && C >= 1 && x && y, "bias_act_forward: N " << N << " C " << C << " or a null pointer");
  const int64_t total = N * C;
  if (total == 0) return;
  const unsigned blocks = unsigned(std::min<int64_t>((total + 255) / 256, 65536));
  dispatch_act(act, [&]<Act A>() {
    bias_act_fwd_kernel<T, A><<<blocks, 256, 0, stream>>>(total, C, x, bias, y);
    CLIPCU_CUDA_CHECK_LAUNCH("bias_act_fwd_kernel");
  });
}

template <class T>
void bias_act_backward(int64_t N, int64_t C, Act act, const T* x, const T* bias, const T* dy, T* dx, T* dbias,
                       float* workspace, cudaStream_t stream) {
  CLIPCU_CUDA_REQUIRE(N >= 0 && C >= 1 && x && dy, "bias_act_backward: N " << N << " C " << C << " or a null pointer");
  CLIPCU_CUDA_REQUIRE(!dbias || workspace, "bias_act_backward: no workspace (column_sum_workspace_floats)");
  if (N == 0 || !(dx || dbias)) return;
  const int64_t rows = chunk_rows(N), chunks = num_chunks(N);
  const dim3 grid(ceil_div_u(C, 32), unsigned(chunks)), block(32, 8);
  float* partial = dbias ? workspace : nullptr;
  dispatch_act(act, [&]<Act A>() {
    column_partial_kernel<T, A, true><<<grid, block, 0, stream>>>(N, C, x, bias, dy, dx, partial, rows);
    CLIPCU_CUDA_CHECK_LAUNCH("column_partial_kernel");
  });
  if (dbias) launch_column_reduce(chunks, C, workspace, dbias, stream);
}

template <class T>
void column_sum(int64_t R, int64_t C, const T* x, T* out, float* workspace, cudaStream_t stream) {
  CLIPCU_CUDA_REQUIRE(R >= 0 && C >= 1 && x && out && workspace,
                      "column_sum: R " << R << " C " << C << " or a null pointer / workspace");
  if (R == 0) return;
  const int64_t rows = chunk_rows(R), chunks = num_chunks(R);
  const dim3 grid(ceil_div_u(C, 32), unsigned(chunks)), block(32, 8);
  column_partial_kernel<T, Act::None, false><<<grid, block, 0, stream>>>(R, C, x, nullptr, nullptr, nullptr,
                                                                          workspace, rows);
  CLIPCU_CUDA_CHECK_LAUNCH("column_partial_kernel");
  launch_column_reduce(chunks, C, workspace, out, stream);
}

#define CLIPCU_INSTANTIATE(T)                                                                                    \
  template void layernorm_forward<T>(const LayerNormForwardArgs<T>&, cudaStream_t);                             \
  template void layernorm_backward<T>(const LayerNormBackwardArgs<T>&, cudaStream_t);                           \
  template LayerNormKernel layernorm_backward_kernel<T>(const LayerNormBackwardArgs<T>&);                       \
  template void bias_act_forward<T>(int64_t, int64_t, Act, const T*, const T*, T*, cudaStream_t);               \
  template void bias_act_backward<T>(int64_t, int64_t, Act, const T*, const T*, const T*, T*, T*, float*,       \
                                     cudaStream_t);                                                             \
  template void column_sum<T>(int64_t, int64_t, const T*, T*, float*, cudaStream_t);
CLIPCU_INSTANTIATE(float)
CLIPCU_INSTANTIATE(bf16)
#undef CLIPCU_INSTANTIATE

}  // namespace clipcu::cuda
