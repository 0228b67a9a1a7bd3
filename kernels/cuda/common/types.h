// Types shared by the CUDA kernels' host interfaces (includable from plain C++).
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

namespace clipcu::cuda {

// The reduced-precision storage type. Kernels templated on the storage type are instantiated
// for float and bf16 and always accumulate in float.
using bf16 = __nv_bfloat16;

// Pointwise activations of the fused epilogues (same formulas as kernels/cpu/activation.h):
//   ReLU      max(x, 0)
//   QuickGELU x * sigmoid(1.702 x)                       (OpenAI CLIP)
//   GELU      x/2 (1 + erf(x / sqrt 2))
//   GELUTanh  x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
enum class Act { None, ReLU, QuickGELU, GELU, GELUTanh };

}  // namespace clipcu::cuda
