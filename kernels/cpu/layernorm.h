// CPU layer normalization over the last dimension, forward and backward.
//
//   mean = sum_c x / C, var = sum_c (x - mean)^2 / C (biased), rstd = 1 / sqrt(var + eps)
//   y = (x - mean) * rstd * weight + bias
// Forward saves mean and rstd per row; backward uses them instead of recomputing the statistics:
//   xhat = (x - mean) * rstd, g = dy * weight
//   dx = rstd * (g - mean_c(g) - xhat * mean_c(g * xhat))
//   dweight = sum_rows dy * xhat, dbias = sum_rows dy
// Backward ACCUMULATES (+=) into dx / dweight / dbias (the tape's contract); nullptr skips one.
// weight / bias may be nullptr (treated as ones / zeros).
#pragma once
#include <cstdint>

namespace clipcu::cpu {

template <class T>
void layernorm_forward(int64_t N, int64_t C, double eps,
                       const T* x,       // [N, C]
                       const T* weight,  // [C] or nullptr
                       const T* bias,    // [C] or nullptr
                       T* y,             // [N, C]
                       T* mean,          // [N]
                       T* rstd);         // [N]

template <class T>
void layernorm_backward(int64_t N, int64_t C,
                        const T* dy,      // [N, C]
                        const T* x,       // [N, C]
                        const T* weight,  // [C] or nullptr
                        const T* mean,    // [N]
                        const T* rstd,    // [N]
                        T* dx,            // [N, C] or nullptr
                        T* dweight,       // [C] or nullptr
                        T* dbias);        // [C] or nullptr

}  // namespace clipcu::cpu
