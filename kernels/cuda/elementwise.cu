// CUDA elementwise ops (see elementwise.cuh for the math and the contract).
//
// Parallelisation: every pointwise kernel is a grid-stride loop, one element per thread per
// step, 256 threads per block, at most 65536 blocks (memory bound: the loads are coalesced, no
// shared memory). The broadcast gradient db = sum over the outer rows runs in two passes:
// pass 1 has one thread per (column, chunk of rows) that adds its chunk's rows in order into a
// float partial; pass 2 has one thread per column that adds the chunk partials in chunk order.
// The chunking depends only on the sizes, so the sums repeat bit for bit (no atomics). One
// variant each: these kernels move memory, there is nothing to tile.
#include "kernels/cuda/elementwise.cuh"

#include <algorithm>

#include "kernels/cuda/common/check.h"
#include "kernels/cuda/common/device.cuh"

namespace clipcu::cuda {

namespace {

constexpr int kThreads = 256;

unsigned pointwise_blocks(int64_t n) { return unsigned(std::min<int64_t>((n + kThreads - 1) / kThreads, 65536)); }

// Rows per chunk of the deterministic column sums: at most 1024 chunks, at least 16 rows each.
int64_t chunk_rows(int64_t R) { return std::max<int64_t>(16, (R + 1023) / 1024); }
int64_t num_chunks(int64_t R) { return R <= 0 ? 0 : (R + chunk_rows(R) - 1) / chunk_rows(R); }

template <class T, BinaryOp kOp>
__global__ void binary_fwd_kernel(int64_t n, int64_t inner, const T* a, const T* b, T* y) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float x = to_float(a[i]), z = to_float(b[i % inner]);
    y[i] = from_float<T>(kOp == BinaryOp::Add ? x + z : x * z);
  }
}

// da += dy (Add) or dy * b (Mul).
template <class T, BinaryOp kOp>
__global__ void binary_da_kernel(int64_t n, int64_t inner, const T* b, const T* dy, T* da) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float g = to_float(dy[i]);
    accumulate(da + i, kOp == BinaryOp::Add ? g : g * to_float(b[i % inner]));
  }
}

// Pass 1: partial[k, i] = sum over rows r of chunk k (in order) of dy[r, i] (* a[r, i] for Mul).
// grid: (ceil(inner / 256), chunks); block 256.
template <class T, BinaryOp kOp>
__global__ void column_partial_kernel(int64_t outer, int64_t inner, int64_t rows, const T* a, const T* dy,
                                      float* partial) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= inner) return;
  const int64_t k = blockIdx.y;
  const int64_t r0 = k * rows, r1 = min64(r0 + rows, outer);
  float s = 0.f;
  for (int64_t r = r0; r < r1; ++r) {
    const float g = to_float(dy[r * inner + i]);
    s += kOp == BinaryOp::Add ? g : g * to_float(a[r * inner + i]);
  }
  partial[k * inner + i] = s;
}

template <class T>
__global__ void scale_kernel(int64_t n, float s, const T* x, T* y) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = from_float<T>(s * to_float(x[i]));
}

template <class T>
__global__ void add_scaled_kernel(int64_t n, float s, const T* src, T* dst) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    accumulate(dst + i, s * to_float(src[i]));
}

template <class T>
__global__ void exp_fwd_kernel(int64_t n, const T* x, T* y) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = from_float<T>(expf(to_float(x[i])));
}

template <class T>
__global__ void exp_bwd_kernel(int64_t n, const T* y, const T* dy, T* dx) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    accumulate(dx + i, to_float(dy[i]) * to_float(y[i]));
}

template <class To, class From>
__global__ void convert_kernel(int64_t n, const From* x, To* y) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = from_float<To>(to_float(x[i]));
}

template <class T>
__global__ void fill_kernel(int64_t n, float value, T* y) {
  const T v = from_float<T>(value);
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = v;
}

