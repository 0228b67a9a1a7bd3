// CPU AdamW step (torch.optim.AdamW's update) and the reductions behind gradient-norm clipping.
//
// One fused pass per parameter tensor, element i (t = step count after the increment, >= 1):
//   p  = p * (1 - lr * weight_decay)                 decoupled weight decay
//   m  = beta1 * m + (1 - beta1) * g
//   v  = beta2 * v + (1 - beta2) * g^2
//   p -= lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
// computed in float64 per element and stored in the parameter's type.
#pragma once
#include <cstdint>

namespace clipcu::cpu {

struct AdamWStep {
  double lr = 0.0;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;  // 0 for parameters excluded from decay
  int64_t t = 1;              // the step number, counting from 1
};

template <class T>
void adamw_step(int64_t n, const AdamWStep& s,
                T* param,        // [n] (updated)
                const T* grad,   // [n]
                T* exp_avg,      // [n] (updated) first moment
                T* exp_avg_sq);  // [n] (updated) second moment

// sum_i x[i]^2 in float64. Fixed-size blocks summed in parallel, then the block sums added in
// order: the result does not depend on the thread count.
template <class T>
double sum_squares(int64_t n, const T* x);  // x [n]

// x *= s
template <class T>
void scale_inplace(int64_t n, T* x, double s);  // x [n]

}  // namespace clipcu::cpu
