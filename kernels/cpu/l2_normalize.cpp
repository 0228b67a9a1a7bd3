// CPU row-wise L2 normalization (see l2_normalize.h for the math).
//
// Parallelisation: OpenMP over rows; a row's norm and its dot product y . gy are float64 sums
// in index order, so results do not depend on the thread count.
#include "kernels/cpu/l2_normalize.h"

#include <algorithm>
#include <cmath>

namespace clipcu::cpu {

namespace {
constexpr int64_t kParallelMin = 1 << 15;  // elements below which threads cost more than they save
}

template <class T>
void l2_normalize_forward(int64_t N, int64_t C, const T* x, T* y, T* norm) {
#pragma omp parallel for if (N * C > kParallelMin)
  for (int64_t n = 0; n < N; ++n) {
    const T* xr = x + n * C;
    double ss = 0.0;
    for (int64_t c = 0; c < C; ++c) ss += double(xr[c]) * double(xr[c]);
    const double nrm = std::sqrt(ss);
    const double inv = 1.0 / std::max(nrm, kL2NormalizeEps);
    T* yr = y + n * C;
    for (int64_t c = 0; c < C; ++c) yr[c] = T(double(xr[c]) * inv);
    norm[n] = T(nrm);
  }
}

template <class T>
void l2_normalize_backward(int64_t N, int64_t C, const T* y, const T* norm, const T* gy, T* gx) {
#pragma omp parallel for if (N * C > kParallelMin)
  for (int64_t n = 0; n < N; ++n) {
    const T* yr = y + n * C;
    const T* gr = gy + n * C;
    T* g = gx + n * C;
    const double nrm = double(norm[n]);
    if (nrm > kL2NormalizeEps) {
      double dot = 0.0;
      for (int64_t c = 0; c < C; ++c) dot += double(yr[c]) * double(gr[c]);
      const double inv = 1.0 / nrm;
      for (int64_t c = 0; c < C; ++c) g[c] += T((double(gr[c]) - double(yr[c]) * dot) * inv);
    } else {
      // the denominator is the constant eps: y = x / eps is linear in x
      const double inv = 1.0 / kL2NormalizeEps;
      for (int64_t c = 0; c < C; ++c) g[c] += T(double(gr[c]) * inv);
    }
  }
}

template void l2_normalize_forward<float>(int64_t, int64_t, const float*, float*, float*);
template void l2_normalize_forward<double>(int64_t, int64_t, const double*, double*, double*);
template void l2_normalize_backward<float>(int64_t, int64_t, const float*, const float*, const float*, float*);
template void l2_normalize_backward<double>(int64_t, int64_t, const double*, const double*, const double*, double*);

}  // namespace clipcu::cpu
