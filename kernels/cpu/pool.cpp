// CPU average pooling (kernel = stride = k). A plane (one image, one channel) per OpenMP
// iteration; forward sums each window in float64 in row order (deterministic), backward spreads
// each window's gradient over its k*k inputs. Windows do not overlap, so there is no scatter
// conflict. One variant: this is the oracle and the CPU engine both.
#include "kernels/cpu/pool.h"

namespace clipcu::cpu {

namespace {
// Smaller tensors run serially: a team costs more than it saves there.
constexpr int64_t kMinParallelWork = 1 << 15;
}  // namespace

template <class T>
void avgpool2d_forward(int64_t NC, int64_t H, int64_t W, int64_t k, const T* x, T* y) {
  const int64_t OH = H / k, OW = W / k;
  const double inv = 1.0 / double(k * k);
#pragma omp parallel for schedule(static) if (NC * H * W > kMinParallelWork)
  for (int64_t p = 0; p < NC; ++p) {
    const T* xp = x + p * H * W;
    T* yp = y + p * OH * OW;
    for (int64_t oh = 0; oh < OH; ++oh) {
      for (int64_t ow = 0; ow < OW; ++ow) {
        double acc = 0.0;
        for (int64_t i = 0; i < k; ++i) {
          const T* row = xp + (oh * k + i) * W + ow * k;
          for (int64_t j = 0; j < k; ++j) acc += double(row[j]);
        }
        yp[oh * OW + ow] = T(acc * inv);
      }
    }
  }
}

template <class T>
void avgpool2d_backward(int64_t NC, int64_t H, int64_t W, int64_t k, const T* dy, T* dx) {
  const int64_t OH = H / k, OW = W / k;
  const double inv = 1.0 / double(k * k);
#pragma omp parallel for schedule(static) if (NC * H * W > kMinParallelWork)
  for (int64_t p = 0; p < NC; ++p) {
    const T* dyp = dy + p * OH * OW;
    T* dxp = dx + p * H * W;
    for (int64_t ih = 0; ih < OH * k; ++ih) {
      const T* dyr = dyp + (ih / k) * OW;
      T* dxr = dxp + ih * W;
      for (int64_t iw = 0; iw < OW * k; ++iw) dxr[iw] += T(double(dyr[iw / k]) * inv);
    }
  }
}

template void avgpool2d_forward<float>(int64_t, int64_t, int64_t, int64_t, const float*, float*);
template void avgpool2d_forward<double>(int64_t, int64_t, int64_t, int64_t, const double*, double*);
template void avgpool2d_backward<float>(int64_t, int64_t, int64_t, int64_t, const float*, float*);
template void avgpool2d_backward<double>(int64_t, int64_t, int64_t, int64_t, const double*, double*);

}  // namespace clipcu::cpu
