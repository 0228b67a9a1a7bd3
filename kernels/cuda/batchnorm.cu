// CUDA batch normalization (NCHW, optional fused ReLU) and average pooling; the math is in
// batchnorm.cuh.
//
// Batch norm forward, training: three passes over x. (1) grid (S, C): block (s, c) sums channel
// c over its fixed chunk s of images in double and writes one partial; (2) the same grid sums
// (x - mean)^2 with mean from pass 1's partials (two passes, not E[x^2] - mean^2: no cancellation
// when |mean| >> std); a finalize kernel (a thread per channel) turns the partials into mean,
// rstd, the running-stat update and a per-channel scale; (3) an elementwise pass
// y = (x - mean) scale + bias (ReLU fused). Inference: finalize from the running stats, then (3).
// Backward: one reduction pass (sum g, sum g (x - mean), g masked by y > 0 under ReLU) with the
// same (S, C) chunking, a finalize for dweight / dbias and the coefficients, and an elementwise
// pass dx += a (g - b - (x - mean) d). S depends only on N and C, so every sum has a fixed order.
// Average pooling: a thread per output (forward) or input element (backward), grid-stride.
#include "kernels/cuda/batchnorm.cuh"

#include <algorithm>

#include "kernels/cuda/common/check.h"
#include "kernels/cuda/common/device.cuh"

namespace clipcu::cuda {

namespace {

constexpr int kThreads = 256;

// Image chunks per channel: enough blocks for about four waves of 132 SMs, at most one per image.
int64_t chunks(int64_t N, int64_t C) { return std::max<int64_t>(1, std::min<int64_t>(N, (528 + C - 1) / C)); }

struct Workspace {
  double* part1;  // [C, S]
  double* part2;  // [C, S]
  float* coef;    // [3, C]
};
Workspace carve(void* ws, int64_t N, int64_t C) {
  const int64_t S = chunks(N, C);
  Workspace w;
  w.part1 = static_cast<double*>(ws);
  w.part2 = w.part1 + C * S;
  w.coef = reinterpret_cast<float*>(w.part2 + C * S);
  return w;
}

unsigned grid_for(int64_t total) {
  return unsigned(std::max<int64_t>(1, std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t(1) << 20)));
}

// Block (s, c): part[c * S + s] = sum over images [s N / S, (s + 1) N / S) of channel c of
// (x - shift) (kSquare: (x - shift)^2), shift = sum_s mean_parts[c * S + s] / M or 0.
template <class T, bool kSquare>
__global__ void __launch_bounds__(kThreads) bn_sum_kernel(int64_t N, int64_t C, int64_t HW, int64_t S,
                                                          const T* x,                 // [N, C, HW]
                                                          const double* mean_parts,   // [C, S] or nullptr
                                                          double* part) {             // [C, S]
  __shared__ double scratch[kThreads / 32];
  const int64_t s = blockIdx.x, c = blockIdx.y;
  double shift = 0.0;
  if (mean_parts) {
    for (int64_t i = 0; i < S; ++i) shift += mean_parts[c * S + i];
    shift /= double(N * HW);
  }
  const int64_t n0 = s * N / S, n1 = (s + 1) * N / S;
  const int64_t begin = n0 * HW, end = n1 * HW;
  double acc = 0.0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
    const int64_t n = i / HW, q = i - n * HW;
    const double v = double(to_float(x[(n * C + c) * HW + q])) - shift;
    acc += kSquare ? v * v : v;
  }
  acc = block_sum_d<kThreads / 32>(acc, scratch);
  if (threadIdx.x == 0) part[c * S + s] = acc;
}

