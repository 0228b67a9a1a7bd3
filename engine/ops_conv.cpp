// Differentiable ops of the convolutional image tower (ModifiedResNet): conv2d, batch_norm2d,
// avg_pool2d, all NCHW. Shapes are checked here (the kernels in kernels/cpu/ trust them); the
// CPU twins compute; backward closures accumulate into the grad buffers of the inputs that
// require a gradient (the kernels' backward functions accumulate, so no temporaries).
// conv2d runs ConvVariant::Auto (im2col + cpu::gemm); the Direct variant is the tests' oracle.
#include <cmath>
#include <initializer_list>
#include <utility>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/ops_common.h"
#include "kernels/cpu/batchnorm.h"
#include "kernels/cpu/conv2d.h"
#include "kernels/cpu/pool.h"

namespace clipcu::ops {

using namespace detail;

namespace {

using NamedArg = std::pair<const char*, const Tensor*>;

// Every defined argument: on the CPU (CUDA throws until that backend exists), F32 or F64, and the
// same type as the first.
void check_float_args(const char* op, std::initializer_list<NamedArg> args) {
  const Tensor* first = nullptr;
  for (const auto& [name, t] : args) {
    if (!t->defined()) continue;
    CLIPCU_CHECK(!t->device().is_cuda(),
                 "op " << op << ": CUDA path not built yet (argument '" << name << "' " << t->str() << ")");
    CLIPCU_CHECK(t->dtype() == DType::F32 || t->dtype() == DType::F64,
                 "op " << op << ": argument '" << name << "' is " << t->str() << ", expected F32 or F64");
    if (!first) {
      first = t;
    } else {
      CLIPCU_CHECK(t->dtype() == first->dtype(), "op " << op << ": argument '" << name << "' is " << t->str()
                                                       << " but '" << args.begin()->first << "' is " << first->str()
                                                       << " (one floating type per op)");
    }
  }
}

// nullptr for an absent optional tensor.
template <class T>
const T* ptr_or_null(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}
template <class T>
T* grad_ptr_if(Tensor& t) {
  return t.defined() && t.requires_grad() ? t.grad_buffer().data<T>() : nullptr;
}

}  // namespace

// ---------------------------------------------------------------- conv2d
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, int stride, int padding) {
  CLIPCU_CHECK(x.defined(), "op conv2d: argument 'x' is undefined");
  CLIPCU_CHECK(weight.defined(), "op conv2d: argument 'weight' is undefined");
  check_float_args("conv2d", {{"x", &x}, {"weight", &weight}, {"bias", &bias}});
  CLIPCU_CHECK(x.dim() == 4,
               "op conv2d: argument 'x' has shape " << shape_str(x.shape()) << ", expected [N, Cin, H, W]");
  CLIPCU_CHECK(weight.dim() == 4 && weight.size(0) > 0 && weight.size(2) > 0 && weight.size(3) > 0,
               "op conv2d: argument 'weight' has shape " << shape_str(weight.shape())
                                                         << ", expected [Cout, Cin, kh, kw] with Cout, kh, kw > 0");
  const int64_t N = x.size(0), Cin = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Cout = weight.size(0), KH = weight.size(2), KW = weight.size(3);
  CLIPCU_CHECK(Cin > 0 && H > 0 && W > 0,
               "op conv2d: argument 'x' has shape " << shape_str(x.shape()) << ", expected Cin, H, W > 0");
  CLIPCU_CHECK(weight.size(1) == Cin, "op conv2d: channel mismatch: x " << shape_str(x.shape()) << " has Cin = " << Cin
                                                                        << " but weight " << shape_str(weight.shape())
                                                                        << " expects " << weight.size(1));
  if (bias.defined()) check_shape(bias, {Cout}, "conv2d", "bias");
  CLIPCU_CHECK(stride >= 1, "op conv2d: stride " << stride << " must be >= 1");
  CLIPCU_CHECK(padding >= 0, "op conv2d: padding " << padding << " must be >= 0");
  CLIPCU_CHECK(H + 2 * int64_t(padding) >= KH && W + 2 * int64_t(padding) >= KW,
               "op conv2d: kernel " << KH << "x" << KW << " of weight " << shape_str(weight.shape())
                                    << " is larger than the input x " << shape_str(x.shape()) << " padded by "
                                    << padding);
  const cpu::Conv2dDims d = cpu::conv2d_dims(N, Cin, H, W, Cout, KH, KW, stride, padding);
  Tensor y = Tensor::empty({N, Cout, d.OH, d.OW}, x.dtype());
  with_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::conv2d_forward<T>(d, x.data<T>(), weight.data<T>(), ptr_or_null<T>(bias), y.data<T>());
  });
  if (needs_grad({&x, &weight, &bias})) {
    // `x = x`: a non-const copy of the handle (same variable), so backward can reach grad_buffer().
    tape().record("conv2d", {x, weight, bias}, {y}, [x = x, weight = weight, bias = bias, y, d]() mutable {
      with_float(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const T* dy = y.grad().template data<T>();
        if (x.requires_grad()) cpu::conv2d_backward_data<T>(d, dy, weight.template data<T>(), grad_ptr_if<T>(x));
        T* dw = grad_ptr_if<T>(weight);
        T* db = grad_ptr_if<T>(bias);
        if (dw || db) cpu::conv2d_backward_weight<T>(d, x.template data<T>(), dy, dw, db);
      });
    });
  }
  return y;
}