template <class F>
void dispatch_binary(BinaryOp op, F&& f) {
  if (op == BinaryOp::Add) {
    f.template operator()<BinaryOp::Add>();
  } else {
    f.template operator()<BinaryOp::Mul>();
  }
}

}  // namespace

size_t binary_backward_workspace_floats(int64_t outer, int64_t inner) {
  return outer <= 1 ? 0 : size_t(num_chunks(outer) * inner);
}

template <class T>
void binary_forward(BinaryOp op, int64_t outer, int64_t inner, const T* a, const T* b, T* y, cudaStream_t stream) {
  CLIPCU_CUDA_REQUIRE(outer >= 0 && inner >= 0, "binary_forward: outer " << outer << " inner " << inner);
  const int64_t n = outer * inner;
  if (n == 0) return;
  CLIPCU_CUDA_REQUIRE(a && b && y, "binary_forward: a pointer is null");
  dispatch_binary(op, [&]<BinaryOp kOp>() {
    binary_fwd_kernel<T, kOp><<<pointwise_blocks(n), kThreads, 0, stream>>>(n, inner, a, b, y);
    CLIPCU_CUDA_CHECK_LAUNCH("binary_fwd_kernel");
  });
}

template <class T>
void binary_backward(BinaryOp op, int64_t outer, int64_t inner, const T* a, const T* b, const T* dy, T* da, T* db,
                     float* workspace, cudaStream_t stream) {
  CLIPCU_CUDA_REQUIRE(outer >= 0 && inner >= 0, "binary_backward: outer " << outer << " inner " << inner);
  const int64_t n = outer * inner;
  if (n == 0) return;
  CLIPCU_CUDA_REQUIRE(dy, "binary_backward: dy is null");
  CLIPCU_CUDA_REQUIRE(op == BinaryOp::Add || ((!da || b) && (!db || a)), "binary_backward: mul needs a and b");
  dispatch_binary(op, [&]<BinaryOp kOp>() {
    if (da) {
      binary_da_kernel<T, kOp><<<pointwise_blocks(n), kThreads, 0, stream>>>(n, inner, b, dy, da);
      CLIPCU_CUDA_CHECK_LAUNCH("binary_da_kernel");
    }
    if (!db) return;
    if (outer == 1) {
      // no rows to sum: db += dy (* a), elementwise (the same kernel with the roles swapped)
      binary_da_kernel<T, kOp><<<pointwise_blocks(n), kThreads, 0, stream>>>(n, inner, a, dy, db);
      CLIPCU_CUDA_CHECK_LAUNCH("binary_da_kernel");
      return;
    }
    CLIPCU_CUDA_REQUIRE(workspace, "binary_backward: no workspace (binary_backward_workspace_floats)");
    const int64_t rows = chunk_rows(outer), chunks = num_chunks(outer);
    CLIPCU_CUDA_REQUIRE(chunks <= 65535, "binary_backward: " << chunks << " chunks beyond the grid");
    const dim3 grid(ceil_div_u(inner, kThreads), unsigned(chunks));
    column_partial_kernel<T, kOp><<<grid, kThreads, 0, stream>>>(outer, inner, rows, a, dy, workspace);
    CLIPCU_CUDA_CHECK_LAUNCH("column_partial_kernel");
    // pass 2: db[i] += the chunks' partials in order (common/device.cuh)
    column_chunks_total<T><<<ceil_div_u(inner, kThreads), kThreads, 0, stream>>>(chunks, inner, workspace, db);
    CLIPCU_CUDA_CHECK_LAUNCH("column_chunks_total");
  });
}

template <class T>
void scale_forward(int64_t n, float s, const T* x, T* y, cudaStream_t stream) {
  CLIPCU_CUDA_REQUIRE(n >= 0 && (n == 0 || (x && y)), "scale_forward: n " << n << " or a null pointer");
  if (n == 0) return;
  scale_kernel<T><<<pointwise_blocks(n), kThreads, 0, stream>>>(n, s, x, y);
  CLIPCU_CUDA_CHECK_LAUNCH("scale_kernel");
}

