// CPU GEMM, C = alpha * op(A) op(B) + beta * C, row-major, in three variants.
//
// Naive: for each C[i, j] one dot product over K accumulated in float64: slow, but its rounding is
//   far below float32's, so it is the oracle the other variants are tested against. Serial on
//   purpose: nothing but tests and benchmarks runs it.
// Blocked: the GotoBLAS loop nest in portable C++. K is cut into KC-deep slabs and N into NC-wide
//   slabs; each (KC x NC) block of op(B) is packed once into NR-wide column panels (contiguous in
//   the order the micro-kernel reads them, zero-padded at the right edge), then the rows of C are
//   walked MR at a time: MR rows of op(A) (times alpha) are packed into a small buffer and an
//   MR x NR register tile of C is accumulated over the whole KC slab before it is added to C.
//   Packing is what makes the transposed forms cost the same as the plain one. The micro-kernel
//   is fixed-size loops that the compiler unrolls and vectorizes. beta is applied when the first
//   K slab's tile is stored, so C is never swept separately. OpenMP: one parallel region;
//   the threads share the packing of each B block and split the MR-row strips of C between them
//   (static schedule, so every element of C is always summed in the same order: deterministic).
// OpenBLAS: cblas_sgemm / cblas_dgemm (builds with CLIPCU_WITH_OPENBLAS), else Blocked.
// Auto: OpenBLAS when built in, else Blocked.
//
// Degenerate sizes are handled here, never passed on: M == 0 or N == 0 is a no-op, K == 0 gives
// C = beta * C. beta == 0 overwrites C without reading it (NaNs in C do not propagate).
#include "kernels/cpu/matmul.h"

#include <algorithm>
#include <climits>
#include <string>
#include <vector>

#include "engine/error.h"

#ifdef CLIPCU_WITH_OPENBLAS
#include <cblas.h>
#endif

namespace clipcu::cpu {

namespace {

// C = beta * C over an [M, N] matrix (beta == 0 writes zeros).
template <class T>
void scale_c(int64_t M, int64_t N, T beta, T* C) {
  const int64_t n = M * N;
  if (beta == T(0)) {
    std::fill(C, C + n, T(0));
  } else if (beta != T(1)) {
    for (int64_t i = 0; i < n; ++i) C[i] *= beta;
  }
}

template <class T>
void gemm_naive(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha,
                const T* A,  // [M, K] or [K, M]
                const T* B,  // [K, N] or [N, K]
                T beta,
                T* C) {  // [M, N]
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      double acc = 0.0;
      for (int64_t k = 0; k < K; ++k) {
        double a = ta ? A[k * M + i] : A[i * K + k];
        double b = tb ? B[j * K + k] : B[k * N + j];
        acc += a * b;
      }
      double c = double(alpha) * acc;
      if (beta != T(0)) c += double(beta) * double(C[i * N + j]);
      C[i * N + j] = T(c);
    }
  }
}

// Blocking sizes. MR x NR is the register tile (8 SSE registers of accumulators for float and
// for double); KC x NC of packed B (256 KiB of float) stays in L2 while all row strips use it.
constexpr int64_t MR = 4;
template <class T> constexpr int64_t NR = 32 / sizeof(T);
constexpr int64_t KC = 256;
constexpr int64_t NC = 256;

// The register tile: tile[MR][NR] = sum over kk < kc of ap[kk][:] (outer product) bp[kk][:].
// A separate function with restrict pointers and a flat accumulator: in this form the compiler
// keeps the whole tile in vector registers for the k loop (checked with -fopt-info-vec).
template <class T>
void micro_kernel(int64_t kc,
                  const T* __restrict ap,  // [kc][MR]
                  const T* __restrict bp,  // [kc][NR]
                  T* __restrict tile) {    // [MR][NR]
  constexpr int64_t nr = NR<T>;
  T acc[MR * nr] = {};
  for (int64_t kk = 0; kk < kc; ++kk) {
    const T* a = ap + kk * MR;
    const T* b = bp + kk * nr;
    for (int64_t r = 0; r < MR; ++r)
      for (int64_t c = 0; c < nr; ++c) acc[r * nr + c] += a[r] * b[c];
  }
  for (int64_t i = 0; i < MR * nr; ++i) tile[i] = acc[i];
}

