// CPU mean softmax cross entropy (see softmax_xent.h for the math).
//
// Parallelisation: OpenMP over rows (each row's lse is a float64 max-shifted sum in index
// order; the per-row losses are combined serially in row order, so the loss is the same for
// every thread count). Backward: OpenMP over rows, each thread writing its own rows.
#include "kernels/cpu/softmax_xent.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <vector>

#include "engine/error.h"

namespace clipcu::cpu {

namespace {
constexpr int64_t kParallelMin = 1 << 14;  // elements below which threads cost more than they save
}

template <class I>
void softmax_xent_check_targets(int64_t N, int64_t C, const I* targets) {
  for (int64_t n = 0; n < N; ++n) {
    if (targets[n] < 0 || int64_t(targets[n]) >= C) {
      std::ostringstream m;
      m << "softmax_cross_entropy: target " << int64_t(targets[n]) << " at row " << n << " is out of range [0, C=" << C
        << ")";
      throw Error(m.str());
    }
  }
}

template <class T, class I>
T softmax_xent_forward(int64_t N, int64_t C, const T* logits, const I* targets, T* lse) {
  softmax_xent_check_targets(N, C, targets);
  std::vector<double> row_loss(static_cast<size_t>(N));
#pragma omp parallel for if (N * C > kParallelMin)
  for (int64_t n = 0; n < N; ++n) {
    const T* l = logits + n * C;
    double mx = -INFINITY;
    for (int64_t k = 0; k < C; ++k) mx = std::max(mx, double(l[k]));
    double s = 0.0;
    for (int64_t k = 0; k < C; ++k) s += std::exp(double(l[k]) - mx);
    const double v = mx + std::log(s);
    lse[n] = T(v);
    row_loss[size_t(n)] = v - double(l[int64_t(targets[n])]);
  }
  double total = 0.0;
  for (double r : row_loss) total += r;
  return T(total / double(N));
}

template <class T, class I>
void softmax_xent_backward(int64_t N, int64_t C, const T* logits, const I* targets, const T* lse, T grad_loss,
                           T* grad_logits) {
  softmax_xent_check_targets(N, C, targets);
  const double g = double(grad_loss) / double(N);
#pragma omp parallel for if (N * C > kParallelMin)
  for (int64_t n = 0; n < N; ++n) {
    const T* l = logits + n * C;
    T* d = grad_logits + n * C;
    const double m = double(lse[n]);
    const int64_t t = int64_t(targets[n]);
    for (int64_t k = 0; k < C; ++k) {
      const double p = std::exp(double(l[k]) - m);
      d[k] += T(g * (k == t ? p - 1.0 : p));
    }
  }
}

#define CLIPCU_XENT(T, I)                                                          \
  template T softmax_xent_forward<T, I>(int64_t, int64_t, const T*, const I*, T*); \
  template void softmax_xent_backward<T, I>(int64_t, int64_t, const T*, const I*, const T*, T, T*);
CLIPCU_XENT(float, int32_t)
CLIPCU_XENT(float, int64_t)
CLIPCU_XENT(double, int32_t)
CLIPCU_XENT(double, int64_t)
#undef CLIPCU_XENT
template void softmax_xent_check_targets<int32_t>(int64_t, int64_t, const int32_t*);
template void softmax_xent_check_targets<int64_t>(int64_t, int64_t, const int64_t*);

}  // namespace clipcu::cpu
