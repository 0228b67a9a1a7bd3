// CPU layer normalization (see layernorm.h for the math).
//
// Forward: rows are independent; OpenMP splits them across threads. Each row takes two passes
// (mean, then the centred sum of squares) with float64 sums, which avoids the cancellation of
// the one-pass E[x^2] - E[x]^2 form when |mean| >> std. Row sums use eight fixed partial sums
// (lane_sum) so that they vectorize and still add in one fixed order.
// Backward: one pass over rows computes dx (per row: two float64 row sums, then the update) and
// adds each row's dy * xhat and dy into the partial sums of its chunk. Chunks are fixed runs of
// rows that depend only on N, never on the thread count; the partials are added in chunk order
// at the end, so dweight / dbias are the same bits on every run.
// Both directions are compiled twice, for baseline x86-64 and for AVX2 + FMA (4 doubles or 8
// floats a vector), and pick the copy by the CPU at run time (vec_math.h).
#include "kernels/cpu/layernorm.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/vec_math.h"

namespace clipcu::cpu {

namespace {

constexpr int64_t kParallelMin = 1 << 15;  // elements; below this one thread is faster (no thread wake-up)

// sum over c < C of term(c), in float64 with 8 independent partial sums. One running sum is a
// chain of dependent adds (the compiler may not reorder it); eight lanes fill vector registers
// and the pipeline, and the order is still fixed, so the result is deterministic.
template <class Term>
[[gnu::always_inline]] inline double lane_sum(int64_t C, Term term) {
  constexpr int64_t L = 8;
  double acc[L] = {};
  int64_t c = 0;
  for (; c + L <= C; c += L)
    for (int64_t l = 0; l < L; ++l) acc[l] += term(c + l);
  for (int64_t l = 0; c < C; ++c, ++l) acc[l] += term(c);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// One row of the forward (inlined into a baseline and an AVX2 + FMA copy).
template <class T>
[[gnu::always_inline]] inline void forward_row(int64_t C, double eps,
                                               const T* xr,      // [C]
                                               const T* weight,  // [C] or nullptr
                                               const T* bias,    // [C] or nullptr
                                               T* yr,            // [C]
                                               T* mean,          // [1]
                                               T* rstd) {        // [1]
  const double mu = C > 0 ? lane_sum(C, [&](int64_t c) { return double(xr[c]); }) / double(C) : 0.0;
  const double ss = lane_sum(C, [&](int64_t c) {
    const double d = double(xr[c]) - mu;
    return d * d;
  });
  const double var = C > 0 ? ss / double(C) : 0.0;
  const double rs = 1.0 / std::sqrt(var + eps);
  *mean = T(mu);
  *rstd = T(rs);
  const T m = T(mu), r = T(rs);
  if (weight && bias) {
    for (int64_t c = 0; c < C; ++c) yr[c] = (xr[c] - m) * r * weight[c] + bias[c];
  } else {
    for (int64_t c = 0; c < C; ++c) {
      T v = (xr[c] - m) * r;
      if (weight) v *= weight[c];
      if (bias) v += bias[c];
      yr[c] = v;
    }
  }
}

template <class T>
CLIPCU_TARGET_AVX2 void forward_rows_avx2(int64_t n0, int64_t n1, int64_t C, double eps, const T* x, const T* weight,
                                          const T* bias, T* y, T* mean, T* rstd) {
  for (int64_t n = n0; n < n1; ++n) forward_row(C, eps, x + n * C, weight, bias, y + n * C, mean + n, rstd + n);
}

template <class T>
void forward_rows(int64_t n0, int64_t n1, int64_t C, double eps, const T* x, const T* weight, const T* bias, T* y,
                  T* mean, T* rstd) {
  for (int64_t n = n0; n < n1; ++n) forward_row(C, eps, x + n * C, weight, bias, y + n * C, mean + n, rstd + n);
}

}  // namespace

template <class T>
void layernorm_forward(int64_t N, int64_t C, double eps,
                       const T* x,       // [N, C]
                       const T* weight,  // [C] or nullptr
                       const T* bias,    // [C] or nullptr
                       T* y,             // [N, C]
                       T* mean,          // [N]
                       T* rstd) {        // [N]
  // rows in fixed blocks (whole blocks per thread), each block one call of the chosen copy
  constexpr int64_t kRows = 32;
  const int64_t blocks = (N + kRows - 1) / kRows;
  const bool avx2 = cpu_has_avx2_fma();
#pragma omp parallel for schedule(static) if (N * C >= kParallelMin)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t n0 = b * kRows, n1 = std::min(N, n0 + kRows);
    if (avx2) {
      forward_rows_avx2(n0, n1, C, eps, x, weight, bias, y, mean, rstd);
    } else {
      forward_rows(n0, n1, C, eps, x, weight, bias, y, mean, rstd);
    }
  }
}

namespace {

// One chunk of rows of the backward: dx of each row, and the chunk's partial sums for dweight
// and dbias (inlined into a baseline and an AVX2 + FMA copy).
template <class T>
[[gnu::always_inline]] inline void backward_chunk(int64_t n0, int64_t n1, int64_t C,
                                                  const T* dy,      // [N, C]
                                                  const T* x,       // [N, C]
                                                  const T* weight,  // [C] or nullptr
                                                  const T* mean,    // [N]
                                                  const T* rstd,    // [N]
                                                  T* dx,            // [N, C] or nullptr
                                                  double* pw,       // [C] or nullptr: sum of dy * xhat
                                                  double* pb,       // [C] or nullptr: sum of dy
                                                  T* xhat,          // [C] scratch
                                                  T* g) {           // [C] scratch
  for (int64_t n = n0; n < n1; ++n) {
    const T* xr = x + n * C;
    const T* gr = dy + n * C;
    const T m = mean[n], r = rstd[n];
    for (int64_t c = 0; c < C; ++c) xhat[c] = (xr[c] - m) * r;
    if (pw) {
      for (int64_t c = 0; c < C; ++c) {
        pw[c] += double(gr[c]) * double(xhat[c]);
        pb[c] += double(gr[c]);
      }
    }
    if (!dx) continue;
    if (weight) {
      for (int64_t c = 0; c < C; ++c) g[c] = gr[c] * weight[c];
    } else {
      std::copy(gr, gr + C, g);
    }
    // dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
    const double sg = lane_sum(C, [&](int64_t c) { return double(g[c]); });
    const double sgx = lane_sum(C, [&](int64_t c) { return double(g[c]) * double(xhat[c]); });
    const T a = T(sg / double(C)), b = T(sgx / double(C));
    T* dxr = dx + n * C;
    for (int64_t c = 0; c < C; ++c) dxr[c] += r * (g[c] - a - xhat[c] * b);
  }
}

template <class T>
CLIPCU_TARGET_AVX2 void backward_chunk_avx2(int64_t n0, int64_t n1, int64_t C, const T* dy, const T* x,
                                            const T* weight, const T* mean, const T* rstd, T* dx, double* pw,
                                            double* pb, T* xhat, T* g) {
  backward_chunk(n0, n1, C, dy, x, weight, mean, rstd, dx, pw, pb, xhat, g);
}

template <class T>
void backward_chunk_base(int64_t n0, int64_t n1, int64_t C, const T* dy, const T* x, const T* weight, const T* mean,
                         const T* rstd, T* dx, double* pw, double* pb, T* xhat, T* g) {
  backward_chunk(n0, n1, C, dy, x, weight, mean, rstd, dx, pw, pb, xhat, g);
}

}  // namespace

template <class T>
void layernorm_backward(int64_t N, int64_t C,
                        const T* dy,      // [N, C]
                        const T* x,       // [N, C]
                        const T* weight,  // [C] or nullptr
                        const T* mean,    // [N]
                        const T* rstd,    // [N]
                        T* dx,            // [N, C] or nullptr
                        T* dweight,       // [C] or nullptr
                        T* dbias) {       // [C] or nullptr
  if (N <= 0 || C <= 0) return;
  const bool want_params = dweight || dbias;
  const int64_t rows_per_chunk = std::max<int64_t>(32, (N + 255) / 256);
  const int64_t chunks = (N + rows_per_chunk - 1) / rows_per_chunk;
  // [chunks, 2, C]: per chunk, sum of dy * xhat then sum of dy.
  std::vector<double> partial(want_params ? size_t(chunks * 2 * C) : 0, 0.0);

  const bool avx2 = cpu_has_avx2_fma();
#pragma omp parallel for schedule(static) if (N * C >= kParallelMin)
  for (int64_t ch = 0; ch < chunks; ++ch) {
    double* pw = want_params ? partial.data() + ch * 2 * C : nullptr;
    double* pb = want_params ? pw + C : nullptr;
    std::vector<T> xhat(static_cast<size_t>(C)), g(static_cast<size_t>(C));  // of one row
    const int64_t n0 = ch * rows_per_chunk, n1 = std::min(N, (ch + 1) * rows_per_chunk);
    if (avx2) {
      backward_chunk_avx2(n0, n1, C, dy, x, weight, mean, rstd, dx, pw, pb, xhat.data(), g.data());
    } else {
      backward_chunk_base(n0, n1, C, dy, x, weight, mean, rstd, dx, pw, pb, xhat.data(), g.data());
    }
  }

  if (want_params) {
    for (int64_t c = 0; c < C; ++c) {
      double sw = 0.0, sb = 0.0;
      for (int64_t ch = 0; ch < chunks; ++ch) {
        sw += partial[size_t(ch * 2 * C + c)];
        sb += partial[size_t(ch * 2 * C + C + c)];
      }
      if (dweight) dweight[c] += T(sw);
      if (dbias) dbias[c] += T(sb);
    }
  }
}

template void layernorm_forward<float>(int64_t, int64_t, double, const float*, const float*, const float*, float*,
                                       float*, float*);
template void layernorm_forward<double>(int64_t, int64_t, double, const double*, const double*, const double*,
                                        double*, double*, double*);
template void layernorm_backward<float>(int64_t, int64_t, const float*, const float*, const float*, const float*,
                                        const float*, float*, float*, float*);
template void layernorm_backward<double>(int64_t, int64_t, const double*, const double*, const double*,
                                         const double*, const double*, double*, double*, double*);

}  // namespace clipcu::cpu
