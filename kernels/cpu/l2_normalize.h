// CPU reference of row-wise L2 normalization: y = x / max(||x||_2, eps), eps = 1e-12
// (torch.nn.functional.normalize's rule), forward and backward.
//
// Forward saves the unclamped row norms. Backward, with d = max(||x||, eps):
//   ||x|| > eps:  gx = (gy - y (y . gy)) / ||x||   (the projection off the row direction)
//   otherwise:    gx = gy / eps                    (the clamp is constant there)
#pragma once
#include <cstdint>

namespace clipcu::cpu {

inline constexpr double kL2NormalizeEps = 1e-12;

template <class T>
void l2_normalize_forward(int64_t N, int64_t C,
                          const T* x,  // [N, C]
                          T* y,        // [N, C]
                          T* norm);    // [N] ||x_n||_2 (unclamped), saved for backward

// gx += d loss / d x from the saved output and norms (accumulates).
template <class T>
void l2_normalize_backward(int64_t N, int64_t C,
                           const T* y,     // [N, C] the forward's output
                           const T* norm,  // [N]
                           const T* gy,    // [N, C]
                           T* gx);         // [N, C]

}  // namespace clipcu::cpu
