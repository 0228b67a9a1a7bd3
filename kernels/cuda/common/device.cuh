// Device-side helpers of the CUDA kernels: float <-> storage conversions, vectorized loads and
// stores, activations, warp and block reductions. Include from .cu files only.
//
// Reductions are deterministic: the butterfly (xor) shuffle adds the same pairs in the same order
// on every run, and every lane ends with the bitwise same sum (float addition is commutative);
// block reductions add the per-warp results in warp order.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/common/types.h"

namespace clipcu::cuda {

// ---------------------------------------------------------------- conversions
template <class T> __device__ __forceinline__ float to_float(T x);
template <> __device__ __forceinline__ float to_float<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_float<bf16>(bf16 x) { return __bfloat162float(x); }

template <class T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_float<bf16>(float x) { return __float2bfloat16_rn(x); }

// ---------------------------------------------------------------- vector loads and stores
// N elements of T in one aligned access (4, 8 or 16 bytes). The address must be a multiple of
// sizeof(T) * N: launchers check the base pointers and the row lengths before choosing a
// vectorized path.
template <class T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

// Loads N consecutive elements as floats.
template <int N, class T>
__device__ __forceinline__ void load_vec(const T* p, float (&out)[N]) {
  const Vec<T, N> x = *reinterpret_cast<const Vec<T, N>*>(p);
#pragma unroll
  for (int i = 0; i < N; ++i) out[i] = to_float(x.v[i]);
}

// Stores N floats as N consecutive elements of T.
template <int N, class T>
__device__ __forceinline__ void store_vec(T* p, const float (&in)[N]) {
  Vec<T, N> x;
#pragma unroll
  for (int i = 0; i < N; ++i) x.v[i] = from_float<T>(in[i]);
  *reinterpret_cast<Vec<T, N>*>(p) = x;
}

// p[i] += v in the storage type, computed in float (the gradient contract's accumulate).
template <class T>
__device__ __forceinline__ void accumulate(T* p, float v) {
  *p = from_float<T>(to_float(*p) + v);
}

// ---------------------------------------------------------------- activations
template <Act A>
__device__ __forceinline__ float act_forward(float x) {
  if constexpr (A == Act::None) {
    return x;
  } else if constexpr (A == Act::ReLU) {
    return x > 0.f ? x : 0.f;
  } else if constexpr (A == Act::QuickGELU) {
    return x / (1.f + expf(-1.702f * x));
  } else if constexpr (A == Act::GELU) {
    // 1 + erf(t) = erfc(-t): no cancellation in the negative tail, where 1 + erf loses all digits
    return 0.5f * x * erfcf(-x * 0.70710678118654752f);
  } else {
    // 0.5 x (1 + tanh(u)) = x sigmoid(2 u): no cancellation in the negative tail (as on the CPU)
    const float u = 0.79788456080286536f * (x + 0.044715f * x * x * x);
    return x / (1.f + expf(-2.f * u));
  }
}

// d act / dx at x.
template <Act A>
__device__ __forceinline__ float act_backward(float x) {
  if constexpr (A == Act::None) {
    return 1.f;
  } else if constexpr (A == Act::ReLU) {
    return x > 0.f ? 1.f : 0.f;
  } else if constexpr (A == Act::QuickGELU) {
    const float s = 1.f / (1.f + expf(-1.702f * x));
    return s + 1.702f * x * s * (1.f - s);
  } else if constexpr (A == Act::GELU) {
    const float cdf = 0.5f * erfcf(-x * 0.70710678118654752f);
    const float pdf = 0.39894228040143268f * expf(-0.5f * x * x);
    return cdf + x * pdf;
  } else {
    const float k = 0.79788456080286536f;
    const float u = k * (x + 0.044715f * x * x * x);
    const float s = 1.f / (1.f + expf(-2.f * u));  // (1 + tanh(u)) / 2
    return s + 2.f * x * s * (1.f - s) * k * (1.f + 3.f * 0.044715f * x * x);
  }
}

// Calls f.template operator()<A>() with the activation as a compile-time constant (the one
// switch helper that turns the run-time flag into a template parameter).
template <class F>
__host__ __forceinline__ void dispatch_act(Act a, F&& f) {
  switch (a) {
    case Act::None: f.template operator()<Act::None>(); break;
    case Act::ReLU: f.template operator()<Act::ReLU>(); break;
    case Act::QuickGELU: f.template operator()<Act::QuickGELU>(); break;
    case Act::GELU: f.template operator()<Act::GELU>(); break;
    case Act::GELUTanh: f.template operator()<Act::GELUTanh>(); break;
  }
}

// ---------------------------------------------------------------- reductions
// Pass 2 of the deterministic two-pass column sums (layer norm's dweight / dbias, the broadcast
// operand's gradient, column_sum): out[c] += sum over chunks k, in order, of partial[k, c].
// grid: ceil(C / 256); block: 256.
template <class T>
__global__ void column_chunks_total(int64_t chunks, int64_t C, const float* partial,  // [chunks, C]
                                    T* out) {                                         // [C]
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float s = 0.f;
  for (int64_t k = 0; k < chunks; ++k) s += partial[k * C + c];
  accumulate(out + c, s);
}

constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}
// Over the 16 lanes of a half warp (lanes 0-15 and 16-31 reduce separately).
__device__ __forceinline__ float half_warp_sum(float v) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}
__device__ __forceinline__ float half_warp_max(float v) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

// Sum over all threads of the block; every thread gets the result. scratch holds kWarps floats
// (blockDim.x == 32 * kWarps, 1-D blocks). Ends with a barrier, so scratch may be reused at once.
template <int kWarps>
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  v = warp_sum(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0.f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) total += scratch[w];
  __syncthreads();
  return total;
}

// The same in double (final reductions of norms and losses).
__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}
template <int kWarps>
__device__ __forceinline__ double block_sum_d(double v, double* scratch) {
  v = warp_sum_d(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  double total = 0.0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) total += scratch[w];
  __syncthreads();
  return total;
}

__host__ __device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
__host__ __device__ __forceinline__ int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// Grid sizes: a 64-bit count split into blocks, checked against the 2^31 - 1 limit of gridDim.x.
__host__ inline unsigned ceil_div_u(int64_t n, int64_t d) { return unsigned((n + d - 1) / d); }

}  // namespace clipcu::cuda