template <class T>
void gemm_blocked(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha,
                  const T* A,  // [M, K] or [K, M]
                  const T* B,  // [K, N] or [N, K]
                  T beta,
                  T* C) {  // [M, N]
  constexpr int64_t nr = NR<T>;
  const int64_t ncap = std::min<int64_t>(NC, (N + nr - 1) / nr * nr);
  const int64_t kcap = std::min<int64_t>(KC, K);
  // Packed op(B) block: [NC / NR panels][KC][NR], shared by all threads.
  std::vector<T> bpack(static_cast<size_t>(kcap * ncap));
  const int64_t strips = (M + MR - 1) / MR;
  const bool parallel = M * N * K > 65536;

#pragma omp parallel if (parallel)
  {
    std::vector<T> apack(static_cast<size_t>(MR * kcap));  // [KC][MR]: alpha * op(A) for one strip

    for (int64_t k0 = 0; k0 < K; k0 += KC) {
      const int64_t kc = std::min(KC, K - k0);
      for (int64_t j0 = 0; j0 < N; j0 += NC) {
        const int64_t nc = std::min(NC, N - j0);
        const int64_t panels = (nc + nr - 1) / nr;

        // Pack op(B)[k0 : k0+kc, j0 : j0+nc] panel by panel; columns past N are zeros.
#pragma omp for schedule(static)
        for (int64_t p = 0; p < panels; ++p) {
          T* dst = bpack.data() + p * kc * nr;
          for (int64_t kk = 0; kk < kc; ++kk) {
            for (int64_t c = 0; c < nr; ++c) {
              const int64_t j = j0 + p * nr + c, k = k0 + kk;
              dst[kk * nr + c] = j < N ? (tb ? B[j * K + k] : B[k * N + j]) : T(0);
            }
          }
        }  // implicit barrier: the block is packed before anyone uses it

#pragma omp for schedule(static)
        for (int64_t s = 0; s < strips; ++s) {
          const int64_t i0 = s * MR;
          const int64_t mr = std::min(MR, M - i0);
          for (int64_t kk = 0; kk < kc; ++kk) {
            for (int64_t r = 0; r < MR; ++r) {
              const int64_t i = i0 + r, k = k0 + kk;
              apack[size_t(kk * MR + r)] = r < mr ? alpha * (ta ? A[k * M + i] : A[i * K + k]) : T(0);
            }
          }
          for (int64_t p = 0; p < panels; ++p) {
            T tile[MR * nr];
            micro_kernel(kc, apack.data(), bpack.data() + p * kc * nr, tile);
            const int64_t jb = j0 + p * nr;
            const int64_t ncols = std::min(nr, N - jb);
            for (int64_t r = 0; r < mr; ++r) {
              T* crow = C + (i0 + r) * N + jb;
              const T* t = tile + r * nr;
              // The first K slab applies beta (no separate pass over C, no extra barrier).
              if (k0 > 0) {
                for (int64_t c = 0; c < ncols; ++c) crow[c] += t[c];
              } else if (beta == T(0)) {
                for (int64_t c = 0; c < ncols; ++c) crow[c] = t[c];
              } else {
                for (int64_t c = 0; c < ncols; ++c) crow[c] = beta * crow[c] + t[c];
              }
            }
          }
        }  // implicit barrier: nobody repacks B while another thread still reads it
      }
    }
  }
}

#ifdef CLIPCU_WITH_OPENBLAS
void blas_gemm(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
               int ldb, float beta, float* C) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A,
              lda, B, ldb, beta, C, N);
}
void blas_gemm(bool ta, bool tb, int M, int N, int K, double alpha, const double* A, int lda, const double* B,
               int ldb, double beta, double* C) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A,
              lda, B, ldb, beta, C, N);
}
#endif

}  // namespace

bool gemm_variant_available(GemmVariant v) {
#ifdef CLIPCU_WITH_OPENBLAS
  (void)v;
  return true;
#else
  return v != GemmVariant::OpenBLAS;
#endif
}

bool gemm_shares_openmp() {
#ifdef CLIPCU_WITH_OPENBLAS
  // 0: sequential, 1: pthreads, 2: OpenMP (OpenBLAS's own constants)
  static const bool shares = openblas_get_parallel() != 1;
  return shares;
#else
  return true;
#endif
}

const char* gemm_variant_name(GemmVariant v) {
  switch (v) {
    case GemmVariant::Auto: return "auto";
    case GemmVariant::Naive: return "naive";
    case GemmVariant::Blocked: return "blocked";
    case GemmVariant::OpenBLAS: return "openblas";
  }
  return "?";
}

template <class T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha,
          const T* A,  // [M, K] or [K, M]
          const T* B,  // [K, N] or [N, K]
          T beta,
          T* C,  // [M, N]
          GemmVariant variant) {
  // A plain throw, not CLIPCU_CHECK: the kernels library does not link the engine's error.cpp.
  if (M < 0 || N < 0 || K < 0) {
    throw Error("gemm: negative size M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K));
  }
  if (M == 0 || N == 0) return;
  if (K == 0) {
    scale_c(M, N, beta, C);
    return;
  }
  if (variant == GemmVariant::Auto) variant = gemm_variant_available(GemmVariant::OpenBLAS) ? GemmVariant::OpenBLAS
                                                                                            : GemmVariant::Blocked;
  switch (variant) {
    case GemmVariant::Naive: gemm_naive(trans_a, trans_b, M, N, K, alpha, A, B, beta, C); return;
    case GemmVariant::OpenBLAS:
#ifdef CLIPCU_WITH_OPENBLAS
      // CBLAS takes int sizes; bigger matrices go to the blocked loops rather than overflow.
      if (M <= INT_MAX && N <= INT_MAX && K <= INT_MAX) {
        const int lda = int(trans_a ? M : K), ldb = int(trans_b ? K : N);
        blas_gemm(trans_a, trans_b, int(M), int(N), int(K), alpha, A, lda, B, ldb, beta, C);
        return;
      }
#endif
      [[fallthrough]];
    case GemmVariant::Auto:
    case GemmVariant::Blocked: gemm_blocked(trans_a, trans_b, M, N, K, alpha, A, B, beta, C); return;
  }
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, const float*, float, float*,
                          GemmVariant);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, const double*, double,
                           double*, GemmVariant);

}  // namespace clipcu::cpu
