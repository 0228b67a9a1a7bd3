// CPU pointwise activations (see activation.h for the formulas).
//
// One loop per direction; the activation is a template parameter of the loop body, chosen by a
// single switch, so the body has no per-element branch on the kind. Math is done in T (float32
// or float64); the gelu constants are written in full double precision and rounded once.
// exp (and the sigmoid of quick_gelu) uses exp_fast of vec_math.h: inline float code the
// compiler vectorizes (within 1 ulp of the exact exp), std::exp for float64; gelu's erfc is
// erfc_fast (within 8 ulp, vectorized; std::erfc for float64). The array is cut
// into fixed blocks of kBlock elements: OpenMP hands whole blocks to threads (only past
// kParallelMin elements: below that a thread wake-up costs more than the loop), and each block
// is one `omp simd` loop, compiled twice: for baseline x86-64 (4 floats a vector) and for
// AVX2 + FMA (8), picked at run time by the CPU (vec_math.h). Every element is computed on its
// own, so the thread count never changes a result.
#include "kernels/cpu/activation.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/vec_math.h"

namespace clipcu::cpu {

namespace {

constexpr int64_t kParallelMin = 1 << 16;  // elements (quick_gelu: ~1 ns each on one core)
constexpr int64_t kBlock = 1 << 13;
constexpr double kQuickGeluAlpha = 1.702;
constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;  // 1 / sqrt(2 pi)
constexpr double kSqrt2OverPi = 0.79788456080286535588;  // sqrt(2 / pi)
constexpr double kGeluTanhCubic = 0.044715;

template <class T>
T sigmoid(T z) {
  return T(1) / (T(1) + exp_fast(-z));
}

template <Activation A, class T>
struct Fn;

template <class T>
struct Fn<Activation::ReLU, T> {
  static T f(T x) { return x > T(0) ? x : T(0); }
  // T(bool), not ?: between two constants: GCC turned that select into a branch, which kept
  // the backward loop scalar and mispredicted half the time (16x the forward's time)
  static T df(T x, T) { return T(x > T(0)); }
};

template <class T>
struct Fn<Activation::QuickGELU, T> {
  static T f(T x) { return x * sigmoid(T(kQuickGeluAlpha) * x); }
  static T df(T x, T) {
    const T s = sigmoid(T(kQuickGeluAlpha) * x);
    return s + T(kQuickGeluAlpha) * x * s * (T(1) - s);
  }
};

template <class T>
struct Fn<Activation::GELUErf, T> {
  // 1 + erf(t) written as erfc(-t): in the negative tail 1 + erf(t) cancels to a few digits
  static T f(T x) { return T(0.5) * x * erfc_fast(-x * T(kInvSqrt2)); }
  static T df(T x, T) {
    return T(0.5) * erfc_fast(-x * T(kInvSqrt2)) + x * T(kInvSqrt2Pi) * exp_fast(T(-0.5) * x * x);
  }
};

// 0.5 x (1 + tanh(u)) written as x sigmoid(2 u) (1 + tanh(u) = 2 sigmoid(2 u)): exp_fast
// vectorizes where std::tanh is a call per element, and in the negative tail 1 + tanh(u) cancels
// to a few digits while the sigmoid keeps full relative accuracy. Derivative: with s = sigmoid(2 u),
// s + 2 x s (1 - s) du/dx.
template <class T>
struct Fn<Activation::GELUTanh, T> {
  static T f(T x) {
    const T u = T(kSqrt2OverPi) * (x + T(kGeluTanhCubic) * x * x * x);
    return x * sigmoid(T(2) * u);
  }
  static T df(T x, T) {
    const T u = T(kSqrt2OverPi) * (x + T(kGeluTanhCubic) * x * x * x);
    const T s = sigmoid(T(2) * u);
    const T du = T(kSqrt2OverPi) * (T(1) + T(3 * kGeluTanhCubic) * x * x);
    return s + T(2) * x * s * (T(1) - s) * du;
  }
};

template <class T>
struct Fn<Activation::Exp, T> {
  static T f(T x) { return exp_fast(x); }
  static T df(T, T y) { return y; }
};

// One block of each loop; inlined into a baseline and an AVX2 + FMA copy.
template <Activation A, class T>
[[gnu::always_inline]] inline void forward_block(int64_t i0, int64_t i1,
                                                 const T* x,  // [n]
                                                 T* y) {      // [n]
#pragma omp simd
  for (int64_t i = i0; i < i1; ++i) y[i] = Fn<A, T>::f(x[i]);
}

template <Activation A, class T>
[[gnu::always_inline]] inline void backward_block(int64_t i0, int64_t i1,
                                                  const T* x,   // [n]
                                                  const T* y,   // [n] or nullptr
                                                  const T* dy,  // [n]
                                                  T* dx) {      // [n]
  if (y) {
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) dx[i] += dy[i] * Fn<A, T>::df(x[i], y[i]);
  } else {
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) dx[i] += dy[i] * Fn<A, T>::df(x[i], T(0));
  }
}

