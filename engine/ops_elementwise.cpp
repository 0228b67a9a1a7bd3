// Differentiable elementwise ops: add, mul (suffix broadcasting), scale, relu, quick_gelu, gelu, exp.
//
// Broadcasting views a as [outer, inner] and b as [inner] (b's shape is a suffix of a's); the
// gradient of a broadcast b is the deterministic row sum of kernels/cpu/elementwise.h.
// Activations save their input (exp its output) for backward.
#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/ops_common.h"
#include "kernels/cpu/activation.h"
#include "kernels/cpu/elementwise.h"

namespace clipcu::ops {

using namespace detail;

namespace {

// Checks a and b for a broadcasting binary op and returns b's element count (the inner size).
int64_t check_broadcast(const char* op, const Tensor& a, const Tensor& b) {
  check_float(op, "a", a);
  check_float(op, "b", b);
  CLIPCU_CHECK(a.dtype() == b.dtype(),
               "op " << op << ": argument 'b' is " << b.str() << " but 'a' is " << a.str() << " (one dtype for all)");
  bool suffix = b.dim() <= a.dim();
  for (int64_t i = 0; suffix && i < b.dim(); ++i)
    suffix = b.shape()[size_t(b.dim() - 1 - i)] == a.shape()[size_t(a.dim() - 1 - i)];
  CLIPCU_CHECK(suffix, "op " << op << ": shapes a " << shape_str(a.shape()) << " and b " << shape_str(b.shape())
                             << " do not broadcast (b's shape must equal a's or be a suffix of it)");
  return b.numel();
}

enum class Binary { Add, Mul };

Tensor binary(const char* op, Binary kind, const Tensor& a, const Tensor& b) {
  const int64_t inner = check_broadcast(op, a, b);
  const int64_t outer = inner > 0 ? a.numel() / inner : 0;
  Tensor y = Tensor::empty(a.shape(), a.dtype());
  with_float(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if (kind == Binary::Add) {
      cpu::add_forward<T>(outer, inner, a.data<T>(), b.data<T>(), y.data<T>());
    } else {
      cpu::mul_forward<T>(outer, inner, a.data<T>(), b.data<T>(), y.data<T>());
    }
  });
  if (needs_grad({&a, &b})) {
    tape().record(op, {a, b}, {y}, [a, b, y, kind, outer, inner]() {
      if (!y.has_grad()) return;
      const Tensor dy = y.grad();
      Tensor ga = grad_target(a), gb = grad_target(b);
      with_float(a.dtype(), [&](auto tag) {
        using T = decltype(tag);
        T* da = data_or_null<T>(ga);
        T* db = data_or_null<T>(gb);
        if (kind == Binary::Add) {
          cpu::add_backward<T>(outer, inner, dy.data<T>(), da, db);
        } else {
          cpu::mul_backward<T>(outer, inner, a.data<T>(), b.data<T>(), dy.data<T>(), da, db);
        }
      });
    });
  }
  return y;
}

Tensor unary(const char* op, cpu::Activation act, const Tensor& x) {
  check_float(op, "x", x);
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  with_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::activation_forward<T>(act, x.numel(), x.data<T>(), y.data<T>());
  });
  if (needs_grad({&x})) {
    // The closure holds x (every activation but exp needs it) and y (exp's derivative is y; the
    // tape keeps y alive anyway as the node's output).
    tape().record(op, {x}, {y}, [x, y, act]() {
      if (!y.has_grad() || !x.requires_grad()) return;
      const Tensor dy = y.grad();
      Tensor gx = grad_target(x);
      with_float(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::activation_backward<T>(act, x.numel(), x.data<T>(), y.data<T>(), dy.data<T>(), gx.data<T>());
      });
    });
  }
  return y;
}

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) { return binary("add", Binary::Add, a, b); }
Tensor mul(const Tensor& a, const Tensor& b) { return binary("mul", Binary::Mul, a, b); }

Tensor scale(const Tensor& x, double s) {
  const char* op = "scale";
  check_float(op, "x", x);
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  with_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::scale_forward<T>(x.numel(), T(s), x.data<T>(), y.data<T>());
  });
  if (needs_grad({&x})) {
    tape().record(op, {x}, {y}, [x, y, s]() {
      if (!y.has_grad() || !x.requires_grad()) return;
      const Tensor dy = y.grad();
      Tensor gx = grad_target(x);
      with_float(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::add_scaled<T>(x.numel(), T(s), dy.data<T>(), gx.data<T>());
      });
    });
  }
  return y;
}

Tensor relu(const Tensor& x) { return unary("relu", cpu::Activation::ReLU, x); }
Tensor quick_gelu(const Tensor& x) { return unary("quick_gelu", cpu::Activation::QuickGELU, x); }
Tensor gelu(const Tensor& x, bool tanh_approx) {
  return tanh_approx ? unary("gelu_tanh", cpu::Activation::GELUTanh, x) : unary("gelu", cpu::Activation::GELUErf, x);
}
Tensor exp(const Tensor& x) { return unary("exp", cpu::Activation::Exp, x); }

}  // namespace clipcu::ops
