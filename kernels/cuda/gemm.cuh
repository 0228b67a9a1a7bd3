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
//   TensorCore: mma.sync tiles of 128 x 128, 8 warps of 64 x 32, cp.async multi-stage pipeline;
//               bf16 uses m16n8k16, float uses TF32 m16n8k8 (inputs rounded to TF32: about 1e-3
//               relative error, not float32 accuracy).
//   Cublas:     cublasLtMatmul (bias fused), falling back to cublasGemmEx when the heuristic
//               finds no algorithm; the other epilogue steps run as one elementwise pass.
#pragma once
#include <cublasLt.h>
#include <cublas_v2.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/common/types.h"

namespace clipcu::cuda {

enum class GemmBackend { Simple, TensorCore, Cublas };
const char* gemm_backend_name(GemmBackend b);

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
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  bool allow_tf32 = true;  // Cublas backend, float: TF32 tensor cores (false: full float32)
};

// Validates the sizes and pointers (throws clipcu::Error) and enqueues the product on stream.
template <class T>
void gemm(const GemmParams<T>& p, cudaStream_t stream);

// The elementwise epilogue alone, on C that already holds alpha op(A) op(B) (+ beta C):
// bias, pre_act, act, residual as above (used by the Cublas backend, exposed for tests).
template <class T>
void gemm_epilogue(const GemmParams<T>& p, cudaStream_t stream);

}  // namespace clipcu::cuda