template <Activation A, class T>
CLIPCU_TARGET_AVX2 void forward_block_avx2(int64_t i0, int64_t i1, const T* x, T* y) {
  forward_block<A, T>(i0, i1, x, y);
}

template <Activation A, class T>
CLIPCU_TARGET_AVX2 void backward_block_avx2(int64_t i0, int64_t i1, const T* x, const T* y, const T* dy, T* dx) {
  backward_block<A, T>(i0, i1, x, y, dy, dx);
}

bool use_avx2(SimdLevel simd) { return simd != SimdLevel::Baseline && cpu_has_avx2_fma(); }

template <Activation A, class T>
void forward_loop(int64_t n,
                  const T* x,  // [n]
                  T* y,        // [n]
                  bool avx2) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t i0 = blk * kBlock, i1 = std::min(n, i0 + kBlock);
    if (avx2) {
      forward_block_avx2<A, T>(i0, i1, x, y);
    } else {
      forward_block<A, T>(i0, i1, x, y);
    }
  }
}

template <Activation A, class T>
void backward_loop(int64_t n,
                   const T* x,   // [n]
                   const T* y,   // [n] or nullptr
                   const T* dy,  // [n]
                   T* dx,        // [n]
                   bool avx2) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t i0 = blk * kBlock, i1 = std::min(n, i0 + kBlock);
    if (avx2) {
      backward_block_avx2<A, T>(i0, i1, x, y, dy, dx);
    } else {
      backward_block<A, T>(i0, i1, x, y, dy, dx);
    }
  }
}

}  // namespace

const char* activation_name(Activation a) {
  switch (a) {
    case Activation::ReLU: return "relu";
    case Activation::QuickGELU: return "quick_gelu";
    case Activation::GELUErf: return "gelu";
    case Activation::GELUTanh: return "gelu_tanh";
    case Activation::Exp: return "exp";
  }
  return "?";
}

const char* simd_level_name(SimdLevel s) {
  switch (s) {
    case SimdLevel::Auto: return "auto";
    case SimdLevel::Baseline: return "baseline";
    case SimdLevel::AVX2: return "avx2";
  }
  return "?";
}

bool simd_level_available(SimdLevel s) { return s != SimdLevel::AVX2 || cpu_has_avx2_fma(); }

template <class T>
void activation_forward(Activation act, int64_t n,
                        const T* x,  // [n]
                        T* y,        // [n]
                        SimdLevel simd) {
  const bool v = use_avx2(simd);
  switch (act) {
    case Activation::ReLU: forward_loop<Activation::ReLU>(n, x, y, v); return;
    case Activation::QuickGELU: forward_loop<Activation::QuickGELU>(n, x, y, v); return;
    case Activation::GELUErf: forward_loop<Activation::GELUErf>(n, x, y, v); return;
    case Activation::GELUTanh: forward_loop<Activation::GELUTanh>(n, x, y, v); return;
    case Activation::Exp: forward_loop<Activation::Exp>(n, x, y, v); return;
  }
}

template <class T>
void activation_backward(Activation act, int64_t n,
                         const T* x,   // [n]
                         const T* y,   // [n] or nullptr (needed for Exp)
                         const T* dy,  // [n]
                         T* dx,        // [n]
                         SimdLevel simd) {
  const bool v = use_avx2(simd);
  switch (act) {
    case Activation::ReLU: backward_loop<Activation::ReLU>(n, x, y, dy, dx, v); return;
    case Activation::QuickGELU: backward_loop<Activation::QuickGELU>(n, x, y, dy, dx, v); return;
    case Activation::GELUErf: backward_loop<Activation::GELUErf>(n, x, y, dy, dx, v); return;
    case Activation::GELUTanh: backward_loop<Activation::GELUTanh>(n, x, y, dy, dx, v); return;
    case Activation::Exp: backward_loop<Activation::Exp>(n, x, y, dy, dx, v); return;
  }
}

template <class T>
void activation_forward(Activation act, int64_t n,
                        const T* x,  // [n]
                        T* y) {      // [n]
  activation_forward(act, n, x, y, SimdLevel::Auto);
}

template <class T>
void activation_backward(Activation act, int64_t n,
                         const T* x,   // [n]
                         const T* y,   // [n] or nullptr (needed for Exp)
                         const T* dy,  // [n]
                         T* dx) {      // [n]
  activation_backward(act, n, x, y, dy, dx, SimdLevel::Auto);
}

template void activation_forward<float>(Activation, int64_t, const float*, float*);
template void activation_forward<double>(Activation, int64_t, const double*, double*);
template void activation_backward<float>(Activation, int64_t, const float*, const float*, const float*, float*);
template void activation_backward<double>(Activation, int64_t, const double*, const double*, const double*,
                                          double*);
template void activation_forward<float>(Activation, int64_t, const float*, float*, SimdLevel);
template void activation_forward<double>(Activation, int64_t, const double*, double*, SimdLevel);
template void activation_backward<float>(Activation, int64_t, const float*, const float*, const float*, float*,
                                         SimdLevel);
template void activation_backward<double>(Activation, int64_t, const double*, const double*, const double*,
                                          double*, SimdLevel);

}  // namespace clipcu::cpu

