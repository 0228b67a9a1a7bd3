// CUDA layer norm fused with the residual add, bias + activation, and deterministic column sums;
// forward and backward. Host interface.
//
// Layer norm over the last dim C of N rows (same math as kernels/cpu/layernorm.h):
//   h = x + residual (when residual; h is written to h_out when asked: the new residual stream)
//   mean = sum_c h / C, var = sum_c (h - mean)^2 / C, rstd = 1 / sqrt(var + eps)
//   y = (h - mean) * rstd * weight + bias           (weight / bias may be nullptr: ones / zeros)
// Backward, xhat = (h - mean) rstd, g = dy * weight:
//   dh = rstd (g - mean_c(g) - xhat mean_c(g xhat));  dweight += sum_rows dy xhat; dbias += sum_rows dy
// dh is ACCUMULATED (+=) into dx and, when given, into dresidual too (both inputs of the add get
// it); dweight / dbias accumulate. The column sums are deterministic: pass 1 writes one partial
// per fixed chunk of rows (the chunking depends only on N), pass 2 adds the chunks in order.
//
// Bias + activation: y = act(x + bias[c]); backward dx += dy * act'(x + bias),
// dbias += sum_rows dy * act'(x + bias) (the same two passes).
// Column sums: out[c] += sum_r x[r, c] (a linear layer's bias gradient).
//
// Variants (LayerNormKernel):
//   Simple: one block per row (forward, three passes over the row through the cache); backward
//           one block per chunk of rows with block reductions.
//   Warp:   one warp per row with the row held in registers, 4-element vector loads (needs
//           C % 4 == 0, C <= 2048 and aligned pointers; otherwise Simple runs); backward one
//           block of 8 warps per chunk, the warps' column partials combined in warp order.
//   Pipelined: the forward is Warp's; the backward keeps a warp's whole row group in flight:
//           each warp takes 1-3 rows at once (6-9 KB of loads at CLIP's widths), 16-byte
//           vectors (4 float, 8 bf16), every load of the group (dy, h, mean, rstd and the dx
//           being accumulated) issued before the first reduction, and a wide one-launch pass 2.
//           Needs C % (16 / sizeof(T)) == 0, C <= 1024 and 16-byte aligned pointers; otherwise
//           it runs what Warp would run. Same workspace and chunking as Warp; deterministic, but
//           its bits may differ from Warp's (another summation order).
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/common/types.h"

namespace clipcu::cuda {

enum class LayerNormKernel { Simple, Warp, Pipelined };
const char* layernorm_kernel_name(LayerNormKernel k);

template <class T>
struct LayerNormForwardArgs {
  int64_t N = 0, C = 0;
  float eps = 1e-5f;
  const T* x = nullptr;         // [N, C]
  const T* residual = nullptr;  // [N, C] or nullptr
  T* h_out = nullptr;           // [N, C] or nullptr: h (x + residual, or a copy of x)
  const T* weight = nullptr;    // [C] or nullptr
  const T* bias = nullptr;      // [C] or nullptr
  T* y = nullptr;               // [N, C]
  float* mean = nullptr;        // [N]
  float* rstd = nullptr;        // [N]
  LayerNormKernel kernel = LayerNormKernel::Warp;
};

template <class T>
struct LayerNormBackwardArgs {
  int64_t N = 0, C = 0;
  const T* dy = nullptr;        // [N, C]
  const T* h = nullptr;         // [N, C] the normalized input (x, or x + residual)
  const T* weight = nullptr;    // [C] or nullptr
  const float* mean = nullptr;  // [N]
  const float* rstd = nullptr;  // [N]
  T* dx = nullptr;              // [N, C] or nullptr (+=)
  T* dresidual = nullptr;       // [N, C] or nullptr (+=, the same values as dx)
  T* dweight = nullptr;         // [C] or nullptr (+=)
  T* dbias = nullptr;           // [C] or nullptr (+=)
  float* workspace = nullptr;   // layernorm_backward_workspace_floats(N, C)
  LayerNormKernel kernel = LayerNormKernel::Warp;
};

template <class T>
void layernorm_forward(const LayerNormForwardArgs<T>& a, cudaStream_t stream);
size_t layernorm_backward_workspace_floats(int64_t N, int64_t C);
template <class T>
void layernorm_backward(const LayerNormBackwardArgs<T>& a, cudaStream_t stream);
// The variant layernorm_backward runs for these arguments: the requested one, or its fallback
// where C or a pointer's alignment does not fit it (Pipelined -> Warp -> Simple).
template <class T>
LayerNormKernel layernorm_backward_kernel(const LayerNormBackwardArgs<T>& a);

// y = act(x + bias), x and y [N, C] (may be the same buffer), bias [C] or nullptr.
template <class T>
void bias_act_forward(int64_t N, int64_t C, Act act,
                      const T* x,     // [N, C]
                      const T* bias,  // [C] or nullptr
                      T* y,           // [N, C]
                      cudaStream_t stream);

// dx += dy * act'(x + bias); dbias += column sums of the same. workspace:
// column_sum_workspace_floats(N, C) floats (only when dbias).
template <class T>
void bias_act_backward(int64_t N, int64_t C, Act act,
                       const T* x,      // [N, C] the forward input (before the bias)
                       const T* bias,   // [C] or nullptr
                       const T* dy,     // [N, C]
                       T* dx,           // [N, C] or nullptr
                       T* dbias,        // [C] or nullptr
                       float* workspace, cudaStream_t stream);

// out[c] += sum_r x[r, c], deterministic (two passes, chunks of rows added in order).
template <class T>
void column_sum(int64_t R, int64_t C,
                const T* x,  // [R, C]
                T* out,      // [C]
                float* workspace, cudaStream_t stream);
size_t column_sum_workspace_floats(int64_t R, int64_t C);

}  // namespace clipcu::cuda
