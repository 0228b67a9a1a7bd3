// CUDA multi-tensor AdamW and global gradient norm (see adamw.cuh for the math and contract).
//
// Parallelisation: one block of 256 threads per chunk of kAdamWChunk elements of one tensor; the
// block finds its tensor by binary search over chunk_start (the same search in every thread:
// uniform, served from L1), then its threads stride over the chunk (coalesced). Elements are
// independent in the step. The norm's chunk sums are block reductions in double, and the final
// sum is one block adding the chunk sums in a fixed order: the same bits on every run.
// One variant: the step is a memory-bound streaming pass.
#include "kernels/cuda/adamw.cuh"

#include <cmath>

#include "kernels/cuda/common/check.h"
#include "kernels/cuda/common/device.cuh"

namespace clipcu::cuda {

namespace {

constexpr int kThreads = 256;

// The tensor holding chunk c: the last t with chunk_start[t] <= c (skips empty tensors).
__device__ __forceinline__ int find_tensor(const int32_t* chunk_start, int num_tensors, int64_t c) {
  int lo = 0, hi = num_tensors;  // chunk_start[lo] <= c < chunk_start[hi]
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (chunk_start[mid] <= c) lo = mid;
    else hi = mid;
  }
  return lo;
}

template <class G>
__global__ void __launch_bounds__(kThreads)
    grad_sumsq_kernel(int num_tensors, const AdamWTensor* tensors, const int32_t* chunk_start, double* partial) {
  __shared__ double scratch[kThreads / 32];
  const int64_t c = blockIdx.x;
  const int t = find_tensor(chunk_start, num_tensors, c);
  const AdamWTensor& d = tensors[t];
  const int64_t begin = (c - chunk_start[t]) * kAdamWChunk, end = min64(d.n, begin + kAdamWChunk);
  const G* g = static_cast<const G*>(d.grad);
  double acc = 0.0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
    const double v = double(to_float(g[i]));
    acc = fma(v, v, acc);
  }
  const double total = block_sum_d<kThreads / 32>(acc, scratch);
  if (threadIdx.x == 0) partial[c] = total;
}

__global__ void __launch_bounds__(kThreads)
    grad_norm_finalize(int64_t chunks, const double* partial, float max_norm, float* norm_out, float* clip_coef) {
  __shared__ double scratch[kThreads / 32];
  double acc = 0.0;
  for (int64_t c = threadIdx.x; c < chunks; c += kThreads) acc += partial[c];
  const double total = block_sum_d<kThreads / 32>(acc, scratch);
  if (threadIdx.x == 0) {
    const double norm = sqrt(total);
    norm_out[0] = float(norm);
    const bool clip = max_norm >= 0.f && isfinite(norm) && norm > double(max_norm);
    clip_coef[0] = clip ? float(double(max_norm) / (norm + 1e-6)) : 1.f;
  }
}

struct StepConsts {
  float lr, beta1, beta2, eps;
  float step_size;  // lr / (1 - beta1^t)
  float bc2_sqrt;   // sqrt(1 - beta2^t)
};

template <class G>
__global__ void __launch_bounds__(kThreads)
    adamw_kernel(int num_tensors, const AdamWTensor* tensors, const int32_t* chunk_start, const StepConsts k,
                 const float* clip_coef, const float* norm) {
  if (norm && !isfinite(norm[0])) return;  // a non-finite gradient: skip the whole step
  const int64_t c = blockIdx.x;
  const int t = find_tensor(chunk_start, num_tensors, c);
  const AdamWTensor& d = tensors[t];
  const int64_t begin = (c - chunk_start[t]) * kAdamWChunk, end = min64(d.n, begin + kAdamWChunk);
  const G* grad = static_cast<const G*>(d.grad);
  const float coef = clip_coef ? clip_coef[0] : 1.f;
  const float decay = 1.f - k.lr * d.weight_decay;
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
    const float g = to_float(grad[i]) * coef;
    const float m = k.beta1 * d.exp_avg[i] + (1.f - k.beta1) * g;
    const float v = k.beta2 * d.exp_avg_sq[i] + (1.f - k.beta2) * g * g;
    const float p = d.param[i] * decay - k.step_size * m / (sqrtf(v) / k.bc2_sqrt + k.eps);
    d.exp_avg[i] = m;
    d.exp_avg_sq[i] = v;
    d.param[i] = p;
    if (d.param_bf16) d.param_bf16[i] = __float2bfloat16_rn(p);
  }
}

