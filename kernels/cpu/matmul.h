// CPU GEMM: C = alpha * op(A) op(B) + beta * C, row-major, the oracle and the CPU engine's workhorse.
#pragma once
#include <cstdint>

namespace clipcu::cpu {

// Naive: three plain loops in float64 accumulation order (the oracle).
// Blocked: cache-blocked loops with OpenMP over rows of C.
// OpenBLAS: cblas_?gemm (only in builds with CLIPCU_WITH_OPENBLAS; otherwise falls back to Blocked).
// Auto: the fastest available.
enum class GemmVariant { Auto, Naive, Blocked, OpenBLAS };

// op(A) is [M, K]: A is [M, K] row-major, or [K, M] when trans_a.
// op(B) is [K, N]: B is [K, N] row-major, or [N, K] when trans_b.
// C is [M, N] row-major. beta == 0 overwrites C (NaNs in C do not propagate).
template <class T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha,
          const T* A,  // [M, K] or [K, M]
          const T* B,  // [K, N] or [N, K]
          T beta,
          T* C,  // [M, N]
          GemmVariant variant = GemmVariant::Auto);

bool gemm_variant_available(GemmVariant v);
const char* gemm_variant_name(GemmVariant v);

// True when gemm (Auto) shares the engine's OpenMP threads: called inside an OpenMP parallel
// region it then runs on the calling thread alone, so kernels may run many small gemms in
// parallel. That holds for the Blocked kernel and for OpenBLAS's OpenMP (or sequential) build;
// a pthreads OpenBLAS would start threads of its own inside every region.
bool gemm_shares_openmp();

}  // namespace clipcu::cpu
