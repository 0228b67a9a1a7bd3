// CUDA batch normalization over [N, C, HW] (BatchNorm2d, NCHW) with an optional fused ReLU, and
// average pooling (kernel = stride = k, no padding), forward and backward. Host interface.
//
// Batch norm, the math of kernels/cpu/batchnorm.h:
//   training:  mean, biased var over the M = N*HW values of channel c; rstd = 1/sqrt(var + eps);
//              running = (1 - momentum) running + momentum batch (running_var with the unbiased
//              var * M / (M - 1)); inference: mean = running_mean, rstd = 1/sqrt(running_var + eps)
//   y = (x - mean) rstd weight + bias, then max(y, 0) when relu
//   backward (g = dy, masked by y > 0 when relu; xhat = (x - mean) rstd):
//     training  dx += weight rstd (g - mean(g) - xhat mean(g xhat));  inference dx += weight rstd g
//     dweight += sum g xhat;  dbias += sum g
// Storage: activations T (float or bf16); weight, bias and the running statistics P (float, or
// the same type as the activations); saved mean / rstd always float. Sums are double and have
// a fixed order: pass 1 of a reduction writes one partial per (channel, fixed chunk of images),
// pass 2 adds a channel's chunks in order, so results repeat bit for bit.
//
// Average pooling: y[nc, oh, ow] = mean of the k x k window; backward dx += dy / k^2 inside the
// pooled region (rows / columns past OH*k, OW*k get nothing). A thread per output (forward) or
// per input element (backward).
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/common/types.h"

namespace clipcu::cuda {

template <class T, class P>
struct BatchNormArgs {
  int64_t N = 0, C = 0, HW = 0;
  bool training = true;
  bool relu = false;  // y = max(bn(x), 0); backward then needs y
  float eps = 1e-5f, momentum = 0.1f;
  const T* x = nullptr;        // [N, C, HW]
  const P* weight = nullptr;   // [C] or nullptr (ones)
  const P* bias = nullptr;     // [C] or nullptr (zeros)
  P* running_mean = nullptr;   // [C]: training: updated in place (or nullptr); inference: read
  P* running_var = nullptr;    // [C]
  T* y = nullptr;              // [N, C, HW]: forward writes it; backward reads it when relu
  float* mean = nullptr;       // [C]: forward writes, backward reads
  float* rstd = nullptr;       // [C]
  const T* dy = nullptr;       // [N, C, HW] (backward)
  T* dx = nullptr;             // [N, C, HW] (backward: accumulated) or nullptr
  P* dweight = nullptr;        // [C] (accumulated) or nullptr
  P* dbias = nullptr;          // [C] (accumulated) or nullptr
  void* workspace = nullptr;   // batchnorm2d_workspace_bytes(N, C) bytes, 16-byte aligned
};

size_t batchnorm2d_workspace_bytes(int64_t N, int64_t C);

template <class T, class P>
void batchnorm2d_forward(const BatchNormArgs<T, P>& a, cudaStream_t stream);
template <class T, class P>
void batchnorm2d_backward(const BatchNormArgs<T, P>& a, cudaStream_t stream);

// NC = N * C planes of H x W; y [NC, H/k, W/k].
template <class T>
void avgpool2d_forward(int64_t NC, int64_t H, int64_t W, int64_t k,
                       const T* x,  // [NC, H, W]
                       T* y,        // [NC, H/k, W/k] (written)
                       cudaStream_t stream);
template <class T>
void avgpool2d_backward(int64_t NC, int64_t H, int64_t W, int64_t k,
                        const T* dy,  // [NC, H/k, W/k]
                        T* dx,        // [NC, H, W] (accumulated)
                        cudaStream_t stream);

}  // namespace clipcu::cuda
