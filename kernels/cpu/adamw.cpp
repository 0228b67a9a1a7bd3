// CPU AdamW: one elementwise loop per parameter tensor (OpenMP over elements: every element is
// independent), plus the deterministic sum of squares used by global gradient-norm clipping
// (OpenMP over fixed blocks of kBlock elements, block sums added in index order). One variant.
#include "kernels/cpu/adamw.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace clipcu::cpu {

namespace {
constexpr int64_t kBlock = 1 << 14;
}

template <class T>
void adamw_step(int64_t n, const AdamWStep& s, T* param, const T* grad, T* exp_avg, T* exp_avg_sq) {
  const double decay = 1.0 - s.lr * s.weight_decay;
  const double step_size = s.lr / (1.0 - std::pow(s.beta1, double(s.t)));
  const double bc2_sqrt = std::sqrt(1.0 - std::pow(s.beta2, double(s.t)));
  const double b1 = s.beta1, b2 = s.beta2, eps = s.eps;
#pragma omp parallel for schedule(static) if (n > kBlock)
  for (int64_t i = 0; i < n; ++i) {
    const double g = double(grad[i]);
    const double m = b1 * double(exp_avg[i]) + (1.0 - b1) * g;
    const double v = b2 * double(exp_avg_sq[i]) + (1.0 - b2) * g * g;
    const double p = double(param[i]) * decay - step_size * m / (std::sqrt(v) / bc2_sqrt + eps);
    exp_avg[i] = T(m);
    exp_avg_sq[i] = T(v);
    param[i] = T(p);
  }
}

template <class T>
double sum_squares(int64_t n, const T* x) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(size_t(blocks), 0.0);
#pragma omp parallel for schedule(static) if (blocks > 1)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t end = std::min(n, (b + 1) * kBlock);
    double acc = 0.0;
    for (int64_t i = b * kBlock; i < end; ++i) acc += double(x[i]) * double(x[i]);
    partial[size_t(b)] = acc;
  }
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

template <class T>
void scale_inplace(int64_t n, T* x, double s) {
#pragma omp parallel for schedule(static) if (n > kBlock)
  for (int64_t i = 0; i < n; ++i) x[i] = T(double(x[i]) * s);
}

template void adamw_step<float>(int64_t, const AdamWStep&, float*, const float*, float*, float*);
template void adamw_step<double>(int64_t, const AdamWStep&, double*, const double*, double*, double*);
template double sum_squares<float>(int64_t, const float*);
template double sum_squares<double>(int64_t, const double*);
template void scale_inplace<float>(int64_t, float*, double);
template void scale_inplace<double>(int64_t, double*, double);

}  // namespace clipcu::cpu