// A thread per channel: statistics, running update, scale and bias (coef[0..C), coef[C..2C)).
template <class P>
__global__ void bn_finalize_kernel(int64_t C, int64_t S, int64_t M, bool training, float eps, float momentum,
                                   const double* part1,  // [C, S]
                                   const double* part2,  // [C, S]
                                   const P* weight, const P* bias,  // [C] or nullptr
                                   P* running_mean, P* running_var,  // [C] or nullptr
                                   float* save_mean, float* save_rstd,  // [C]
                                   float* coef) {                      // [3, C]
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double mean, var;
  if (training) {
    double s1 = 0.0, s2 = 0.0;
    for (int64_t i = 0; i < S; ++i) s1 += part1[c * S + i];
    for (int64_t i = 0; i < S; ++i) s2 += part2[c * S + i];
    mean = s1 / double(M);
    var = s2 / double(M);
    if (running_mean) {
      const double unbiased = M > 1 ? var * double(M) / double(M - 1) : var;
      running_mean[c] = from_float<P>(float((1.0 - momentum) * double(to_float(running_mean[c])) + momentum * mean));
      running_var[c] = from_float<P>(float((1.0 - momentum) * double(to_float(running_var[c])) + momentum * unbiased));
    }
  } else {
    mean = double(to_float(running_mean[c]));
    var = double(to_float(running_var[c]));
  }
  const double rstd = 1.0 / sqrt(var + double(eps));
  save_mean[c] = float(mean);
  save_rstd[c] = float(rstd);
  const double w = weight ? double(to_float(weight[c])) : 1.0, b = bias ? double(to_float(bias[c])) : 0.0;
  coef[c] = float(w * rstd);
  coef[C + c] = float(b);
}

// y = (x - mean) scale + bias: centring first keeps y accurate when |mean| >> std (the folded
// x scale + (bias - mean scale) would cancel).
template <class T, bool kRelu>
__global__ void bn_apply_kernel(int64_t total, int64_t C, int64_t HW,
                                const T* x,         // [N, C, HW]
                                const float* mean,  // [C]
                                const float* coef,  // [3, C]: scale, bias
                                T* y) {             // [N, C, HW]
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = (i / HW) % C;
    float v = (to_float(x[i]) - mean[c]) * coef[c] + coef[C + c];
    if (kRelu) v = v > 0.f ? v : 0.f;
    y[i] = from_float<T>(v);
  }
}

// Block (s, c): part1 = sum g, part2 = sum g (x - mean) over chunk s of channel c.
template <class T, bool kRelu>
__global__ void __launch_bounds__(kThreads) bn_bwd_sum_kernel(int64_t N, int64_t C, int64_t HW, int64_t S,
                                                              const T* x,       // [N, C, HW]
                                                              const T* y,       // [N, C, HW] (kRelu)
                                                              const T* dy,      // [N, C, HW]
                                                              const float* mean,  // [C]
                                                              double* part1,    // [C, S]
                                                              double* part2) {  // [C, S]
  __shared__ double scratch[kThreads / 32];
  const int64_t s = blockIdx.x, c = blockIdx.y;
  const double mu = double(mean[c]);
  const int64_t n0 = s * N / S, n1 = (s + 1) * N / S;
  double a1 = 0.0, a2 = 0.0;
  for (int64_t i = n0 * HW + threadIdx.x; i < n1 * HW; i += kThreads) {
    const int64_t n = i / HW, q = i - n * HW;
    const int64_t idx = (n * C + c) * HW + q;
    double gv = double(to_float(dy[idx]));
    if (kRelu && !(to_float(y[idx]) > 0.f)) gv = 0.0;
    a1 += gv;
    a2 += gv * (double(to_float(x[idx])) - mu);
  }
  a1 = block_sum_d<kThreads / 32>(a1, scratch);
  a2 = block_sum_d<kThreads / 32>(a2, scratch);
  if (threadIdx.x == 0) {
    part1[c * S + s] = a1;
    part2[c * S + s] = a2;
  }
}

