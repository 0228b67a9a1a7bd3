// CUDA data-movement ops (see shape.cuh for the layouts and the contract).
//
// Parallelisation: one thread per OUTPUT element of the copy (grid-stride loops, 256 threads,
// at most 65536 blocks), which computes the matching input offset with integer divisions: the
// writes are coalesced, and the reads are coalesced whenever the innermost dimension stays
// innermost (slices, concatenations, the head layouts copy rows of D contiguous elements).
// Backward kernels walk the same index map and accumulate (+=) in float; every element has one
// owner, so there are no atomics and results repeat bit for bit. One variant each (plain memory
// movement; a shared-memory transpose would only pay for permutes that move the last dim, which
// the towers do not run on large tensors).
#include "kernels/cuda/shape.cuh"

#include <algorithm>

#include "kernels/cuda/common/check.h"
#include "kernels/cuda/common/device.cuh"

namespace clipcu::cuda {

namespace {

constexpr int kThreads = 256;

unsigned pointwise_blocks(int64_t n) { return unsigned(std::min<int64_t>((n + kThreads - 1) / kThreads, 65536)); }

template <class T>
__device__ __forceinline__ void store(T* p, float v, bool acc) {
  if (acc) {
    accumulate(p, v);
  } else {
    *p = from_float<T>(v);
  }
}

// The permutation as the kernel sees it: the output's sizes and, for each output dim, the
// stride of the matching input dim (passed by value: no device copy of the description).
struct PermuteDesc {
  int ndim = 0;
  int64_t out_size[kMaxPermuteDims] = {};
  int64_t in_stride[kMaxPermuteDims] = {};
};

template <class T>
__global__ void permute_kernel(int64_t n, PermuteDesc d, const T* x, T* y, bool acc) {
  for (int64_t o = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; o < n; o += int64_t(gridDim.x) * blockDim.x) {
    int64_t rest = o, src = 0;
    for (int k = d.ndim - 1; k >= 0; --k) {
      const int64_t idx = rest % d.out_size[k];
      rest /= d.out_size[k];
      src += idx * d.in_stride[k];
    }
    store(y + o, to_float(x[src]), acc);
  }
}

// one thread per destination element of the block [outer, len, inner]
template <class T>
__global__ void copy_block_kernel(int64_t n, int64_t len, int64_t inner, const T* src, int64_t src_D,
                                  int64_t src_start, T* dst, int64_t dst_D, int64_t dst_start, bool acc) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e % inner, l = (e / inner) % len, o = e / (inner * len);
    const float v = to_float(src[(o * src_D + src_start + l) * inner + i]);
    store(dst + (o * dst_D + dst_start + l) * inner + i, v, acc);
  }
}

// e runs over [B, H, T, D] (the head-major side); qkv offset of (b, t, part, h, d).
__device__ __forceinline__ int64_t qkv_offset(int64_t e, int64_t H, int64_t Tn, int64_t D, int64_t part) {
  const int64_t d = e % D, t = (e / D) % Tn, h = (e / (D * Tn)) % H, b = e / (D * Tn * H);
  return ((b * Tn + t) * 3 + part) * H * D + h * D + d;
}

template <class T>
__global__ void split_qkv_fwd_kernel(int64_t n, int64_t H, int64_t Tn, int64_t D, const T* qkv, T* q, T* k, T* v) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    q[e] = qkv[qkv_offset(e, H, Tn, D, 0)];
    k[e] = qkv[qkv_offset(e, H, Tn, D, 1)];
    v[e] = qkv[qkv_offset(e, H, Tn, D, 2)];
  }
}

template <class T>
__global__ void split_qkv_bwd_kernel(int64_t n, int64_t H, int64_t Tn, int64_t D, const T* gq, const T* gk,
                                     const T* gv, T* gqkv) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    if (gq) accumulate(gqkv + qkv_offset(e, H, Tn, D, 0), to_float(gq[e]));
    if (gk) accumulate(gqkv + qkv_offset(e, H, Tn, D, 1), to_float(gk[e]));
    if (gv) accumulate(gqkv + qkv_offset(e, H, Tn, D, 2), to_float(gv[e]));
  }
}