// ---------------------------------------------------------------- batch_norm2d
Tensor batch_norm2d(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor running_mean, Tensor running_var,
                    bool training, double momentum, double eps) {
  CLIPCU_CHECK(x.defined(), "op batch_norm2d: argument 'x' is undefined");
  check_float_args("batch_norm2d", {{"x", &x},
                                    {"weight", &weight},
                                    {"bias", &bias},
                                    {"running_mean", &running_mean},
                                    {"running_var", &running_var}});
  CLIPCU_CHECK(x.dim() == 4,
               "op batch_norm2d: argument 'x' has shape " << shape_str(x.shape()) << ", expected [N, C, H, W]");
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  if (weight.defined()) check_shape(weight, {C}, "batch_norm2d", "weight");
  if (bias.defined()) check_shape(bias, {C}, "batch_norm2d", "bias");
  if (running_mean.defined()) check_shape(running_mean, {C}, "batch_norm2d", "running_mean");
  if (running_var.defined()) check_shape(running_var, {C}, "batch_norm2d", "running_var");
  CLIPCU_CHECK(running_mean.defined() == running_var.defined(),
               "op batch_norm2d: give both running_mean and running_var, or neither");
  CLIPCU_CHECK(std::isfinite(eps) && eps >= 0, "op batch_norm2d: eps " << eps << " must be >= 0");
  CLIPCU_CHECK(momentum >= 0 && momentum <= 1, "op batch_norm2d: momentum " << momentum << " must be in [0, 1]");
  if (training) {
    // The unbiased variance of the running update divides by M - 1 (PyTorch rejects this case too).
    CLIPCU_CHECK(N * HW > 1,
                 "op batch_norm2d: training needs more than one value per channel, got x " << shape_str(x.shape()));
  } else {
    CLIPCU_CHECK(running_mean.defined(), "op batch_norm2d: inference mode needs running_mean and running_var");
  }
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  Tensor mean = Tensor::empty({C}, x.dtype());  // saved for backward
  Tensor rstd = Tensor::empty({C}, x.dtype());
  with_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if (training) {
      T* rm = running_mean.defined() ? running_mean.data<T>() : nullptr;
      T* rv = running_var.defined() ? running_var.data<T>() : nullptr;
      cpu::batchnorm2d_forward_train<T>(N, C, HW, x.data<T>(), ptr_or_null<T>(weight), ptr_or_null<T>(bias), momentum,
                                        eps, y.data<T>(), mean.data<T>(), rstd.data<T>(), rm, rv);
    } else {
      cpu::batchnorm2d_forward_eval<T>(N, C, HW, x.data<T>(), ptr_or_null<T>(weight), ptr_or_null<T>(bias),
                                       running_mean.data<T>(), running_var.data<T>(), eps, y.data<T>(), mean.data<T>(),
                                       rstd.data<T>());
    }
  });
  if (needs_grad({&x, &weight, &bias})) {
    tape().record("batch_norm2d", {x, weight, bias}, {y},
                  [x = x, weight = weight, bias = bias, y, mean, rstd, training, N, C, HW]() mutable {
                    with_float(x.dtype(), [&](auto tag) {
                      using T = decltype(tag);
                      cpu::batchnorm2d_backward<T>(N, C, HW, training, x.template data<T>(), ptr_or_null<T>(weight),
                                                   mean.template data<T>(), rstd.template data<T>(),
                                                   y.grad().template data<T>(), grad_ptr_if<T>(x),
                                                   grad_ptr_if<T>(weight), grad_ptr_if<T>(bias));
                    });
                  });
  }
  return y;
}

// ---------------------------------------------------------------- avg_pool2d
Tensor avg_pool2d(const Tensor& x, int k) {
  CLIPCU_CHECK(x.defined(), "op avg_pool2d: argument 'x' is undefined");
  check_float_args("avg_pool2d", {{"x", &x}});
  CLIPCU_CHECK(x.dim() == 4,
               "op avg_pool2d: argument 'x' has shape " << shape_str(x.shape()) << ", expected [N, C, H, W]");
  CLIPCU_CHECK(k >= 1, "op avg_pool2d: kernel size " << k << " must be >= 1");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  CLIPCU_CHECK(H >= k && W >= k,
               "op avg_pool2d: kernel " << k << "x" << k << " is larger than the input x " << shape_str(x.shape()));
  Tensor y = Tensor::empty({N, C, H / k, W / k}, x.dtype());
  with_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::avgpool2d_forward<T>(N * C, H, W, k, x.data<T>(), y.data<T>());
  });
  if (needs_grad({&x})) {
    tape().record("avg_pool2d", {x}, {y}, [x = x, y, N, C, H, W, k]() mutable {
      with_float(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::avgpool2d_backward<T>(N * C, H, W, k, y.grad().template data<T>(), x.grad_buffer().template data<T>());
      });
    });
  }
  return y;
}

}  // namespace clipcu::ops