// A thread per channel: dweight, dbias, and dx's coefficients a, b, d (coef[0..3C)).
template <class P>
__global__ void bn_bwd_finalize_kernel(int64_t C, int64_t S, int64_t M, bool training,
                                       const double* part1, const double* part2,  // [C, S]
                                       const P* weight,                          // [C] or nullptr
                                       const float* rstd,                        // [C]
                                       P* dweight, P* dbias,                     // [C] or nullptr (+=)
                                       float* coef) {                            // [3, C]
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double sg = 0.0, sgx = 0.0;
  for (int64_t i = 0; i < S; ++i) sg += part1[c * S + i];
  for (int64_t i = 0; i < S; ++i) sgx += part2[c * S + i];
  const double r = double(rstd[c]);
  if (dbias) dbias[c] = from_float<P>(float(double(to_float(dbias[c])) + sg));
  if (dweight) dweight[c] = from_float<P>(float(double(to_float(dweight[c])) + sgx * r));
  const double w = weight ? double(to_float(weight[c])) : 1.0;
  coef[c] = float(w * r);
  coef[C + c] = training ? float(sg / double(M)) : 0.f;
  coef[2 * C + c] = training ? float(r * r * sgx / double(M)) : 0.f;
}

template <class T, bool kRelu>
__global__ void bn_bwd_apply_kernel(int64_t total, int64_t C, int64_t HW,
                                    const T* x,          // [N, C, HW]
                                    const T* y,          // [N, C, HW] (kRelu)
                                    const T* dy,         // [N, C, HW]
                                    const float* mean,   // [C]
                                    const float* coef,   // [3, C]
                                    T* dx) {             // [N, C, HW] (accumulated)
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = (i / HW) % C;
    float gv = to_float(dy[i]);
    if (kRelu && !(to_float(y[i]) > 0.f)) gv = 0.f;
    accumulate(dx + i, coef[c] * (gv - coef[C + c] - (to_float(x[i]) - mean[c]) * coef[2 * C + c]));
  }
}

template <class T>
__global__ void avgpool_fwd_kernel(int64_t total, int64_t H, int64_t W, int64_t k,
                                   const T* x,  // [NC, H, W]
                                   T* y) {      // [NC, H/k, W/k]
  const int64_t OH = H / k, OW = W / k;
  const float inv = 1.f / float(k * k);
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t ow = i % OW, oh = (i / OW) % OH, nc = i / (OW * OH);
    const T* src = x + (nc * H + oh * k) * W + ow * k;
    float s = 0.f;
    for (int64_t a = 0; a < k; ++a)
      for (int64_t b = 0; b < k; ++b) s += to_float(src[a * W + b]);
    y[i] = from_float<T>(s * inv);
  }
}

template <class T>
__global__ void avgpool_bwd_kernel(int64_t total, int64_t H, int64_t W, int64_t k,
                                   const T* dy,  // [NC, H/k, W/k]
                                   T* dx) {      // [NC, H, W] (accumulated)
  const int64_t OH = H / k, OW = W / k;
  const float inv = 1.f / float(k * k);
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t iw = i % W, ih = (i / W) % H, nc = i / (W * H);
    const int64_t oh = ih / k, ow = iw / k;
    if (oh >= OH || ow >= OW) continue;  // dropped rows / columns: no gradient
    accumulate(dx + i, to_float(dy[(nc * OH + oh) * OW + ow]) * inv);
  }
}

template <class T, class P>
void check_args(const BatchNormArgs<T, P>& a, const char* what) {
  CLIPCU_CUDA_REQUIRE(a.N >= 0 && a.C > 0 && a.HW > 0,
                      what << ": sizes N " << a.N << " C " << a.C << " HW " << a.HW << " (need N >= 0, C, HW > 0)");
  CLIPCU_CUDA_REQUIRE(a.x && a.mean && a.rstd, what << ": x, mean and rstd are required");
  CLIPCU_CUDA_REQUIRE(a.workspace && detail::aligned_to(a.workspace, 16), what << ": workspace (16-byte aligned) is required");
  CLIPCU_CUDA_REQUIRE((a.running_mean == nullptr) == (a.running_var == nullptr),
                      what << ": give both running_mean and running_var, or neither");
}

}  // namespace

