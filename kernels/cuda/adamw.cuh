// CUDA multi-tensor AdamW: every parameter in one launch, global gradient norm and clipping,
// float32 master weights with an optional bf16 copy. Host interface.
//
// The parameters are described by an array of AdamWTensor in device memory (built once by the
// optimizer) and cut into chunks of kAdamWChunk elements; chunk_start[t] is the first chunk of
// tensor t (adamw_layout computes it on the host), so block c finds its tensor by a binary search
// and there is one flat grid over all parameters.
//
//   grad_norm:  pass 1, each chunk's sum of squares (double) -> partial[chunk]; pass 2, one block
//               adds the partials in chunk order: norm = sqrt(sum). clip_coef = max_norm /
//               (norm + 1e-6) when max_norm >= 0 and norm > max_norm (finite), else 1
//               (PyTorch's clip_grad_norm_). Deterministic.
//   adamw_step: per element, with g = grad * clip_coef (the gradients themselves are not
//               rescaled in memory; the update is the same):
//                 p = p (1 - lr wd); m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2
//                 p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//               and param_bf16 = bf16(p) when the tensor has a bf16 copy. When `norm` is given
//               and not finite, the step does nothing (a NaN/inf gradient skips the update).
// Gradients are float or bf16 (all tensors of one launch alike); math in float.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/cuda/common/types.h"

namespace clipcu::cuda {

inline constexpr int64_t kAdamWChunk = 65536;

struct AdamWTensor {
  float* param = nullptr;        // [n] float32 (master) weights
  bf16* param_bf16 = nullptr;    // [n] or nullptr: the bf16 copy the model computes with
  const void* grad = nullptr;    // [n] float or bf16 (the launch's G)
  float* exp_avg = nullptr;      // [n]
  float* exp_avg_sq = nullptr;   // [n]
  int64_t n = 0;
  float weight_decay = 0.f;      // 0 for parameters excluded from decay
};

// chunk_start [num_tensors + 1] for tensors of the given sizes; chunk_start.back() = chunks.
std::vector<int32_t> adamw_layout(const std::vector<int64_t>& sizes);

struct AdamWHyper {
  double lr = 0.0, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  int64_t step = 1;  // t, counting from 1
};

// partial: `chunks` doubles of scratch. norm_out, clip_coef: [1] each on the device.
template <class G>
void grad_norm(int num_tensors, const AdamWTensor* tensors, const int32_t* chunk_start, int64_t chunks,
               double* partial, float max_norm, float* norm_out, float* clip_coef, cudaStream_t stream);

// clip_coef: [1] or nullptr (no clipping); norm: [1] or nullptr (no non-finite skip).
template <class G>
void adamw_step(int num_tensors, const AdamWTensor* tensors, const int32_t* chunk_start, int64_t chunks,
                const AdamWHyper& h, const float* clip_coef, const float* norm, cudaStream_t stream);

}  // namespace clipcu::cuda
