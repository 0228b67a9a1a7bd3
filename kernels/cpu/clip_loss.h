// CPU reference of the fused CLIP contrastive loss, forward and backward.
//
// From unnormalized features I, T [B, E] and a log-scale s:
//   In = I / max(||I_b||, eps), Tn = T / max(||T_b||, eps)       (rows; eps = 1e-12)
//   L  = exp(s) In Tn^T                                          [B, B] (logits_per_image)
//   r_i = lse_j L[i, j],  c_j = lse_i L[i, j]                     (row and column log-sum-exp)
//   loss = (1/2B) (sum_i (r_i - L[i,i]) + sum_j (c_j - L[j,j])) (CE over rows and over columns,
//                                                                labels 0..B-1, averaged)
// Backward, with g = d out / d loss:
//   dL[i, j] = g/(2B) (exp(L[i,j] - r_i) + exp(L[i,j] - c_j) - 2 [i == j])
//   d s      = sum_ij dL[i, j] L[i, j]                            (L is linear in exp(s))
//   d In     = exp(s) dL Tn,   d Tn = exp(s) dL^T In,  then the L2-normalization backward.
// Forward saves In, Tn, the norms, L and both lse vectors; backward needs nothing else.
#pragma once
#include <cstdint>

namespace clipcu::cpu {

// Inputs and the saved state of one clip loss (flash-attention style params struct).
template <class T>
struct ClipLossParams {
  int64_t B = 0, E = 0;
  const T* image = nullptr;  // [B, E] unnormalized image features
  const T* text = nullptr;   // [B, E] unnormalized text features
  T log_scale = T(0);        // s: logits are scaled by exp(s)
  // written by forward, read by backward
  T* image_n = nullptr;     // [B, E] normalized image features
  T* text_n = nullptr;      // [B, E] normalized text features
  T* image_norm = nullptr;  // [B] ||I_b|| (unclamped)
  T* text_norm = nullptr;   // [B] ||T_b||
  T* logits = nullptr;      // [B, B] L = exp(s) In Tn^T (logits_per_image; its transpose is per text)
  T* row_lse = nullptr;     // [B] r
  T* col_lse = nullptr;     // [B] c
};

// Fills the saved state and returns the loss. B >= 1.
template <class T>
T clip_loss_forward(const ClipLossParams<T>& p);

// Accumulates (+=) the gradients into the non-null outputs:
// grad_image, grad_text [B, E], grad_log_scale [1].
template <class T>
void clip_loss_backward(const ClipLossParams<T>& p, T grad_loss,
                        T* grad_image,       // [B, E] or nullptr
                        T* grad_text,        // [B, E] or nullptr
                        T* grad_log_scale);  // [1] or nullptr

}  // namespace clipcu::cpu
