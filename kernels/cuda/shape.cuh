// CUDA data-movement ops of the engine: permute (rank <= 8), the block copy behind slice and
// concat, and the attention head layouts; forward and backward. Host interface.
//
// Same math and layouts as kernels/cpu/shape.h: every tensor is contiguous and row-major; a
// slice or a concatenation along dimension d of [d0, ..., dn] is seen as [outer, D, inner].
// Every output element has exactly one writer, so the backwards (the same copies in the other
// direction, ACCUMULATED +=) need no atomics. Storage float or bf16.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/common/types.h"

namespace clipcu::cuda {

inline constexpr int kMaxPermuteDims = 8;

// y = x permuted (y.shape[i] = shape[dims[i]]); accumulate: y += instead of y =.
template <class T>
void permute(int ndim,
             const int64_t* shape,  // [ndim] host: the shape of x
             const int* dims,       // [ndim] host: a permutation of 0 .. ndim-1
             const T* x,            // shape
             T* y,                  // permuted shape
             bool accumulate, cudaStream_t stream);

// dst[o, dst_start + l, i] (+)= src[o, src_start + l, i] for l < len: slice forward
// (src = x, dst = y, dst_start 0), slice backward (the other way, accumulate), and one part of a
// concatenation (forward and backward).
template <class T>
void copy_block(int64_t outer, int64_t len, int64_t inner,
                const T* src, int64_t src_D, int64_t src_start,  // src [outer, src_D, inner]
                T* dst, int64_t dst_D, int64_t dst_start,        // dst [outer, dst_D, inner]
                bool accumulate, cudaStream_t stream);

// qkv [B, T, 3, H, D] -> q, k, v [B, H, T, D].
template <class T>
void split_qkv_heads_forward(int64_t B, int64_t Tn, int64_t H, int64_t D,
                             const T* qkv,  // [B, T, 3 * H * D]
                             T* q,          // [B, H, T, D]
                             T* k,          // [B, H, T, D]
                             T* v,          // [B, H, T, D]
                             cudaStream_t stream);
// gqkv += the three parts back in place; a null part adds nothing.
template <class T>
void split_qkv_heads_backward(int64_t B, int64_t Tn, int64_t H, int64_t D,
                              const T* gq,  // [B, H, T, D] or nullptr
                              const T* gk,  // [B, H, T, D] or nullptr
                              const T* gv,  // [B, H, T, D] or nullptr
                              T* gqkv,      // [B, T, 3 * H * D]
                              cudaStream_t stream);

// x [B, H, T, D] -> y [B, T, H * D]; backward gx += gy back in place.
template <class T>
void merge_heads_forward(int64_t B, int64_t H, int64_t Tn, int64_t D,
                         const T* x,  // [B, H, T, D]
                         T* y,        // [B, T, H * D]
                         cudaStream_t stream);
template <class T>
void merge_heads_backward(int64_t B, int64_t H, int64_t Tn, int64_t D,
                          const T* gy,  // [B, T, H * D]
                          T* gx,        // [B, H, T, D]
                          cudaStream_t stream);

}  // namespace clipcu::cuda