size_t batchnorm2d_workspace_bytes(int64_t N, int64_t C) {
  const int64_t S = chunks(N, C);
  return size_t(2 * C * S) * sizeof(double) + size_t(3 * C) * sizeof(float);
}

template <class T, class P>
void batchnorm2d_forward(const BatchNormArgs<T, P>& a, cudaStream_t stream) {
  check_args(a, "batchnorm2d_forward");
  CLIPCU_CUDA_REQUIRE(a.y, "batchnorm2d_forward: y is required");
  CLIPCU_CUDA_REQUIRE(a.training || a.running_mean, "batchnorm2d_forward: inference needs the running statistics");
  CLIPCU_CUDA_REQUIRE(!a.training || a.N * a.HW > 1,
                      "batchnorm2d_forward: training needs more than one value per channel (N " << a.N << ", HW "
                                                                                                 << a.HW << ")");
  const int64_t S = chunks(a.N, a.C), M = a.N * a.HW;
  const Workspace w = carve(a.workspace, a.N, a.C);
  if (a.training) {
    const dim3 grid(unsigned(S), unsigned(a.C));
    CLIPCU_CUDA_REQUIRE(a.C <= 65535, "batchnorm2d_forward: C " << a.C << " > 65535");
    bn_sum_kernel<T, false><<<grid, kThreads, 0, stream>>>(a.N, a.C, a.HW, S, a.x, nullptr, w.part1);
    CLIPCU_CUDA_CHECK_LAUNCH("bn_sum_kernel");
    bn_sum_kernel<T, true><<<grid, kThreads, 0, stream>>>(a.N, a.C, a.HW, S, a.x, w.part1, w.part2);
    CLIPCU_CUDA_CHECK_LAUNCH("bn_sum_kernel (square)");
  }
  bn_finalize_kernel<P><<<unsigned((a.C + 127) / 128), 128, 0, stream>>>(
      a.C, S, M, a.training, a.eps, a.momentum, w.part1, w.part2, a.weight, a.bias, a.running_mean, a.running_var,
      a.mean, a.rstd, w.coef);
  CLIPCU_CUDA_CHECK_LAUNCH("bn_finalize_kernel");
  const int64_t total = a.N * a.C * a.HW;
  if (total == 0) return;
  if (a.relu) {
    bn_apply_kernel<T, true><<<grid_for(total), kThreads, 0, stream>>>(total, a.C, a.HW, a.x, a.mean, w.coef, a.y);
  } else {
    bn_apply_kernel<T, false><<<grid_for(total), kThreads, 0, stream>>>(total, a.C, a.HW, a.x, a.mean, w.coef, a.y);
  }
  CLIPCU_CUDA_CHECK_LAUNCH("bn_apply_kernel");
}

template <class T, class P>
void batchnorm2d_backward(const BatchNormArgs<T, P>& a, cudaStream_t stream) {
  check_args(a, "batchnorm2d_backward");
  CLIPCU_CUDA_REQUIRE(a.dy, "batchnorm2d_backward: dy is required");
  CLIPCU_CUDA_REQUIRE(!a.relu || a.y, "batchnorm2d_backward: the fused ReLU needs y");
  CLIPCU_CUDA_REQUIRE(a.C <= 65535, "batchnorm2d_backward: C " << a.C << " > 65535");
  if (!a.dx && !a.dweight && !a.dbias) return;
  const int64_t S = chunks(a.N, a.C), M = a.N * a.HW;
  const Workspace w = carve(a.workspace, a.N, a.C);
  const dim3 grid(unsigned(S), unsigned(a.C));
  if (a.relu) {
    bn_bwd_sum_kernel<T, true><<<grid, kThreads, 0, stream>>>(a.N, a.C, a.HW, S, a.x, a.y, a.dy, a.mean, w.part1, w.part2);
  } else {
    bn_bwd_sum_kernel<T, false><<<grid, kThreads, 0, stream>>>(a.N, a.C, a.HW, S, a.x, a.y, a.dy, a.mean, w.part1, w.part2);
  }
  CLIPCU_CUDA_CHECK_LAUNCH("bn_bwd_sum_kernel");
  bn_bwd_finalize_kernel<P><<<unsigned((a.C + 127) / 128), 128, 0, stream>>>(
      a.C, S, M, a.training, w.part1, w.part2, a.weight, a.rstd, a.dweight, a.dbias, w.coef);
  CLIPCU_CUDA_CHECK_LAUNCH("bn_bwd_finalize_kernel");
  const int64_t total = a.N * a.C * a.HW;
  if (!a.dx || total == 0) return;
  if (a.relu) {
    bn_bwd_apply_kernel<T, true><<<grid_for(total), kThreads, 0, stream>>>(total, a.C, a.HW, a.x, a.y, a.dy, a.mean, w.coef, a.dx);
  } else {
    bn_bwd_apply_kernel<T, false><<<grid_for(total), kThreads, 0, stream>>>(total, a.C, a.HW, a.x, a.y, a.dy, a.mean, w.coef, a.dx);
  }
  CLIPCU_CUDA_CHECK_LAUNCH("bn_bwd_apply_kernel");
}

