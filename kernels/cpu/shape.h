// CPU reference of the data-movement ops: permute, slices and concatenation blocks, gathering
// one position per row, mean over one dimension, sum of everything; forward and backward.
//
// Every tensor is contiguous and row-major. A slice or a concatenation along dimension `dim` of
// a tensor of shape [d0, ..., dn] is seen as [outer, D, inner] with outer = d0 * ... * d(dim-1),
// D = d(dim), inner = d(dim+1) * ... * dn, so one block-copy kernel serves every dimension.
// Backward kernels ACCUMULATE (+=) into the gradient they are given (the tape's contract).
#pragma once
#include <cstdint>

namespace clipcu::cpu {

// dst[i] += src[i] for i < n (the backward of every copy-like op).
template <class T>
void accumulate(int64_t n, const T* src,  // [n]
                T* dst);                  // [n]

// y = x permuted: y.shape[i] = shape[dims[i]]. ndim <= 8. accumulate: y += instead of y =.
// The backward of a permute is the permute by the inverse dims, accumulated.
template <class T>
void permute(int ndim, const int64_t* shape,  // [ndim] shape of x
             const int* dims,                 // [ndim] a permutation of 0..ndim-1
             const T* x,                      // shape
             T* y,                            // permuted shape
             bool accumulate);

// Slice forward: y = x[:, start:start+len, :].
template <class T>
void slice_forward(int64_t outer, int64_t D, int64_t inner, int64_t start, int64_t len,
                   const T* x,  // [outer, D, inner]
                   T* y);       // [outer, len, inner]
// Slice backward: gx[:, start:start+len, :] += gy (the rest of gx is untouched).
template <class T>
void slice_backward(int64_t outer, int64_t D, int64_t inner, int64_t start, int64_t len,
                    const T* gy,  // [outer, len, inner]
                    T* gx);       // [outer, D, inner]

// One part of a concatenation: y[:, start:start+len, :] = x.
template <class T>
void concat_forward_part(int64_t outer, int64_t D, int64_t inner, int64_t start, int64_t len,
                         const T* x,  // [outer, len, inner]
                         T* y);       // [outer, D, inner]
// Its backward: gx += gy[:, start:start+len, :].
template <class T>
void concat_backward_part(int64_t outer, int64_t D, int64_t inner, int64_t start, int64_t len,
                          const T* gy,  // [outer, D, inner]
                          T* gx);       // [outer, len, inner]

// Throws clipcu::Error naming the op when an index is outside [0, T).
template <class I>
void check_row_indices(const char* op, int64_t B, int64_t T, const I* index);  // [B]

// Gather one position per batch row: y[b, :] = x[b, index[b], :] (text pooling).
// Validates every index first (clipcu::Error naming the row, the index and T).
template <class T, class I>
void gather_rows_forward(int64_t B, int64_t Tn, int64_t C,
                         const T* x,      // [B, Tn, C]
                         const I* index,  // [B]
                         T* y);           // [B, C]
// gx[b, index[b], :] += gy[b, :]. Each b owns its own slab of gx: no two rows collide.
template <class T, class I>
void gather_rows_backward(int64_t B, int64_t Tn, int64_t C,
                          const I* index,  // [B]
                          const T* gy,     // [B, C]
                          T* gx);          // [B, Tn, C]

// Mean over the middle dimension: y[o, i] = (1/D) sum_d x[o, d, i] (float64 accumulation).
template <class T>
void mean_forward(int64_t outer, int64_t D, int64_t inner,
                  const T* x,  // [outer, D, inner]
                  T* y);       // [outer, inner]
// gx[o, d, i] += gy[o, i] / D.
template <class T>
void mean_backward(int64_t outer, int64_t D, int64_t inner,
                   const T* gy,  // [outer, inner]
                   T* gx);       // [outer, D, inner]

// Attention head layouts. The packed projection qkv [B, T, 3, H, D] (q, k and v side by side in
// the last dim, each head-major: the rows of in_proj_weight) straight into q, k, v [B, H, T, D],
// one pass instead of a slice and a head permute per part. Backward accumulates each part's
// gradient into its place in dqkv; a part whose gradient is nullptr is skipped.
template <class T>
void split_qkv_heads_forward(int64_t B, int64_t Tn, int64_t H, int64_t D,
                             const T* qkv,  // [B, Tn, 3, H, D]
                             T* q,          // [B, H, Tn, D]
                             T* k,          // [B, H, Tn, D]
                             T* v);         // [B, H, Tn, D]
template <class T>
void split_qkv_heads_backward(int64_t B, int64_t Tn, int64_t H, int64_t D,
                              const T* dq,  // [B, H, Tn, D] or nullptr
                              const T* dk,  // [B, H, Tn, D] or nullptr
                              const T* dv,  // [B, H, Tn, D] or nullptr
                              T* dqkv);     // [B, Tn, 3, H, D]
// Heads back into tokens, y[b, t, h, :] = x[b, h, t, :] (attention output -> out_proj input);
// backward gx[b, h, t, :] += gy[b, t, h, :].
template <class T>
void merge_heads_forward(int64_t B, int64_t H, int64_t Tn, int64_t D,
                         const T* x,  // [B, H, Tn, D]
                         T* y);       // [B, Tn, H, D]
template <class T>
void merge_heads_backward(int64_t B, int64_t H, int64_t Tn, int64_t D,
                          const T* gy,  // [B, Tn, H, D]
                          T* gx);       // [B, H, Tn, D]

// Sum of all n elements, accumulated in float64 in a fixed order (deterministic).
template <class T>
T sum_all_forward(int64_t n, const T* x);  // [n]
// gx[i] += gy for every i.
template <class T>
void sum_all_backward(int64_t n, T gy,
                      T* gx);  // [n]

}  // namespace clipcu::cpu
