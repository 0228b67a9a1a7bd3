// CUDA reductions (see reduce.cuh for the math and the contract).
//
// Parallelisation:
//   sum_all: pass 1 splits the input into G = min(ceil(n / 4096), 1024) contiguous chunks, one
//     block of 256 threads per chunk (each thread strides over the chunk, then a block
//     reduction in warp order) -> G float partials; pass 2 is one block adding the partials the
//     same way. G depends only on n, so the sum repeats bit for bit.
//   mean over a dim: one thread per output (o, i), adding its D inputs in order.
//   l2_normalize and softmax cross entropy: one block of 256 threads per row (block reductions
//     for the norm / max / sum of exponentials); the loss's mean over rows is one block adding
//     the per-row terms in order. Their backwards are pointwise (one thread per element reading
//     its row's saved statistics), except l2_normalize's, which needs the row dot y . gy: one
//     block per row again.
// One variant each: these run on small tensors in the towers (pooled features, logits).
#include "kernels/cuda/reduce.cuh"

#include <algorithm>

#include "kernels/cuda/common/check.h"
#include "kernels/cuda/common/device.cuh"

namespace clipcu::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr float kL2Eps = 1e-12f;

unsigned pointwise_blocks(int64_t n) { return unsigned(std::min<int64_t>((n + kThreads - 1) / kThreads, 65536)); }

int64_t sum_blocks(int64_t n) { return n <= 0 ? 0 : std::min<int64_t>((n + 4095) / 4096, 1024); }

// Max over the block (kThreads threads); every thread gets it. scratch: kWarps floats.
__device__ __forceinline__ float block_max(float v, float* scratch) {
  v = warp_max(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float m = scratch[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) m = fmaxf(m, scratch[w]);
  __syncthreads();
  return m;
}

// grid: G blocks; block b sums x[b * chunk, min((b + 1) * chunk, n)).
template <class T>
__global__ void __launch_bounds__(kThreads) sum_partial_kernel(int64_t n, int64_t chunk, const T* x, float* partial) {
  __shared__ float scratch[kWarps];
  const int64_t begin = int64_t(blockIdx.x) * chunk, end = min64(begin + chunk, n);
  float s = 0.f;
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) s += to_float(x[i]);
  s = block_sum<kWarps>(s, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// one block: out[0] = scale * sum_g partial[g]
template <class T>
__global__ void __launch_bounds__(kThreads) sum_final_kernel(int64_t G, const float* partial, float scale, T* out) {
  __shared__ float scratch[kWarps];
  float s = 0.f;
  for (int64_t g = threadIdx.x; g < G; g += kThreads) s += partial[g];
  s = block_sum<kWarps>(s, scratch);
  if (threadIdx.x == 0) out[0] = from_float<T>(scale * s);
}

template <class T>
__global__ void broadcast_add_kernel(int64_t n, const T* gy, T* gx) {
  const float g = to_float(gy[0]);
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    accumulate(gx + i, g);
}

template <class T>
__global__ void mean_fwd_kernel(int64_t outer, int64_t D, int64_t inner, const T* x, T* y) {
  const int64_t n = outer * inner;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t o = e / inner, i = e % inner;
    const T* p = x + o * D * inner + i;
    float s = 0.f;
    for (int64_t d = 0; d < D; ++d) s += to_float(p[d * inner]);
    y[e] = from_float<T>(s / float(D));
  }
}

template <class T>
__global__ void mean_bwd_kernel(int64_t outer, int64_t D, int64_t inner, const T* gy, T* gx) {
  const int64_t n = outer * D * inner;
  const float inv = 1.f / float(D);
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e % inner, o = e / (D * inner);
    accumulate(gx + e, to_float(gy[o * inner + i]) * inv);
  }
}

// grid: N rows; block 256.
template <class T>
__global__ void __launch_bounds__(kThreads) l2_fwd_kernel(int64_t C, const T* x, T* y, float* norm) {
  __shared__ float scratch[kWarps];
  const T* row = x + int64_t(blockIdx.x) * C;
  float ss = 0.f;
  for (int64_t c = threadIdx.x; c < C; c += kThreads) {
    const float v = to_float(row[c]);
    ss += v * v;
  }
  const float nrm = sqrtf(block_sum<kWarps>(ss, scratch));
  const float inv = 1.f / fmaxf(nrm, kL2Eps);
  T* out = y + int64_t(blockIdx.x) * C;
  for (int64_t c = threadIdx.x; c < C; c += kThreads) out[c] = from_float<T>(to_float(row[c]) * inv);
  if (threadIdx.x == 0) norm[blockIdx.x] = nrm;
}