template <class T>
void avgpool2d_forward(int64_t NC, int64_t H, int64_t W, int64_t k, const T* x, T* y, cudaStream_t stream) {
  CLIPCU_CUDA_REQUIRE(NC >= 0 && k >= 1 && H >= k && W >= k,
                      "avgpool2d_forward: NC " << NC << " H " << H << " W " << W << " k " << k << " (need H, W >= k >= 1)");
  CLIPCU_CUDA_REQUIRE(x && y, "avgpool2d_forward: x and y are required");
  const int64_t total = NC * (H / k) * (W / k);
  if (total == 0) return;
  avgpool_fwd_kernel<T><<<grid_for(total), kThreads, 0, stream>>>(total, H, W, k, x, y);
  CLIPCU_CUDA_CHECK_LAUNCH("avgpool_fwd_kernel");
}

template <class T>
void avgpool2d_backward(int64_t NC, int64_t H, int64_t W, int64_t k, const T* dy, T* dx, cudaStream_t stream) {
  CLIPCU_CUDA_REQUIRE(NC >= 0 && k >= 1 && H >= k && W >= k,
                      "avgpool2d_backward: NC " << NC << " H " << H << " W " << W << " k " << k << " (need H, W >= k >= 1)");
  CLIPCU_CUDA_REQUIRE(dy && dx, "avgpool2d_backward: dy and dx are required");
  const int64_t total = NC * H * W;
  if (total == 0) return;
  avgpool_bwd_kernel<T><<<grid_for(total), kThreads, 0, stream>>>(total, H, W, k, dy, dx);
  CLIPCU_CUDA_CHECK_LAUNCH("avgpool_bwd_kernel");
}

#define CLIPCU_BN_INSTANTIATE(T, P)                                                          \
  template void batchnorm2d_forward<T, P>(const BatchNormArgs<T, P>&, cudaStream_t);       \
  template void batchnorm2d_backward<T, P>(const BatchNormArgs<T, P>&, cudaStream_t);
CLIPCU_BN_INSTANTIATE(float, float)
CLIPCU_BN_INSTANTIATE(bf16, bf16)
CLIPCU_BN_INSTANTIATE(bf16, float)
#undef CLIPCU_BN_INSTANTIATE

template void avgpool2d_forward<float>(int64_t, int64_t, int64_t, int64_t, const float*, float*, cudaStream_t);
template void avgpool2d_forward<bf16>(int64_t, int64_t, int64_t, int64_t, const bf16*, bf16*, cudaStream_t);
template void avgpool2d_backward<float>(int64_t, int64_t, int64_t, int64_t, const float*, float*, cudaStream_t);
template void avgpool2d_backward<bf16>(int64_t, int64_t, int64_t, int64_t, const bf16*, bf16*, cudaStream_t);

}  // namespace clipcu::cuda
