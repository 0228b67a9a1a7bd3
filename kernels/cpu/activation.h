// CPU pointwise activations, forward and backward: relu, quick_gelu, gelu (erf and tanh forms), exp.
//
//   relu(x)       = max(x, 0)                         d/dx = [x > 0]
//   quick_gelu(x) = x * sigmoid(1.702 x)              (OpenAI CLIP's activation)
//   gelu_erf(x)   = x/2 * (1 + erf(x / sqrt 2))
//   gelu_tanh(x)  = x/2 * (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
//   exp(x)        = e^x                               d/dx = y (the output is reused)
// Backward recomputes from the saved input x (and the output y for exp) and ACCUMULATES:
// dx += dy * f'(x). The activation is a template parameter inside, so each loop is one
// branch-free body; OpenMP splits large arrays across threads.
#pragma once
#include <cstdint>

namespace clipcu::cpu {

enum class Activation { ReLU, QuickGELU, GELUErf, GELUTanh, Exp };
const char* activation_name(Activation a);

// Which compiled copy of the loops runs: Baseline (SSE2, any x86-64 or other CPU), AVX2 (+ FMA;
// falls back to Baseline on a CPU without it), Auto (AVX2 where the CPU has it). The functions
// without this argument use Auto; tests and benchmarks run both copies.
enum class SimdLevel { Auto, Baseline, AVX2 };
const char* simd_level_name(SimdLevel s);
bool simd_level_available(SimdLevel s);

template <class T>
void activation_forward(Activation act, int64_t n,
                        const T* x,  // [n]
                        T* y);       // [n]

// dx += dy * f'(x). y (the forward output) is read only by Exp; others may pass nullptr.
template <class T>
void activation_backward(Activation act, int64_t n,
                         const T* x,   // [n]
                         const T* y,   // [n] or nullptr (needed for Exp)
                         const T* dy,  // [n]
                         T* dx);       // [n]

// The same with the copy of the loops chosen.
template <class T>
void activation_forward(Activation act, int64_t n,
                        const T* x,  // [n]
                        T* y,        // [n]
                        SimdLevel simd);
template <class T>
void activation_backward(Activation act, int64_t n,
                         const T* x,   // [n]
                         const T* y,   // [n] or nullptr (needed for Exp)
                         const T* dy,  // [n]
                         T* dx,        // [n]
                         SimdLevel simd);

}  // namespace clipcu::cpu
