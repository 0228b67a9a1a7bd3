// CPU batch normalization over [N, C, HW] (BatchNorm2d with HW = H*W), float and double.
//
// Training: per channel c, mean and biased variance over the M = N*HW values of c;
//   y = (x - mean) * rstd * weight + bias with rstd = 1/sqrt(var + eps); the running statistics
//   are updated in place: running = (1 - momentum) * running + momentum * batch, with the
//   UNBIASED variance var * M / (M - 1) for running_var (PyTorch's rule; needs M > 1).
// Inference: mean = running_mean, rstd = 1/sqrt(running_var + eps).
// Both modes save mean and rstd [C] for backward.
// relu (the fused batch_norm2d_relu): y = max(0, y), and backward masks dy with y > 0 (relu_y:
// that output), so the ResNet's bn + relu is one pass each way instead of two.
//
// The caller (engine/ops_batchnorm.cpp) validates shapes. weight / bias may be nullptr (treated
// as 1 / 0). Backward ACCUMULATES (+=) into dx / dweight / dbias; nullptr skips a gradient.
#pragma once
#include <cstdint>

namespace clipcu::cpu {

template <class T>
void batchnorm2d_forward_train(int64_t N, int64_t C, int64_t HW,
                               const T* x,       // [N, C, HW]
                               const T* weight,  // [C] or nullptr
                               const T* bias,    // [C] or nullptr
                               double momentum, double eps,
                               T* y,             // [N, C, HW] (written)
                               T* save_mean,     // [C] (written)
                               T* save_rstd,     // [C] (written)
                               T* running_mean,  // [C] (updated in place) or nullptr
                               T* running_var,   // [C] (updated in place) or nullptr
                               bool relu = false);

template <class T>
void batchnorm2d_forward_eval(int64_t N, int64_t C, int64_t HW,
                              const T* x,             // [N, C, HW]
                              const T* weight,        // [C] or nullptr
                              const T* bias,          // [C] or nullptr
                              const T* running_mean,  // [C]
                              const T* running_var,   // [C]
                              double eps,
                              T* y,           // [N, C, HW] (written)
                              T* save_mean,   // [C] (written) or nullptr
                              T* save_rstd,   // [C] (written) or nullptr
                              bool relu = false);

// training: the statistics depend on x, so dx = weight * rstd * (dy - mean(dy) - xhat * mean(dy * xhat));
// inference: they are constants, dx = weight * rstd * dy. dweight = sum dy * xhat, dbias = sum dy.
// With relu_y, dy is replaced by dy * (relu_y > 0) everywhere.
template <class T>
void batchnorm2d_backward(int64_t N, int64_t C, int64_t HW, bool training,
                          const T* x,       // [N, C, HW]
                          const T* weight,  // [C] or nullptr
                          const T* mean,    // [C] (saved by forward)
                          const T* rstd,    // [C] (saved by forward)
                          const T* dy,      // [N, C, HW]
                          T* dx,            // [N, C, HW] (accumulated) or nullptr
                          T* dweight,       // [C] (accumulated) or nullptr
                          T* dbias,         // [C] (accumulated) or nullptr
                          const T* relu_y = nullptr);  // [N, C, HW]: the fused op's output, or nullptr

}  // namespace clipcu::cpu