// e runs over [B, T, H, D] (the merged side); offset of (b, h, t, d) in [B, H, T, D].
__device__ __forceinline__ int64_t heads_offset(int64_t e, int64_t H, int64_t Tn, int64_t D) {
  const int64_t d = e % D, h = (e / D) % H, t = (e / (D * H)) % Tn, b = e / (D * H * Tn);
  return ((b * H + h) * Tn + t) * D + d;
}

template <class T>
__global__ void merge_heads_fwd_kernel(int64_t n, int64_t H, int64_t Tn, int64_t D, const T* x, T* y) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x)
    y[e] = x[heads_offset(e, H, Tn, D)];
}

template <class T>
__global__ void merge_heads_bwd_kernel(int64_t n, int64_t H, int64_t Tn, int64_t D, const T* gy, T* gx) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x)
    accumulate(gx + heads_offset(e, H, Tn, D), to_float(gy[e]));
}

}  // namespace

template <class T>
void permute(int ndim, const int64_t* shape, const int* dims, const T* x, T* y, bool accumulate,
             cudaStream_t stream) {
  CLIPCU_CUDA_REQUIRE(ndim >= 0 && ndim <= kMaxPermuteDims,
                      "permute: " << ndim << " dimensions (at most " << kMaxPermuteDims << ")");
  CLIPCU_CUDA_REQUIRE(ndim == 0 || (shape && dims), "permute: shape or dims is null");
  PermuteDesc d;
  d.ndim = ndim;
  int64_t in_stride[kMaxPermuteDims] = {};
  int64_t n = 1, s = 1;
  for (int k = ndim - 1; k >= 0; --k) {
    CLIPCU_CUDA_REQUIRE(shape[k] >= 0, "permute: negative size " << shape[k]);
    in_stride[k] = s;
    s *= shape[k];
    n *= shape[k];
  }
  bool seen[kMaxPermuteDims] = {};
  for (int k = 0; k < ndim; ++k) {
    CLIPCU_CUDA_REQUIRE(dims[k] >= 0 && dims[k] < ndim && !seen[dims[k]], "permute: dims is not a permutation");
    seen[dims[k]] = true;
    d.out_size[k] = shape[dims[k]];
    d.in_stride[k] = in_stride[dims[k]];
  }
  if (n == 0) return;
  CLIPCU_CUDA_REQUIRE(x && y, "permute: a pointer is null");
  permute_kernel<T><<<pointwise_blocks(n), kThreads, 0, stream>>>(n, d, x, y, accumulate);
  CLIPCU_CUDA_CHECK_LAUNCH("permute_kernel");
}

template <class T>
void copy_block(int64_t outer, int64_t len, int64_t inner, const T* src, int64_t src_D, int64_t src_start, T* dst,
                int64_t dst_D, int64_t dst_start, bool accumulate, cudaStream_t stream) {
  CLIPCU_CUDA_REQUIRE(outer >= 0 && len >= 0 && inner >= 0 && src_start >= 0 && dst_start >= 0 &&
                          src_start + len <= src_D && dst_start + len <= dst_D,
                      "copy_block: outer " << outer << " len " << len << " inner " << inner << " src [" << src_start
                                           << ", +len) of " << src_D << " dst [" << dst_start << ", +len) of "
                                           << dst_D);
  const int64_t n = outer * len * inner;
  if (n == 0) return;
  CLIPCU_CUDA_REQUIRE(src && dst, "copy_block: a pointer is null");
  copy_block_kernel<T><<<pointwise_blocks(n), kThreads, 0, stream>>>(n, len, inner, src, src_D, src_start, dst, dst_D,
                                                                     dst_start, accumulate);
  CLIPCU_CUDA_CHECK_LAUNCH("copy_block_kernel");
}

template <class T>
void split_qkv_heads_forward(int64_t B, int64_t Tn, int64_t H, int64_t D, const T* qkv, T* q, T* k, T* v,
                             cudaStream_t stream) {
  CLIPCU_CUDA_REQUIRE(B >= 0 && Tn >= 0 && H >= 0 && D >= 0, "split_qkv_heads: B " << B << " T " << Tn << " H " << H
                                                                                     << " D " << D);
  const int64_t n = B * H * Tn * D;
  if (n == 0) return;
  CLIPCU_CUDA_REQUIRE(qkv && q && k && v, "split_qkv_heads_forward: a pointer is null");
  split_qkv_fwd_kernel<T><<<pointwise_blocks(n), kThreads, 0, stream>>>(n, H, Tn, D, qkv, q, k, v);
  CLIPCU_CUDA_CHECK_LAUNCH("split_qkv_fwd_kernel");
}

