// CUDA GEMM with fused epilogues: C = epilogue(alpha op(A) op(B) + beta C), row-major, storage
// float or bf16 with float accumulation. Host interface (includable from plain C++).
//
// Epilogue, per element (m, n), in this order:
//   v = alpha * sum_k op(A)[m, k] op(B)[k, n]   (+ beta * C[m, n] when beta != 0)
//   v += bias[n]                                 when bias
//   pre_act[m, n] = v                            when pre_act (what the activation's backward needs)
//   v = act(v)
//   v += residual[m, n]                          when residual (may be the same buffer as C: each
//                                                element is read before it is written)
//   C[m, n] = v
// The backward products of a linear layer are the transposed forms: dX = dY W (NN),
// dW += dY^T X (TN with beta = 1: gradients accumulate).
//
// Backends (GemmBackend), all behind this one call:
//   Simple:     SIMT tiles of 64 x 64 in shared memory, 4 x 4 outputs per thread (the reference).
//   TensorCore: mma.sync with warp tiles of 64 x 64 (block tiles 128 x 256 or 128 x 128, picked
//               per shape), ldmatrix fragment loads from XOR-swizzled shared memory, a 4-stage
//               cp.async pipeline, an epilogue staged through shared memory (coalesced stores),
//               and a deterministic split-K (float partials in `workspace`, added in a fixed
//               order by a second pass) for the tiles that would only partly fill the last wave
//               of blocks (all tiles when M x N is small, as in dW), when a workspace is given.
//               bf16 uses m16n8k16; float uses TF32 m16n8k8 (inputs rounded to TF32: about
//               1e-3 relative error, not float32 accuracy).
//   Cublas:     cublasLtMatmul (bias fused), falling back to cublasGemmEx when the heuristic
//               finds no algorithm; the other epilogue steps run as one elementwise pass.
//   Wgmma:      Hopper's warpgroup MMA (wgmma.mma_async, sm_90a builds on sm_90 GPUs only): block
//               tiles 128 x 256 or 128 x 128 computed by two warpgroups straight from 128-byte
//               swizzled shared memory (all four transpose forms through the descriptors' K- or
//               MN-major layouts, no operand copies), a cp.async ring with one wgmma group in
//               flight behind the loads, the same epilogue and split-K as TensorCore. bf16 only:
//               float products on this backend run the TensorCore kernel (TF32).
#pragma once
#include <cublasLt.h>
#include <cublas_v2.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/cuda/common/types.h"

namespace clipcu::cuda {

// New values go at the end (the numbering of the existing ones stays).
enum class GemmBackend { Simple, TensorCore, Cublas, Wgmma };
const char* gemm_backend_name(GemmBackend b);

// Every backend this build can run on the given device, in enum order (tests and benchmarks
// iterate over it; a backend that needs a newer GPU than `device`, or device code this build
// does not contain, is left out).
std::vector<GemmBackend> gemm_backends(int device = 0);

// Whether this build can run the Wgmma backend on the device: a Hopper GPU (compute capability
// 9.x) and kernels compiled for sm_90a (checked once per device by running a probe kernel).
// CLIPCU_WGMMA=0 in the environment hides it (false everywhere; read once): the device check
// sets it when its wgmma smoke test fails, so that one broken kernel cannot take the rest of a
// test program down with it (a kernel fault poisons the whole CUDA context).
bool gemm_wgmma_available(int device);

// Whether the backend rounds float inputs to TF32 (accuracy about 1e-3 instead of float32's).
inline bool gemm_backend_uses_tf32(GemmBackend b) {
  return b == GemmBackend::TensorCore || b == GemmBackend::Wgmma;
}

template <class T>
struct GemmParams {
  bool trans_a = false, trans_b = false;
  int64_t M = 0, N = 0, K = 0;
  const T* A = nullptr;  // [M, K], or [K, M] when trans_a
  const T* B = nullptr;  // [K, N], or [N, K] when trans_b
  T* C = nullptr;        // [M, N]
  float alpha = 1.f;
  float beta = 0.f;              // 0: C is only written (NaNs in C do not propagate)
  const T* bias = nullptr;       // [N] or nullptr
  Act act = Act::None;
  T* pre_act = nullptr;          // [M, N] or nullptr
  const T* residual = nullptr;   // [M, N] or nullptr; may be C itself (the Cublas backend then
                                 // needs act None and no pre_act)
  GemmBackend backend = GemmBackend::TensorCore;
  // Cublas backend: handles and workspace from the runtime (engine/cuda_runtime.h).
  cublasLtHandle_t lt = nullptr;
  cublasHandle_t cublas = nullptr;  // for the cublasGemmEx fallback (may be nullptr)
  // Scratch for cuBLASLt, and for the TensorCore backend's split-K partial sums (float, splits
  // x 128 x 256 per split tile; it only splits as far as a 16-byte aligned workspace allows,
  // not at all without one). Only used by this call, in stream order.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  bool allow_tf32 = true;  // Cublas backend, float: TF32 tensor cores (false: full float32)
};

// Validates the sizes and pointers (throws clipcu::Error) and enqueues the product on stream.
template <class T>
void gemm(const GemmParams<T>& p, cudaStream_t stream);

// How the tensor-core backend p.backend (TensorCore, or Wgmma for bf16) computes this product on
// the current device: its block tile, the tiles computed whole and those cut into `splits`
// pieces along K (split-K, into the workspace). For tests (which check that every path ran)
// and benchmark labels.
struct GemmTensorCorePlan {
  int block_m = 0, block_n = 0;
  int64_t whole_tiles = 0, split_tiles = 0;
  int splits = 1;
};
template <class T>
GemmTensorCorePlan gemm_tensorcore_plan(const GemmParams<T>& p);

// Test hook: the tensor-core backend p.backend (TensorCore or Wgmma, as above) with a given plan
// instead of its own choice (block tile 128 x 256 or 128 x 128; the first whole_tiles tiles
// whole, the others in `splits` pieces along K, fewer when K has fewer steps; split_tiles is
// ignored). Split tiles need the workspace. Throws clipcu::Error on a plan it cannot run.
template <class T>
void gemm_tensorcore_with_plan(const GemmParams<T>& p, const GemmTensorCorePlan& plan, cudaStream_t stream);

// The elementwise epilogue alone, on C that already holds alpha op(A) op(B) (+ beta C):
// bias, pre_act, act, residual as above (used by the Cublas backend, exposed for tests).
template <class T>
void gemm_epilogue(const GemmParams<T>& p, cudaStream_t stream);

}  // namespace clipcu::cuda