void check_layout(int num_tensors, const AdamWTensor* tensors, const int32_t* chunk_start, int64_t chunks,
                  const char* op) {
  CLIPCU_CUDA_REQUIRE(num_tensors >= 0 && chunks >= 0 && chunks < (int64_t(1) << 31),
                      op << ": " << num_tensors << " tensors, " << chunks << " chunks");
  CLIPCU_CUDA_REQUIRE(chunks == 0 || (tensors && chunk_start), op << ": the tensor list or chunk_start is null");
}

}  // namespace

std::vector<int32_t> adamw_layout(const std::vector<int64_t>& sizes) {
  std::vector<int32_t> start(sizes.size() + 1, 0);
  int64_t total = 0;
  for (size_t t = 0; t < sizes.size(); ++t) {
    CLIPCU_CUDA_REQUIRE(sizes[t] >= 0, "adamw_layout: tensor " << t << " has size " << sizes[t]);
    total += (sizes[t] + kAdamWChunk - 1) / kAdamWChunk;
    CLIPCU_CUDA_REQUIRE(total < (int64_t(1) << 31), "adamw_layout: too many chunks");
    start[t + 1] = int32_t(total);
  }
  return start;
}

template <class G>
void grad_norm(int num_tensors, const AdamWTensor* tensors, const int32_t* chunk_start, int64_t chunks,
               double* partial, float max_norm, float* norm_out, float* clip_coef, cudaStream_t stream) {
  check_layout(num_tensors, tensors, chunk_start, chunks, "grad_norm");
  CLIPCU_CUDA_REQUIRE(norm_out && clip_coef && (chunks == 0 || partial), "grad_norm: an output pointer is null");
  if (chunks > 0) {
    grad_sumsq_kernel<G><<<unsigned(chunks), kThreads, 0, stream>>>(num_tensors, tensors, chunk_start, partial);
    CLIPCU_CUDA_CHECK_LAUNCH("grad_sumsq_kernel");
  }
  grad_norm_finalize<<<1, kThreads, 0, stream>>>(chunks, partial, max_norm, norm_out, clip_coef);
  CLIPCU_CUDA_CHECK_LAUNCH("grad_norm_finalize");
}

template <class G>
void adamw_step(int num_tensors, const AdamWTensor* tensors, const int32_t* chunk_start, int64_t chunks,
                const AdamWHyper& h, const float* clip_coef, const float* norm, cudaStream_t stream) {
  check_layout(num_tensors, tensors, chunk_start, chunks, "adamw_step");
  CLIPCU_CUDA_REQUIRE(h.step >= 1, "adamw_step: step " << h.step << " (counts from 1)");
  if (chunks == 0) return;
  StepConsts k;
  k.lr = float(h.lr);
  k.beta1 = float(h.beta1);
  k.beta2 = float(h.beta2);
  k.eps = float(h.eps);
  // bias corrections in double on the host: 1 - beta^t loses digits in float for small t
  k.step_size = float(h.lr / (1.0 - std::pow(h.beta1, double(h.step))));
  k.bc2_sqrt = float(std::sqrt(1.0 - std::pow(h.beta2, double(h.step))));
  adamw_kernel<G><<<unsigned(chunks), kThreads, 0, stream>>>(num_tensors, tensors, chunk_start, k, clip_coef, norm);
  CLIPCU_CUDA_CHECK_LAUNCH("adamw_kernel");
}

template void grad_norm<float>(int, const AdamWTensor*, const int32_t*, int64_t, double*, float, float*, float*,
                               cudaStream_t);
template void grad_norm<bf16>(int, const AdamWTensor*, const int32_t*, int64_t, double*, float, float*, float*,
                              cudaStream_t);
template void adamw_step<float>(int, const AdamWTensor*, const int32_t*, int64_t, const AdamWHyper&, const float*,
                                const float*, cudaStream_t);
template void adamw_step<bf16>(int, const AdamWTensor*, const int32_t*, int64_t, const AdamWHyper&, const float*,
                               const float*, cudaStream_t);

}  // namespace clipcu::cuda