template <class T>
void split_qkv_heads_backward(int64_t B, int64_t Tn, int64_t H, int64_t D, const T* gq, const T* gk, const T* gv,
                              T* gqkv, cudaStream_t stream) {
  CLIPCU_CUDA_REQUIRE(B >= 0 && Tn >= 0 && H >= 0 && D >= 0, "split_qkv_heads: B " << B << " T " << Tn << " H " << H
                                                                                     << " D " << D);
  const int64_t n = B * H * Tn * D;
  if (n == 0 || !(gq || gk || gv)) return;
  CLIPCU_CUDA_REQUIRE(gqkv, "split_qkv_heads_backward: gqkv is null");
  split_qkv_bwd_kernel<T><<<pointwise_blocks(n), kThreads, 0, stream>>>(n, H, Tn, D, gq, gk, gv, gqkv);
  CLIPCU_CUDA_CHECK_LAUNCH("split_qkv_bwd_kernel");
}

template <class T>
void merge_heads_forward(int64_t B, int64_t H, int64_t Tn, int64_t D, const T* x, T* y, cudaStream_t stream) {
  CLIPCU_CUDA_REQUIRE(B >= 0 && Tn >= 0 && H >= 0 && D >= 0, "merge_heads: B " << B << " H " << H << " T " << Tn
                                                                                 << " D " << D);
  const int64_t n = B * H * Tn * D;
  if (n == 0) return;
  CLIPCU_CUDA_REQUIRE(x && y, "merge_heads_forward: a pointer is null");
  merge_heads_fwd_kernel<T><<<pointwise_blocks(n), kThreads, 0, stream>>>(n, H, Tn, D, x, y);
  CLIPCU_CUDA_CHECK_LAUNCH("merge_heads_fwd_kernel");
}

template <class T>
void merge_heads_backward(int64_t B, int64_t H, int64_t Tn, int64_t D, const T* gy, T* gx, cudaStream_t stream) {
  CLIPCU_CUDA_REQUIRE(B >= 0 && Tn >= 0 && H >= 0 && D >= 0, "merge_heads: B " << B << " H " << H << " T " << Tn
                                                                                 << " D " << D);
  const int64_t n = B * H * Tn * D;
  if (n == 0) return;
  CLIPCU_CUDA_REQUIRE(gy && gx, "merge_heads_backward: a pointer is null");
  merge_heads_bwd_kernel<T><<<pointwise_blocks(n), kThreads, 0, stream>>>(n, H, Tn, D, gy, gx);
  CLIPCU_CUDA_CHECK_LAUNCH("merge_heads_bwd_kernel");
}

#define CLIPCU_INSTANTIATE(T)                                                                                 \
  template void permute<T>(int, const int64_t*, const int*, const T*, T*, bool, cudaStream_t);               \
  template void copy_block<T>(int64_t, int64_t, int64_t, const T*, int64_t, int64_t, T*, int64_t, int64_t,   \
                              bool, cudaStream_t);                                                          \
  template void split_qkv_heads_forward<T>(int64_t, int64_t, int64_t, int64_t, const T*, T*, T*, T*,         \
                                           cudaStream_t);                                                   \
  template void split_qkv_heads_backward<T>(int64_t, int64_t, int64_t, int64_t, const T*, const T*,          \
                                            const T*, T*, cudaStream_t);                                    \
  template void merge_heads_forward<T>(int64_t, int64_t, int64_t, int64_t, const T*, T*, cudaStream_t);      \
  template void merge_heads_backward<T>(int64_t, int64_t, int64_t, int64_t, const T*, T*, cudaStream_t);
CLIPCU_INSTANTIATE(float)
CLIPCU_INSTANTIATE(bf16)
#undef CLIPCU_INSTANTIATE

}  // namespace clipcu::cuda
