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
#include "kernels/cuda/layernorm.cuh"

#include <algorithm>

#include "kernels/cuda/common/check.h"
#include "kernels/cuda/common/device.cuh"

namespace clipcu::cuda {

const char* layernorm_kernel_name(LayerNormKernel k) {
  switch (k) {
    case LayerNormKernel::Simple: return "simple";
    case LayerNormKernel::Warp: return "warp";
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

// ---------------------------------------------------------------- pass 2: chunk partials -> out
// out[c] += sum over chunks of partial[chunk, c], in chunk order. grid: ceil(C / 256); block 256.
template <class T>
__global__ void column_reduce(int64_t chunks, int64_t C, const float* partial, T* out) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float s = 0.f;
  for (int64_t k = 0; k < chunks; ++k) s += partial[k * C + c];
  accumulate(out + c, s);
}

template <class T>
void launch_column_reduce(int64_t chunks, int64_t C, const float* partial, T* out, cudaStream_t stream) {
  column_reduce<T><<<ceil_div_u(C, 256), 256, 0, stream>>>(chunks, C, partial, out);
  CLIPCU_CUDA_CHECK_LAUNCH("column_reduce");
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
  // the 8 warps' partials per column, warp 0 first (a fixed order)
  float* part_w = a.workspace + chunk * C;             // [chunks, C]
  float* part_b = a.workspace + (chunks + chunk) * C;  // [chunks, C] after part_w
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
  const bool warp = a.kernel == LayerNormKernel::Warp &&
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
void layernorm_backward(const LayerNormBackwardArgs<T>& a, cudaStream_t stream) {
  CLIPCU_CUDA_REQUIRE(a.N >= 0 && a.C >= 1, "layernorm_backward: N " << a.N << " C " << a.C);
  CLIPCU_CUDA_REQUIRE(a.dy && a.h && a.mean && a.rstd, "layernorm_backward: an input pointer is null");
  const bool want_params = a.dweight || a.dbias;
  CLIPCU_CUDA_REQUIRE(!want_params || a.workspace,
                      "layernorm_backward: no workspace (layernorm_backward_workspace_floats)");
  if (a.N == 0) return;
  const int64_t rows = chunk_rows(a.N), chunks = num_chunks(a.N);
  const bool warp = a.kernel == LayerNormKernel::Warp &&
                    warp_path_ok<T>(a.C, kWarpBwdMaxC, {a.dy, a.h, a.weight, a.dx, a.dresidual});
  const size_t smem = want_params ? size_t(16 * a.C) * sizeof(float) : 0;  // 8 warps x [2][C]
  if (warp) {
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
  template void bias_act_forward<T>(int64_t, int64_t, Act, const T*, const T*, T*, cudaStream_t);               \
  template void bias_act_backward<T>(int64_t, int64_t, Act, const T*, const T*, const T*, T*, T*, float*,       \
                                     cudaStream_t);                                                             \
  template void column_sum<T>(int64_t, int64_t, const T*, T*, float*, cudaStream_t);
CLIPCU_INSTANTIATE(float)
CLIPCU_INSTANTIATE(bf16)
#undef CLIPCU_INSTANTIATE

}  // namespace clipcu::cuda
