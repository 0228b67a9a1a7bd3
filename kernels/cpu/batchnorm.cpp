// CPU batch norm 2d. The layout [N, C, HW] puts channel c's M = N*HW values in N runs of HW
// contiguous elements. Every function loops over channels with OpenMP (a thread owns whole
// channels, so the per-channel sums are plain sequential float64 sums: deterministic); inside a
// channel the N runs are visited in order. Statistics use two passes (mean, then the centred sum
// of squares) for accuracy. One variant: this is the oracle and the CPU engine both.
#include "kernels/cpu/batchnorm.h"

#include <cmath>

namespace clipcu::cpu {

namespace {
// Smaller tensors run serially: a team costs more than it saves there.
constexpr int64_t kMinParallelWork = 1 << 15;

// y = x * scale + shift over channel c (then max(0, y) when relu).
template <class T>
void normalize_channel(int64_t N, int64_t C, int64_t HW, int64_t c, const T* x, double scale, double shift, bool relu,
                       T* y) {
  for (int64_t n = 0; n < N; ++n) {
    const T* xc = x + (n * C + c) * HW;
    T* yc = y + (n * C + c) * HW;
    for (int64_t i = 0; i < HW; ++i) yc[i] = T(double(xc[i]) * scale + shift);
    // the ReLU as a second pass over the run while it is in cache, in T like the relu op: fused
    // into the loop above (std::max or fmax on the double) it stopped vectorizing and took longer
    // than both passes
    if (relu)
      for (int64_t i = 0; i < HW; ++i) yc[i] = yc[i] > T(0) ? yc[i] : T(0);
  }
}

// dy, or dy where the fused relu's output is positive and 0 elsewhere (relu_y: that output).
// A multiplication by 0 or 1, not a select: a data-dependent branch here mispredicted half the
// time and made the fused op slower than batch norm and relu apart (the ryc test is
// loop-invariant, hoisted by the compiler). Like the unfused relu, dy * 0 is NaN for dy = inf.
template <class T>
inline double masked_dy(const T* dyc, const T* ryc, int64_t i) {
  return double(dyc[i]) * (ryc ? double(ryc[i] > T(0)) : 1.0);
}
}  // namespace

template <class T>
void batchnorm2d_forward_train(int64_t N, int64_t C, int64_t HW, const T* x, const T* weight, const T* bias,
                               double momentum, double eps, T* y, T* save_mean, T* save_rstd, T* running_mean,
                               T* running_var, bool relu) {
  const int64_t M = N * HW;
#pragma omp parallel for schedule(static) if (N * C * HW > kMinParallelWork)
  for (int64_t c = 0; c < C; ++c) {
    double sum = 0.0;
    for (int64_t n = 0; n < N; ++n) {
      const T* xc = x + (n * C + c) * HW;
      for (int64_t i = 0; i < HW; ++i) sum += double(xc[i]);
    }
    const double mean = M > 0 ? sum / double(M) : 0.0;
    double ss = 0.0;
    for (int64_t n = 0; n < N; ++n) {
      const T* xc = x + (n * C + c) * HW;
      for (int64_t i = 0; i < HW; ++i) {
        double dv = double(xc[i]) - mean;
        ss += dv * dv;
      }
    }
    const double var = M > 0 ? ss / double(M) : 0.0;  // biased: what normalizes
    const double rstd = 1.0 / std::sqrt(var + eps);
    const double g = weight ? double(weight[c]) : 1.0;
    const double b = bias ? double(bias[c]) : 0.0;
    // y = x * (g * rstd) + (b - mean * g * rstd)
    normalize_channel(N, C, HW, c, x, g * rstd, b - mean * g * rstd, relu, y);
    save_mean[c] = T(mean);
    save_rstd[c] = T(rstd);
    if (running_mean) running_mean[c] = T((1.0 - momentum) * double(running_mean[c]) + momentum * mean);
    if (running_var) {
      const double unbiased = M > 1 ? ss / double(M - 1) : 0.0;  // the op rejects M <= 1 in training
      running_var[c] = T((1.0 - momentum) * double(running_var[c]) + momentum * unbiased);
    }
  }
}

template <class T>
void batchnorm2d_forward_eval(int64_t N, int64_t C, int64_t HW, const T* x, const T* weight, const T* bias,
                              const T* running_mean, const T* running_var, double eps, T* y, T* save_mean,
                              T* save_rstd, bool relu) {
#pragma omp parallel for schedule(static) if (N * C * HW > kMinParallelWork)
  for (int64_t c = 0; c < C; ++c) {
    const double mean = double(running_mean[c]);
    const double rstd = 1.0 / std::sqrt(double(running_var[c]) + eps);
    const double g = weight ? double(weight[c]) : 1.0;
    const double b = bias ? double(bias[c]) : 0.0;
    normalize_channel(N, C, HW, c, x, g * rstd, b - mean * g * rstd, relu, y);
    if (save_mean) save_mean[c] = T(mean);
    if (save_rstd) save_rstd[c] = T(rstd);
  }
}

template <class T>
void batchnorm2d_backward(int64_t N, int64_t C, int64_t HW, bool training, const T* x, const T* weight, const T* mean,
                          const T* rstd, const T* dy, T* dx, T* dweight, T* dbias, const T* relu_y) {
  const int64_t M = N * HW;
#pragma omp parallel for schedule(static) if (N * C * HW > kMinParallelWork)
  for (int64_t c = 0; c < C; ++c) {
    const double mu = double(mean[c]), rs = double(rstd[c]);
    double sum_dy = 0.0, sum_dy_xhat = 0.0;
    for (int64_t n = 0; n < N; ++n) {
      const T* xc = x + (n * C + c) * HW;
      const T* dyc = dy + (n * C + c) * HW;
      const T* ryc = relu_y ? relu_y + (n * C + c) * HW : nullptr;
      for (int64_t i = 0; i < HW; ++i) {
        const double g = masked_dy(dyc, ryc, i);
        sum_dy += g;
        sum_dy_xhat += g * (double(xc[i]) - mu) * rs;
      }
    }
    if (dbias) dbias[c] += T(sum_dy);
    if (dweight) dweight[c] += T(sum_dy_xhat);
    if (!dx) continue;
    const double k = (weight ? double(weight[c]) : 1.0) * rs;
    const double mean_dy = training && M > 0 ? sum_dy / double(M) : 0.0;
    const double mean_dy_xhat = training && M > 0 ? sum_dy_xhat / double(M) : 0.0;
    for (int64_t n = 0; n < N; ++n) {
      const T* xc = x + (n * C + c) * HW;
      const T* dyc = dy + (n * C + c) * HW;
      const T* ryc = relu_y ? relu_y + (n * C + c) * HW : nullptr;
      T* dxc = dx + (n * C + c) * HW;
      for (int64_t i = 0; i < HW; ++i) {
        double xhat = (double(xc[i]) - mu) * rs;
        dxc[i] += T(k * (masked_dy(dyc, ryc, i) - mean_dy - xhat * mean_dy_xhat));
      }
    }
  }
}

#define CLIPCU_INSTANTIATE_BN(T)                                                                                      \
  template void batchnorm2d_forward_train<T>(int64_t, int64_t, int64_t, const T*, const T*, const T*, double, double, \
                                             T*, T*, T*, T*, T*, bool);                                               \
  template void batchnorm2d_forward_eval<T>(int64_t, int64_t, int64_t, const T*, const T*, const T*, const T*,        \
                                            const T*, double, T*, T*, T*, bool);                                      \
  template void batchnorm2d_backward<T>(int64_t, int64_t, int64_t, bool, const T*, const T*, const T*, const T*,      \
                                        const T*, T*, T*, T*, const T*);
CLIPCU_INSTANTIATE_BN(float)
CLIPCU_INSTANTIATE_BN(double)
#undef CLIPCU_INSTANTIATE_BN

}  // namespace clipcu::cpu
