// CPU reference of the mean softmax cross entropy with integer targets, forward and backward.
//
//   lse_n  = log sum_k exp(logits[n, k])          (max-shifted: stable for any logit range)
//   loss   = (1/N) sum_n (lse_n - logits[n, target_n])
//   d loss / d logits[n, k] = (softmax(logits_n)_k - [k == target_n]) / N
// Forward saves lse (one value per row) so backward rebuilds the softmax without a second
// reduction.
#pragma once
#include <cstdint>

namespace clipcu::cpu {

// Throws clipcu::Error naming the first target outside [0, C), its row and C.
template <class I>
void softmax_xent_check_targets(int64_t N, int64_t C, const I* targets);  // [N]

// Validates the targets, writes lse and returns the mean loss. N >= 1, C >= 1.
template <class T, class I>
T softmax_xent_forward(int64_t N, int64_t C,
                       const T* logits,   // [N, C]
                       const I* targets,  // [N]
                       T* lse);           // [N] saved for backward

// grad_logits += grad_loss * (softmax - onehot) / N (accumulates).
template <class T, class I>
void softmax_xent_backward(int64_t N, int64_t C,
                           const T* logits,   // [N, C]
                           const I* targets,  // [N]
                           const T* lse,      // [N]
                           T grad_loss,
                           T* grad_logits);  // [N, C]

}  // namespace clipcu::cpu
