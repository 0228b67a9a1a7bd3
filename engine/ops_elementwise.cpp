// Differentiable elementwise ops: add, mul (suffix broadcasting), scale, relu, quick_gelu, gelu, exp.
//
// Broadcasting views a as [outer, inner] and b as [inner] (b's shape is a suffix of a's); the
// gradient of a broadcast b is the deterministic row sum of kernels/cpu/elementwise.h.
// Activations save their input (exp its output) for backward.
//
// CUDA tensors (F32/BF16) run kernels/cuda/elementwise.cuh (add, mul, scale, exp) and the
// bias + activation kernels of kernels/cuda/layernorm.cuh with no bias (relu, gelu, quick_gelu).
#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/ops_common.h"
#include "kernels/cpu/activation.h"
#include "kernels/cpu/elementwise.h"

#ifdef CLIPCU_WITH_CUDA
#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/layernorm.cuh"
#endif

namespace clipcu::ops {

using namespace detail;

namespace {

// Checks a and b for a broadcasting binary op and returns b's element count (the inner size).
int64_t check_broadcast(const char* op, const Tensor& a, const Tensor& b) {
  check_float(op, "a", a);
  check_float(op, "b", b);
  check_same_device(op, "b", b, "a", a);
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

#ifdef CLIPCU_WITH_CUDA
Tensor binary_cuda(const char* op, Binary kind, const Tensor& a, const Tensor& b, int64_t outer, int64_t inner) {
  const cuda::BinaryOp bop = kind == Binary::Add ? cuda::BinaryOp::Add : cuda::BinaryOp::Mul;
  Tensor y = Tensor::empty(a.shape(), a.dtype(), a.device());
  with_cuda_float(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cuda::binary_forward<T>(bop, outer, inner, dev<T>(a), dev<T>(b), dev<T>(y), stream_of(a));
  });
  if (needs_grad({&a, &b})) {
    tape().record(op, {a, b}, {y}, [a, b, y, bop, outer, inner]() {
      if (!y.has_grad()) return;
      const Tensor dy = y.grad();
      Tensor ga = grad_target(a), gb = grad_target(b);
      Tensor ws = gb.defined() ? scratch_floats(a, cuda::binary_backward_workspace_floats(outer, inner)) : Tensor();
      with_cuda_float(a.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cuda::binary_backward<T>(bop, outer, inner, dev<T>(a), dev<T>(b), dev<T>(dy), dev<T>(ga), dev<T>(gb),
                                 ws.defined() ? ws.data<float>() : nullptr, stream_of(a));
      });
    });
  }
  return y;
}

cuda::Act cuda_act(cpu::Activation act) {
  switch (act) {
    case cpu::Activation::ReLU: return cuda::Act::ReLU;
    case cpu::Activation::QuickGELU: return cuda::Act::QuickGELU;
    case cpu::Activation::GELUErf: return cuda::Act::GELU;
    case cpu::Activation::GELUTanh: return cuda::Act::GELUTanh;
    default: break;
  }
  CLIPCU_FAIL("internal: no CUDA activation for this cpu::Activation");
}

// relu / gelu / quick_gelu through the bias + activation kernels with no bias, exp through its
// own kernel. Rows of the last dim (bias_act's [N, C] view; any split of numel works).
Tensor unary_cuda(const char* op, cpu::Activation act, const Tensor& x) {
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  const int64_t n = x.numel();
  const int64_t C = x.dim() >= 1 && x.size(-1) > 0 ? x.size(-1) : 1;
  const int64_t N = n / C;
  const bool is_exp = act == cpu::Activation::Exp;
  if (n > 0) {
    with_cuda_float(x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      if (is_exp) {
        cuda::exp_forward<T>(n, dev<T>(x), dev<T>(y), stream_of(x));
      } else {
        cuda::bias_act_forward<T>(N, C, cuda_act(act), dev<T>(x), nullptr, dev<T>(y), stream_of(x));
      }
    });
  }
  if (needs_grad({&x})) {
    tape().record(op, {x}, {y}, [x, y, act, n, N, C, is_exp]() {
      if (!y.has_grad() || !x.requires_grad() || n == 0) return;
      const Tensor dy = y.grad();
      Tensor gx = grad_target(x);
      with_cuda_float(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        if (is_exp) {
          cuda::exp_backward<T>(n, dev<T>(y), dev<T>(dy), dev<T>(gx), stream_of(x));
        } else {
          cuda::bias_act_backward<T>(N, C, cuda_act(act), dev<T>(x), nullptr, dev<T>(dy), dev<T>(gx), nullptr,
                                     nullptr, stream_of(x));
        }
      });
    });
  }
  return y;
}
#endif

Tensor binary(const char* op, Binary kind, const Tensor& a, const Tensor& b) {
  const int64_t inner = check_broadcast(op, a, b);
  const int64_t outer = inner > 0 ? a.numel() / inner : 0;
#ifdef CLIPCU_WITH_CUDA
  if (a.device().is_cuda()) return binary_cuda(op, kind, a, b, outer, inner);
#endif
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
#ifdef CLIPCU_WITH_CUDA
  if (x.device().is_cuda()) return unary_cuda(op, act, x);
#endif
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
#ifdef CLIPCU_WITH_CUDA
  if (x.device().is_cuda()) {
    Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
    with_cuda_float(x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cuda::scale_forward<T>(x.numel(), float(s), dev<T>(x), dev<T>(y), stream_of(x));
    });
    if (needs_grad({&x})) {
      tape().record(op, {x}, {y}, [x, y, s]() {
        if (!y.has_grad() || !x.requires_grad()) return;
        const Tensor dy = y.grad();
        Tensor gx = grad_target(x);
        with_cuda_float(x.dtype(), [&](auto tag) {
          using T = decltype(tag);
          cuda::add_scaled<T>(x.numel(), float(s), dev<T>(dy), dev<T>(gx), stream_of(x));
        });
      });
    }
    return y;
  }
#endif
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
