// Register micro-tiles over shared memory for the SIMT kernels (attention, contrastive loss).
//
// A 128-thread block is seen as 8 row groups (ty = threadIdx.x / 16) of 16 column threads
// (tx = threadIdx.x % 16). A thread owns rows ty * RPT + r (r < RPT) of a block tile and columns
// tx + 16 c (c < NC). The 16 threads of one row group are one half warp, so row reductions are
// half-warp shuffles. Shared-memory matrices that are read "across" (one row per thread column)
// have an odd leading dimension, so the 16 threads hit 16 different banks; the two row groups of
// a warp read either the same address (broadcast) or two addresses in different banks.
#pragma once
#include <cuda_runtime.h>

namespace clipcu::cuda::tile {

constexpr int kThreads = 128;
constexpr int kRowGroups = 8;
constexpr int kCols = 16;

__device__ __forceinline__ int tx() { return int(threadIdx.x) & 15; }
__device__ __forceinline__ int ty() { return int(threadIdx.x) >> 4; }

// acc[r][c] += sum_{k < K} A[r * lda + k] * Bt[(16 c) * ldb + k]
// A points at the thread's first row of a row-major [rows][K] matrix; Bt at row tx of a
// row-major [cols][K] matrix (the product A Bt^T).
template <int RPT, int NC, int K>
__device__ __forceinline__ void mul_abt(float (&acc)[RPT][NC], const float* A, int lda, const float* Bt, int ldb) {
#pragma unroll 8
  for (int k = 0; k < K; ++k) {
    float a[RPT], b[NC];
#pragma unroll
    for (int r = 0; r < RPT; ++r) a[r] = A[r * lda + k];
#pragma unroll
    for (int c = 0; c < NC; ++c) b[c] = Bt[c * 16 * ldb + k];
#pragma unroll
    for (int r = 0; r < RPT; ++r)
#pragma unroll
      for (int c = 0; c < NC; ++c) acc[r][c] = fmaf(a[r], b[c], acc[r][c]);
  }
}

// acc[r][c] += sum_{k < K} A[r * lda + k] * B[k * ldb + 16 c]
// A as above; B points at column tx of a row-major [K][cols] matrix (the product A B).
template <int RPT, int NC, int K>
__device__ __forceinline__ void mul_ab(float (&acc)[RPT][NC], const float* A, int lda, const float* B, int ldb) {
#pragma unroll 8
  for (int k = 0; k < K; ++k) {
    float a[RPT], b[NC];
#pragma unroll
    for (int r = 0; r < RPT; ++r) a[r] = A[r * lda + k];
#pragma unroll
    for (int c = 0; c < NC; ++c) b[c] = B[k * ldb + 16 * c];
#pragma unroll
    for (int r = 0; r < RPT; ++r)
#pragma unroll
      for (int c = 0; c < NC; ++c) acc[r][c] = fmaf(a[r], b[c], acc[r][c]);
  }
}

}  // namespace clipcu::cuda::tile
