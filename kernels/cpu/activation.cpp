// CPU pointwise activations (see activation.h for the formulas).
//
// One loop per direction; the activation is a template parameter of the loop body, chosen by a
// single switch, so the body has no per-element branch on the kind. Math is done in T (float32
// or float64); the gelu constants are written in full double precision and rounded once.
// OpenMP splits arrays past kParallelMin elements into static contiguous ranges.
#include "kernels/cpu/activation.h"

#include <cmath>

namespace clipcu::cpu {

namespace {

constexpr int64_t kParallelMin = 1 << 14;
constexpr double kQuickGeluAlpha = 1.702;
constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;  // 1 / sqrt(2 pi)
constexpr double kSqrt2OverPi = 0.79788456080286535588;  // sqrt(2 / pi)
constexpr double kGeluTanhCubic = 0.044715;

template <class T>
T sigmoid(T z) {
  return T(1) / (T(1) + std::exp(-z));
}

template <Activation A, class T>
struct Fn;

template <class T>
struct Fn<Activation::ReLU, T> {
  static T f(T x) { return x > T(0) ? x : T(0); }
  static T df(T x, T) { return x > T(0) ? T(1) : T(0); }
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
  static T f(T x) { return T(0.5) * x * (T(1) + std::erf(x * T(kInvSqrt2))); }
  static T df(T x, T) {
    return T(0.5) * (T(1) + std::erf(x * T(kInvSqrt2))) + x * T(kInvSqrt2Pi) * std::exp(T(-0.5) * x * x);
  }
};

template <class T>
struct Fn<Activation::GELUTanh, T> {
  static T f(T x) {
    const T u = T(kSqrt2OverPi) * (x + T(kGeluTanhCubic) * x * x * x);
    return T(0.5) * x * (T(1) + std::tanh(u));
  }
  static T df(T x, T) {
    const T u = T(kSqrt2OverPi) * (x + T(kGeluTanhCubic) * x * x * x);
    const T t = std::tanh(u);
    const T du = T(kSqrt2OverPi) * (T(1) + T(3 * kGeluTanhCubic) * x * x);
    return T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * du;
  }
};

template <class T>
struct Fn<Activation::Exp, T> {
  static T f(T x) { return std::exp(x); }
  static T df(T, T y) { return y; }
};

template <Activation A, class T>
void forward_loop(int64_t n,
                  const T* x,  // [n]
                  T* y) {      // [n]
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) y[i] = Fn<A, T>::f(x[i]);
}

template <Activation A, class T>
void backward_loop(int64_t n,
                   const T* x,   // [n]
                   const T* y,   // [n] or nullptr
                   const T* dy,  // [n]
                   T* dx) {      // [n]
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) dx[i] += dy[i] * Fn<A, T>::df(x[i], y ? y[i] : T(0));
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

template <class T>
void activation_forward(Activation act, int64_t n,
                        const T* x,  // [n]
                        T* y) {      // [n]
  switch (act) {
    case Activation::ReLU: forward_loop<Activation::ReLU>(n, x, y); return;
    case Activation::QuickGELU: forward_loop<Activation::QuickGELU>(n, x, y); return;
    case Activation::GELUErf: forward_loop<Activation::GELUErf>(n, x, y); return;
    case Activation::GELUTanh: forward_loop<Activation::GELUTanh>(n, x, y); return;
    case Activation::Exp: forward_loop<Activation::Exp>(n, x, y); return;
  }
}

template <class T>
void activation_backward(Activation act, int64_t n,
                         const T* x,   // [n]
                         const T* y,   // [n] or nullptr (needed for Exp)
                         const T* dy,  // [n]
                         T* dx) {      // [n]
  switch (act) {
    case Activation::ReLU: backward_loop<Activation::ReLU>(n, x, y, dy, dx); return;
    case Activation::QuickGELU: backward_loop<Activation::QuickGELU>(n, x, y, dy, dx); return;
    case Activation::GELUErf: backward_loop<Activation::GELUErf>(n, x, y, dy, dx); return;
    case Activation::GELUTanh: backward_loop<Activation::GELUTanh>(n, x, y, dy, dx); return;
    case Activation::Exp: backward_loop<Activation::Exp>(n, x, y, dy, dx); return;
  }
}

template void activation_forward<float>(Activation, int64_t, const float*, float*);
template void activation_forward<double>(Activation, int64_t, const double*, double*);
template void activation_backward<float>(Activation, int64_t, const float*, const float*, const float*, float*);
template void activation_backward<double>(Activation, int64_t, const double*, const double*, const double*,
                                          double*);

}  // namespace clipcu::cpu