template <class T>
void add_scaled(int64_t n, float s, const T* src, T* dst, cudaStream_t stream) {
  CLIPCU_CUDA_REQUIRE(n >= 0 && (n == 0 || (src && dst)), "add_scaled: n " << n << " or a null pointer");
  if (n == 0) return;
  add_scaled_kernel<T><<<pointwise_blocks(n), kThreads, 0, stream>>>(n, s, src, dst);
  CLIPCU_CUDA_CHECK_LAUNCH("add_scaled_kernel");
}

template <class T>
void exp_forward(int64_t n, const T* x, T* y, cudaStream_t stream) {
  CLIPCU_CUDA_REQUIRE(n >= 0 && (n == 0 || (x && y)), "exp_forward: n " << n << " or a null pointer");
  if (n == 0) return;
  exp_fwd_kernel<T><<<pointwise_blocks(n), kThreads, 0, stream>>>(n, x, y);
  CLIPCU_CUDA_CHECK_LAUNCH("exp_fwd_kernel");
}

template <class T>
void exp_backward(int64_t n, const T* y, const T* dy, T* dx, cudaStream_t stream) {
  CLIPCU_CUDA_REQUIRE(n >= 0 && (n == 0 || (y && dy && dx)), "exp_backward: n " << n << " or a null pointer");
  if (n == 0) return;
  exp_bwd_kernel<T><<<pointwise_blocks(n), kThreads, 0, stream>>>(n, y, dy, dx);
  CLIPCU_CUDA_CHECK_LAUNCH("exp_bwd_kernel");
}

template <class To, class From>
void convert(int64_t n, const From* x, To* y, cudaStream_t stream) {
  CLIPCU_CUDA_REQUIRE(n >= 0 && (n == 0 || (x && y)), "convert: n " << n << " or a null pointer");
  if (n == 0) return;
  convert_kernel<To, From><<<pointwise_blocks(n), kThreads, 0, stream>>>(n, x, y);
  CLIPCU_CUDA_CHECK_LAUNCH("convert_kernel");
}

template <class T>
void fill(int64_t n, float value, T* y, cudaStream_t stream) {
  CLIPCU_CUDA_REQUIRE(n >= 0 && (n == 0 || y), "fill: n " << n << " or a null pointer");
  if (n == 0) return;
  fill_kernel<T><<<pointwise_blocks(n), kThreads, 0, stream>>>(n, value, y);
  CLIPCU_CUDA_CHECK_LAUNCH("fill_kernel");
}

#define CLIPCU_INSTANTIATE(T)                                                                                   \
  template void binary_forward<T>(BinaryOp, int64_t, int64_t, const T*, const T*, T*, cudaStream_t);          \
  template void binary_backward<T>(BinaryOp, int64_t, int64_t, const T*, const T*, const T*, T*, T*, float*,  \
                                   cudaStream_t);                                                             \
  template void scale_forward<T>(int64_t, float, const T*, T*, cudaStream_t);                                 \
  template void add_scaled<T>(int64_t, float, const T*, T*, cudaStream_t);                                    \
  template void exp_forward<T>(int64_t, const T*, T*, cudaStream_t);                                          \
  template void exp_backward<T>(int64_t, const T*, const T*, T*, cudaStream_t);                               \
  template void fill<T>(int64_t, float, T*, cudaStream_t);
CLIPCU_INSTANTIATE(float)
CLIPCU_INSTANTIATE(bf16)
#undef CLIPCU_INSTANTIATE
template void convert<float, bf16>(int64_t, const bf16*, float*, cudaStream_t);
template void convert<bf16, float>(int64_t, const float*, bf16*, cudaStream_t);

}  // namespace clipcu::cuda
