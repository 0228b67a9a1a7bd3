// CUDA fused attention core, forward and backward: out = softmax(q k^T / sqrt(D)) v per
// (batch, head), without a [T, T] matrix in global memory. Host interface.
//
// Layout [B, H, T, D] (contiguous). Tq may differ from Tk (one pooled query over all positions);
// causal masks key j > query i and needs Tq == Tk. D <= 128 (any value; 32, 64 and 128 are the
// compiled tile widths, smaller D is zero-padded). Same math as kernels/cpu/attention.h: the
// forward saves lse (float, [B, H, Tq]); the backward recomputes P = exp(s - lse) and
// ACCUMULATES (+=) into dq / dk / dv (nullptr skips one; dk and dv are skipped together only).
//
// Variants (AttentionKernel):
//   Simple: one warp per query row (forward, dQ) or key row (dK, dV), dot products as warp
//           reductions, an online softmax over the keys (the reference).
//   Tiled:  blocks of 32 rows with K/V (or Q/dO) tiles of 32 rows in shared memory and 4 x 2
//           register tiles per thread; online softmax in the forward; backward in two kernels,
//           one owning key blocks (dK, dV) and one owning query blocks (dQ): every gradient
//           element has one owner, so there are no atomics and results repeat bit for bit.
//   TensorCore: bf16 only (float storage runs Tiled): flash-attention-2 style with mma.sync
//           m16n8k16 (bf16 in, float accumulate), a warp owns 16 rows, P and dS stay in
//           registers as mma operands. Forward: a block of up to 8 warps (128 queries) streams
//           key tiles of 64. Backward: a block owns up to 128 keys (dK, dV) and loops over the
//           query tiles; when that is the whole head (Tk <= 128) the same block also computes
//           Delta and dQ, so one kernel does the backward; longer heads run a separate dQ
//           kernel. No atomics, deterministic; dq, dk and dv may be one buffer.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/common/types.h"

namespace clipcu::cuda {

enum class AttentionKernel { Simple, Tiled, TensorCore };
const char* attention_kernel_name(AttentionKernel k);

struct AttentionShape {
  int64_t B = 0, H = 0;
  int64_t Tq = 0, Tk = 0;
  int64_t D = 0;
  bool causal = false;
  AttentionKernel kernel = AttentionKernel::Tiled;
};

template <class T>
struct AttentionArgs {
  const T* q = nullptr;     // [B, H, Tq, D]
  const T* k = nullptr;     // [B, H, Tk, D]
  const T* v = nullptr;     // [B, H, Tk, D]
  T* out = nullptr;         // [B, H, Tq, D] forward output (read by backward)
  float* lse = nullptr;     // [B, H, Tq]    forward log-sum-exp of the scaled scores
  // backward only
  const T* dout = nullptr;  // [B, H, Tq, D]
  T* dq = nullptr;          // [B, H, Tq, D] or nullptr
  T* dk = nullptr;          // [B, H, Tk, D] or nullptr
  T* dv = nullptr;          // [B, H, Tk, D] or nullptr
  float* workspace = nullptr;  // attention_backward_workspace_floats(shape) floats
};

template <class T>
void attention_forward(const AttentionShape& s, const AttentionArgs<T>& a, cudaStream_t stream);

// Floats of scratch the backward needs (Delta_i = dO_i . O_i per query row).
size_t attention_backward_workspace_floats(const AttentionShape& s);

template <class T>
void attention_backward(const AttentionShape& s, const AttentionArgs<T>& a, cudaStream_t stream);

}  // namespace clipcu::cuda
