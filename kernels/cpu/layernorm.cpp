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
#include "kernels/cpu/layernorm.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace clipcu::cpu {

namespace {

constexpr int64_t kParallelMin = 1 << 13;  // elements; below this one thread is faster

// sum over c < C of term(c), in float64 with 8 independent partial sums. One running sum is a
// chain of dependent adds (the compiler may not reorder it); eight lanes fill vector registers
// and the pipeline, and the order is still fixed, so the result is deterministic.
template <class Term>
double lane_sum(int64_t C, Term term) {
  constexpr int64_t L = 8;
  double acc[L] = {};
  int64_t c = 0;
  for (; c + L <= C; c += L)
    for (int64_t l = 0; l < L; ++l) acc[l] += term(c + l);
  for (int64_t l = 0; c < C; ++c, ++l) acc[l] += term(c);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
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
#pragma omp parallel for schedule(static) if (N * C >= kParallelMin)
  for (int64_t n = 0; n < N; ++n) {
    const T* xr = x + n * C;
    T* yr = y + n * C;
    const double mu = C > 0 ? lane_sum(C, [&](int64_t c) { return double(xr[c]); }) / double(C) : 0.0;
    const double ss = lane_sum(C, [&](int64_t c) {
      const double d = double(xr[c]) - mu;
      return d * d;
    });
    const double var = C > 0 ? ss / double(C) : 0.0;
    const double rs = 1.0 / std::sqrt(var + eps);
    mean[n] = T(mu);
    rstd[n] = T(rs);
    const T m = T(mu), r = T(rs);
    for (int64_t c = 0; c < C; ++c) {
      T v = (xr[c] - m) * r;
      if (weight) v *= weight[c];
      if (bias) v += bias[c];
      yr[c] = v;
    }
  }
}

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

#pragma omp parallel for schedule(static) if (N * C >= kParallelMin)
  for (int64_t ch = 0; ch < chunks; ++ch) {
    double* pw = want_params ? partial.data() + ch * 2 * C : nullptr;
    double* pb = want_params ? pw + C : nullptr;
    std::vector<T> xhat(static_cast<size_t>(C)), g(static_cast<size_t>(C));  // of one row
    const int64_t n1 = std::min(N, (ch + 1) * rows_per_chunk);
    for (int64_t n = ch * rows_per_chunk; n < n1; ++n) {
      const T* xr = x + n * C;
      const T* gr = dy + n * C;
      const T m = mean[n], r = rstd[n];
      for (int64_t c = 0; c < C; ++c) xhat[size_t(c)] = (xr[c] - m) * r;
      if (want_params) {
        for (int64_t c = 0; c < C; ++c) {
          pw[c] += double(gr[c]) * double(xhat[size_t(c)]);
          pb[c] += double(gr[c]);
        }
      }
      if (!dx) continue;
      if (weight) {
        for (int64_t c = 0; c < C; ++c) g[size_t(c)] = gr[c] * weight[c];
      } else {
        std::copy(gr, gr + C, g.begin());
      }
      // dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
      const double sg = lane_sum(C, [&](int64_t c) { return double(g[size_t(c)]); });
      const double sgx = lane_sum(C, [&](int64_t c) { return double(g[size_t(c)]) * double(xhat[size_t(c)]); });
      const T a = T(sg / double(C)), b = T(sgx / double(C));
      T* dxr = dx + n * C;
      for (int64_t c = 0; c < C; ++c) dxr[c] += r * (g[size_t(c)] - a - xhat[size_t(c)] * b);
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