template <class T>
__global__ void __launch_bounds__(kThreads) l2_bwd_kernel(int64_t C, const T* y, const float* norm, const T* gy, T* gx) {
  __shared__ float scratch[kWarps];
  const int64_t off = int64_t(blockIdx.x) * C;
  const float nrm = norm[blockIdx.x];
  if (nrm > kL2Eps) {
    float dot = 0.f;
    for (int64_t c = threadIdx.x; c < C; c += kThreads) dot += to_float(y[off + c]) * to_float(gy[off + c]);
    dot = block_sum<kWarps>(dot, scratch);
    const float inv = 1.f / nrm;
    for (int64_t c = threadIdx.x; c < C; c += kThreads)
      accumulate(gx + off + c, (to_float(gy[off + c]) - to_float(y[off + c]) * dot) * inv);
  } else {
    // the clamp is constant there: y = x / eps
    for (int64_t c = threadIdx.x; c < C; c += kThreads) accumulate(gx + off + c, to_float(gy[off + c]) / kL2Eps);
  }
}

// grid: N rows; block 256. lse[n] and term[n] = lse - logits[n, target].
template <class T, class I>
__global__ void __launch_bounds__(kThreads)
    xent_row_kernel(int64_t C, const T* logits, const I* targets, float* lse, float* term) {
  __shared__ float scratch[kWarps];
  const int64_t n = blockIdx.x;
  const T* row = logits + n * C;
  float m = -INFINITY;
  for (int64_t c = threadIdx.x; c < C; c += kThreads) m = fmaxf(m, to_float(row[c]));
  m = block_max(m, scratch);
  float s = 0.f;
  for (int64_t c = threadIdx.x; c < C; c += kThreads) s += expf(to_float(row[c]) - m);
  s = block_sum<kWarps>(s, scratch);
  if (threadIdx.x == 0) {
    const float l = m + logf(s);
    const int64_t t = int64_t(targets[n]);
    lse[n] = l;
    term[n] = l - ((t >= 0 && t < C) ? to_float(row[t]) : 0.f);
  }
}

template <class T, class I>
__global__ void xent_bwd_kernel(int64_t N, int64_t C, const T* logits, const I* targets, const float* lse,
                                const T* grad_loss, T* grad_logits) {
  const float g = to_float(grad_loss[0]) / float(N);
  const int64_t total = N * C;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = e / C, c = e % C;
    const float p = expf(to_float(logits[e]) - lse[n]);
    accumulate(grad_logits + e, g * (p - (int64_t(targets[n]) == c ? 1.f : 0.f)));
  }
}

}  // namespace

size_t sum_all_workspace_floats(int64_t n) { return size_t(std::max<int64_t>(sum_blocks(n), 1)); }

template <class T>
void sum_all_forward(int64_t n, const T* x, T* y, float* workspace, cudaStream_t stream) {
  CLIPCU_CUDA_REQUIRE(n >= 0 && y && workspace && (n == 0 || x), "sum_all_forward: n " << n << " or a null pointer");
  const int64_t G = sum_blocks(n);
  if (G > 0) {
    const int64_t chunk = (n + G - 1) / G;
    sum_partial_kernel<T><<<unsigned(G), kThreads, 0, stream>>>(n, chunk, x, workspace);
    CLIPCU_CUDA_CHECK_LAUNCH("sum_partial_kernel");
  }
  sum_final_kernel<T><<<1, kThreads, 0, stream>>>(G, workspace, 1.f, y);
  CLIPCU_CUDA_CHECK_LAUNCH("sum_final_kernel");
}

template <class T>
void sum_all_backward(int64_t n, const T* gy, T* gx, cudaStream_t stream) {
  CLIPCU_CUDA_REQUIRE(n >= 0 && gy && (n == 0 || gx), "sum_all_backward: n " << n << " or a null pointer");
  if (n == 0) return;
  broadcast_add_kernel<T><<<pointwise_blocks(n), kThreads, 0, stream>>>(n, gy, gx);
  CLIPCU_CUDA_CHECK_LAUNCH("broadcast_add_kernel");
}

template <class T>
void mean_forward(int64_t outer, int64_t D, int64_t inner, const T* x, T* y, cudaStream_t stream) {
  CLIPCU_CUDA_REQUIRE(outer >= 0 && D >= 1 && inner >= 0, "mean_forward: outer " << outer << " D " << D << " inner "
                                                                                   << inner);
  const int64_t n = outer * inner;
  if (n == 0) return;
  CLIPCU_CUDA_REQUIRE(x && y, "mean_forward: a pointer is null");
  mean_fwd_kernel<T><<<pointwise_blocks(n), kThreads, 0, stream>>>(outer, D, inner, x, y);
  CLIPCU_CUDA_CHECK_LAUNCH("mean_fwd_kernel");
}

template <class T>
void mean_backward(int64_t outer, int64_t D, int64_t inner, const T* gy, T* gx, cudaStream_t stream) {
  CLIPCU_CUDA_REQUIRE(outer >= 0 && D >= 1 && inner >= 0, "mean_backward: outer " << outer << " D " << D << " inner "
                                                                                    << inner);
  const int64_t n = outer * D * inner;
  if (n == 0) return;
  CLIPCU_CUDA_REQUIRE(gy && gx, "mean_backward: a pointer is null");
  mean_bwd_kernel<T><<<pointwise_blocks(n), kThreads, 0, stream>>>(outer, D, inner, gy, gx);
  CLIPCU_CUDA_CHECK_LAUNCH("mean_bwd_kernel");
}

