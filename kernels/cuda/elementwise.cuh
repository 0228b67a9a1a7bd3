// CUDA elementwise ops of the engine: suffix-broadcast add / mul with their backward, scale,
// exp, gradient accumulation, dtype conversion and fill. Host interface (includable from plain
// C++). The activations (relu, gelu, quick_gelu) are layernorm.cuh's bias_act kernels.
//
// Broadcasting (the one form the towers need, as kernels/cpu/elementwise.h): a is viewed as
// [outer, inner] and b as [inner]. The gradient of b is a sum over the outer rows, computed
// deterministically in two passes (fixed chunks of rows -> float partials, then the chunks
// added in order), so results repeat bit for bit. Every backward ACCUMULATES (+=); nullptr
// skips a gradient. Storage float or bf16, arithmetic in float.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/common/types.h"

namespace clipcu::cuda {

enum class BinaryOp { Add, Mul };

// y[o, i] = a[o, i] + b[i]   (Add)   or   a[o, i] * b[i]   (Mul).
template <class T>
void binary_forward(BinaryOp op, int64_t outer, int64_t inner,
                    const T* a,  // [outer, inner]
                    const T* b,  // [inner]
                    T* y,        // [outer, inner]
                    cudaStream_t stream);

// Floats of scratch binary_backward needs for db (0 when outer == 1).
size_t binary_backward_workspace_floats(int64_t outer, int64_t inner);

// Add: da += dy, db += sum_o dy[o, :].  Mul: da += dy * b, db += sum_o dy[o, :] * a[o, :].
template <class T>
void binary_backward(BinaryOp op, int64_t outer, int64_t inner,
                     const T* a,       // [outer, inner] (Mul only)
                     const T* b,       // [inner]        (Mul only)
                     const T* dy,      // [outer, inner]
                     T* da,            // [outer, inner] or nullptr
                     T* db,            // [inner] or nullptr
                     float* workspace,  // binary_backward_workspace_floats(outer, inner), when db
                     cudaStream_t stream);

// y = s * x.
template <class T>
void scale_forward(int64_t n, float s,
                   const T* x,  // [n]
                   T* y,        // [n]
                   cudaStream_t stream);

// dst += s * src (s = 1: the backward of every copy-like op).
template <class T>
void add_scaled(int64_t n, float s,
                const T* src,  // [n]
                T* dst,        // [n]
                cudaStream_t stream);

// y = exp(x); backward dx += dy * y (the derivative is the output).
template <class T>
void exp_forward(int64_t n,
                 const T* x,  // [n]
                 T* y,        // [n]
                 cudaStream_t stream);
template <class T>
void exp_backward(int64_t n,
                  const T* y,   // [n] the forward's output
                  const T* dy,  // [n]
                  T* dx,        // [n]
                  cudaStream_t stream);

// y = x converted (float <-> bf16, round to nearest even).
template <class To, class From>
void convert(int64_t n,
             const From* x,  // [n]
             To* y,          // [n]
             cudaStream_t stream);

// y[:] = value (rounded to T).
template <class T>
void fill(int64_t n, float value,
          T* y,  // [n]
          cudaStream_t stream);

}  // namespace clipcu::cuda
