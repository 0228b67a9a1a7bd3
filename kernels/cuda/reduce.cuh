// CUDA reductions of the engine: sum of a whole tensor, mean over one dimension, row-wise L2
// normalization and the mean softmax cross entropy with integer targets; forward and backward.
// Host interface.
//
// Same math as kernels/cpu/shape.h (sum_all, mean), kernels/cpu/l2_normalize.h and
// kernels/cpu/softmax_xent.h. Accumulation in float; every reduction has a fixed order that
// depends only on the sizes (no float atomics), so results repeat bit for bit. Saved state
// (norms, log-sum-exps) is float whatever the storage type. Scalars that flow between ops (the
// loss, its incoming gradient) stay on the device: no host synchronization. Backwards
// ACCUMULATE (+=). Storage float or bf16; targets int32 or int64.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/common/types.h"

namespace clipcu::cuda {

// y[0] = sum of x (two passes: fixed blocks of the input -> float partials -> one block).
size_t sum_all_workspace_floats(int64_t n);
template <class T>
void sum_all_forward(int64_t n,
                     const T* x,        // [n]
                     T* y,              // [1]
                     float* workspace,  // sum_all_workspace_floats(n)
                     cudaStream_t stream);
// gx += gy[0] (read on the device).
template <class T>
void sum_all_backward(int64_t n,
                      const T* gy,  // [1]
                      T* gx,        // [n]
                      cudaStream_t stream);

// y[o, i] = (1/D) sum_d x[o, d, i]; backward gx[o, d, i] += gy[o, i] / D.
template <class T>
void mean_forward(int64_t outer, int64_t D, int64_t inner,
                  const T* x,  // [outer, D, inner]
                  T* y,        // [outer, inner]
                  cudaStream_t stream);
template <class T>
void mean_backward(int64_t outer, int64_t D, int64_t inner,
                   const T* gy,  // [outer, inner]
                   T* gx,        // [outer, D, inner]
                   cudaStream_t stream);

// y = x / max(||x||, 1e-12) per row; norm = ||x|| (unclamped). Backward (d = the clamped norm):
// gx += (gy - y (y . gy)) / ||x|| when ||x|| > 1e-12, else gy / 1e-12.
template <class T>
void l2_normalize_forward(int64_t N, int64_t C,
                          const T* x,   // [N, C]
                          T* y,         // [N, C]
                          float* norm,  // [N]
                          cudaStream_t stream);
template <class T>
void l2_normalize_backward(int64_t N, int64_t C,
                           const T* y,         // [N, C]
                           const float* norm,  // [N]
                           const T* gy,        // [N, C]
                           T* gx,              // [N, C]
                           cudaStream_t stream);

// lse_n = log sum_k exp(logits[n, k]); loss = (1/N) sum_n (lse_n - logits[n, target_n]).
// Targets must be valid (the op checks them on the host); an invalid one reads as logit 0.
template <class T, class I>
void softmax_xent_forward(int64_t N, int64_t C,
                          const T* logits,   // [N, C]
                          const I* targets,  // [N]
                          float* lse,        // [N]
                          T* loss,           // [1]
                          float* workspace,  // [N] per-row terms
                          cudaStream_t stream);
// grad_logits += grad_loss[0] * (softmax - onehot) / N.
template <class T, class I>
void softmax_xent_backward(int64_t N, int64_t C,
                           const T* logits,     // [N, C]
                           const I* targets,    // [N]
                           const float* lse,    // [N]
                           const T* grad_loss,  // [1]
                           T* grad_logits,      // [N, C]
                           cudaStream_t stream);

}  // namespace clipcu::cuda