template <class T>
void l2_normalize_forward(int64_t N, int64_t C, const T* x, T* y, float* norm, cudaStream_t stream) {
  CLIPCU_CUDA_REQUIRE(N >= 0 && N < (int64_t(1) << 31) && C >= 0, "l2_normalize_forward: N " << N << " C " << C);
  if (N == 0) return;
  CLIPCU_CUDA_REQUIRE(x && y && norm, "l2_normalize_forward: a pointer is null");
  l2_fwd_kernel<T><<<unsigned(N), kThreads, 0, stream>>>(C, x, y, norm);
  CLIPCU_CUDA_CHECK_LAUNCH("l2_fwd_kernel");
}

template <class T>
void l2_normalize_backward(int64_t N, int64_t C, const T* y, const float* norm, const T* gy, T* gx,
                           cudaStream_t stream) {
  CLIPCU_CUDA_REQUIRE(N >= 0 && N < (int64_t(1) << 31) && C >= 0, "l2_normalize_backward: N " << N << " C " << C);
  if (N == 0 || C == 0) return;
  CLIPCU_CUDA_REQUIRE(y && norm && gy && gx, "l2_normalize_backward: a pointer is null");
  l2_bwd_kernel<T><<<unsigned(N), kThreads, 0, stream>>>(C, y, norm, gy, gx);
  CLIPCU_CUDA_CHECK_LAUNCH("l2_bwd_kernel");
}

template <class T, class I>
void softmax_xent_forward(int64_t N, int64_t C, const T* logits, const I* targets, float* lse, T* loss,
                          float* workspace, cudaStream_t stream) {
  CLIPCU_CUDA_REQUIRE(N >= 1 && N < (int64_t(1) << 31) && C >= 1, "softmax_xent_forward: N " << N << " C " << C);
  CLIPCU_CUDA_REQUIRE(logits && targets && lse && loss && workspace, "softmax_xent_forward: a pointer is null");
  xent_row_kernel<T, I><<<unsigned(N), kThreads, 0, stream>>>(C, logits, targets, lse, workspace);
  CLIPCU_CUDA_CHECK_LAUNCH("xent_row_kernel");
  sum_final_kernel<T><<<1, kThreads, 0, stream>>>(N, workspace, 1.f / float(N), loss);
  CLIPCU_CUDA_CHECK_LAUNCH("sum_final_kernel");
}

template <class T, class I>
void softmax_xent_backward(int64_t N, int64_t C, const T* logits, const I* targets, const float* lse,
                           const T* grad_loss, T* grad_logits, cudaStream_t stream) {
  CLIPCU_CUDA_REQUIRE(N >= 1 && C >= 1, "softmax_xent_backward: N " << N << " C " << C);
  CLIPCU_CUDA_REQUIRE(logits && targets && lse && grad_loss && grad_logits, "softmax_xent_backward: a pointer is null");
  xent_bwd_kernel<T, I><<<pointwise_blocks(N * C), kThreads, 0, stream>>>(N, C, logits, targets, lse, grad_loss,
                                                                          grad_logits);
  CLIPCU_CUDA_CHECK_LAUNCH("xent_bwd_kernel");
}

#define CLIPCU_INSTANTIATE(T)                                                                                   \
  template void sum_all_forward<T>(int64_t, const T*, T*, float*, cudaStream_t);                               \
  template void sum_all_backward<T>(int64_t, const T*, T*, cudaStream_t);                                      \
  template void mean_forward<T>(int64_t, int64_t, int64_t, const T*, T*, cudaStream_t);                        \
  template void mean_backward<T>(int64_t, int64_t, int64_t, const T*, T*, cudaStream_t);                       \
  template void l2_normalize_forward<T>(int64_t, int64_t, const T*, T*, float*, cudaStream_t);                 \
  template void l2_normalize_backward<T>(int64_t, int64_t, const T*, const float*, const T*, T*, cudaStream_t); \
  template void softmax_xent_forward<T, int32_t>(int64_t, int64_t, const T*, const int32_t*, float*, T*,       \
                                                 float*, cudaStream_t);                                        \
  template void softmax_xent_forward<T, int64_t>(int64_t, int64_t, const T*, const int64_t*, float*, T*,       \
                                                 float*, cudaStream_t);                                        \
  template void softmax_xent_backward<T, int32_t>(int64_t, int64_t, const T*, const int32_t*, const float*,    \
                                                  const T*, T*, cudaStream_t);                                 \
  template void softmax_xent_backward<T, int64_t>(int64_t, int64_t, const T*, const int64_t*, const float*,    \
                                                  const T*, T*, cudaStream_t);
CLIPCU_INSTANTIATE(float)
CLIPCU_INSTANTIATE(bf16)
#undef CLIPCU_INSTANTIATE

}  // namespace clipcu::cuda
