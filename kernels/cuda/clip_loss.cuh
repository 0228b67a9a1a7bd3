// CUDA fused CLIP contrastive loss, forward and backward, with memory linear in the batch: the
// [B, B] logits are never stored (tiles are recomputed). Host interface.
//
// Same math as kernels/cpu/clip_loss.h: In, Tn = rows / max(||row||, 1e-12); L = exp(s) In Tn^T;
// r_i, c_j the row and column log-sum-exp; loss = (1/2B) sum_i (r_i + c_i - 2 L_ii);
// dL_ij = g/(2B) (exp(L_ij - r_i) + exp(L_ij - c_j) - 2 [i == j]);
// d s = sum_ij dL_ij L_ij; d In = exp(s) dL Tn, d Tn = exp(s) dL^T In, then the L2-normalize
// backward. The log-scale, the incoming gradient and the loss live on the device (no host sync).
// The saved state is float whatever the storage type. Gradients ACCUMULATE (+=).
//
// One variant: the kernels are SIMT tiles (32 x 32 score tiles in registers, E in chunks of 32
// through shared memory); the image-side and text-side gradients are the same kernel with the
// roles of the two feature sets swapped, each block owning 16 rows of its side (no atomics).
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/common/types.h"

namespace clipcu::cuda {

template <class T>
struct ClipLossArgs {
  int64_t B = 0, E = 0;
  const T* image = nullptr;      // [B, E] unnormalized image features
  const T* text = nullptr;       // [B, E] unnormalized text features
  const T* log_scale = nullptr;  // [1] s (device)
  // written by forward, read by backward
  float* image_n = nullptr;     // [B, E]
  float* text_n = nullptr;      // [B, E]
  float* image_norm = nullptr;  // [B] ||I_b|| (unclamped)
  float* text_norm = nullptr;   // [B]
  float* row_lse = nullptr;     // [B] r
  float* col_lse = nullptr;     // [B] c
  float* loss = nullptr;        // [1]
  T* logits = nullptr;          // [B, B] or nullptr: logits_per_image, written only when given
  float* scratch = nullptr;     // [B] backward: per-row terms of d s
};

template <class T>
void clip_loss_forward(const ClipLossArgs<T>& a, cudaStream_t stream);

// grad_loss: [1] on the device (d out / d loss).
template <class T>
void clip_loss_backward(const ClipLossArgs<T>& a, const float* grad_loss,
                        T* grad_image,      // [B, E] or nullptr
                        T* grad_text,       // [B, E] or nullptr
                        T* grad_log_scale,  // [1] or nullptr
                        cudaStream_t stream);

}  // namespace clipcu::cuda
