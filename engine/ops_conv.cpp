// Differentiable ops of the convolutional image tower (ModifiedResNet): conv2d, batch_norm2d,
// avg_pool2d, all NCHW. Shapes are checked here (the kernels in kernels/cpu/ trust them); the
// CPU twins compute; backward closures accumulate into the grad buffers of the inputs that
// require a gradient (the kernels' backward functions accumulate, so no temporaries).
// conv2d runs ConvVariant::Auto (im2col + cpu::gemm); the Direct variant is the tests' oracle.
//
// CUDA tensors (F32 or BF16, every tensor argument on the same GPU) run the kernels of
// kernels/cuda/conv.cuh and kernels/cuda/batchnorm.cuh on the current stream, with their scratch
// from the caching allocator. conv2d's kernel: $CLIPCU_CONV_KERNEL (simple, tensorcore or
// cudnn) when set, else cuDNN when the build has it (the fastest: our implicit GEMM runs at
// 0.10-0.44x of it on RN50's layers; deterministic algorithms only; float32 in full float32
// math unless CLIPCU_TF32=1, as for the GEMMs; shapes for which cuDNN has no such algorithm run
// on ours, said once on stderr), and without cuDNN simple for F32 (float32 accuracy) and
// tensorcore for BF16. batch_norm2d on the GPU keeps mean / rstd in float; its weight, bias and running
// statistics may be F32 or the dtype of x (float32 master parameters under bf16 activations).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <mutex>
#include <type_traits>
#include <utility>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/ops_common.h"
#include "kernels/cpu/batchnorm.h"
#include "kernels/cpu/conv2d.h"
#include "kernels/cpu/pool.h"

#ifdef CLIPCU_WITH_CUDA
#include "engine/cuda_runtime.h"
#include "kernels/cuda/batchnorm.cuh"
#include "kernels/cuda/conv.cuh"
#endif

namespace clipcu::ops {

using namespace detail;

namespace {

using NamedArg = std::pair<const char*, const Tensor*>;

// Every defined argument is F32 or the device's other floating type (F64 on the CPU, BF16 on the
// GPU), and all have the type of the first.
void check_float_args(const char* op, std::initializer_list<NamedArg> args, bool gpu) {
  const DType other = gpu ? DType::BF16 : DType::F64;
  const Tensor* first = nullptr;
  for (const auto& [name, t] : args) {
    if (!t->defined()) continue;
    CLIPCU_CHECK(t->dtype() == DType::F32 || t->dtype() == other,
                 "op " << op << ": argument '" << name << "' is " << t->str() << ", expected F32 or "
                       << dtype_name(other) << (gpu ? " on the GPU" : ""));
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

// True when the op runs on the GPU: any defined argument on a CUDA device. Every defined argument
// must then be on that same device, with a dtype allowed by the GPU kernels (checked by the op).
bool on_cuda(const char* op, std::initializer_list<NamedArg> args) {
  const Tensor* first_cuda = nullptr;
  const char* first_name = nullptr;
  for (const auto& [name, t] : args) {
    if (t->defined() && t->device().is_cuda()) {
      first_cuda = t;
      first_name = name;
      break;
    }
  }
  if (!first_cuda) return false;
  for (const auto& [name, t] : args) {
    if (!t->defined()) continue;
    CLIPCU_CHECK(t->device() == first_cuda->device(), "op " << op << ": argument '" << name << "' is " << t->str()
                                                             << " but '" << first_name << "' is "
                                                             << first_cuda->str() << " (one device per op)");
  }
#ifndef CLIPCU_WITH_CUDA
  CLIPCU_FAIL("op " << op << ": this build has no CUDA backend (argument '" << first_name << "' "
                    << first_cuda->str() << ")");
#endif
  return true;
}


#ifdef CLIPCU_WITH_CUDA
// Typed device pointers (bf16 tensors hold uint16_t on the host side of the API).
template <class T>
T* dev_ptr(Tensor& t) {
  if constexpr (std::is_same_v<T, cuda::bf16>) {
    return reinterpret_cast<cuda::bf16*>(t.data<uint16_t>());
  } else {
    return t.data<T>();
  }
}
template <class T>
const T* dev_ptr_or_null(const Tensor& t) {
  return t.defined() ? dev_ptr<T>(const_cast<Tensor&>(t)) : nullptr;
}
template <class T>
T* dev_grad_if(Tensor& t) {
  return t.defined() && t.requires_grad() ? dev_ptr<T>(t.grad_buffer()) : nullptr;
}

// Calls f(T{}) with T = float or cuda::bf16 for a (checked) GPU dtype.
template <class F>
void with_gpu_float(DType t, F&& f) {
  if (t == DType::F32) {
    f(float{});
  } else {
    f(cuda::bf16{});
  }
}

// Device scratch from the caching allocator (freed in stream order when the tensor dies).
Tensor scratch(size_t bytes, Device d) { return Tensor::empty({int64_t(std::max<size_t>(bytes, 1))}, DType::U8, d); }

// Our kernel for the dtype: simple for float32 (float32 accuracy), tensorcore for bf16.
cuda::ConvKernel own_conv_kernel(DType dt) {
  return dt == DType::F32 ? cuda::ConvKernel::Simple : cuda::ConvKernel::TensorCore;
}

cuda::ConvShape gpu_conv_shape(const cpu::Conv2dDims& d, DType dt, Device dev) {
  const char* env = std::getenv("CLIPCU_CONV_KERNEL");
  const bool chosen = env && *env;  // the user's choice is kept, whatever cuDNN offers
  const cuda::ConvKernel kernel = variant_from_env(
      "CLIPCU_CONV_KERNEL", cuda::conv_cudnn_built() ? cuda::ConvKernel::Cudnn : own_conv_kernel(dt),
      cuda::conv_kernel_name);
  cuda::ConvShape s = cuda::conv_shape(d.N, d.Cin, d.H, d.W, d.Cout, d.KH, d.KW, d.stride, d.padding, kernel);
  s.allow_tf32 = env_flag("CLIPCU_TF32");  // float32 storage: full float32 math by default
  if (s.kernel == cuda::ConvKernel::Cudnn) {
#ifdef CLIPCU_WITH_CUDNN
    s.cudnn = cuda::cudnn_handle(dev.index);
    bool has = true;
    with_gpu_float(dt, [&](auto tag) { has = cuda::conv_cudnn_has_algorithms<decltype(tag)>(s); });
    if (!has && !chosen) {
      // the default only: cuDNN has no deterministic algorithm for this shape, so ours runs
      static std::once_flag said;
      std::call_once(said, [&] {
        std::fprintf(stderr,
                     "clipcu: conv2d: cuDNN has no deterministic algorithm for some shapes (first: N %lld Cin "
                     "%lld %lldx%lld Cout %lld kernel %lldx%lld); those run on clipcu's own kernels\n",
                     (long long)d.N, (long long)d.Cin, (long long)d.H, (long long)d.W, (long long)d.Cout,
                     (long long)d.KH, (long long)d.KW);
      });
      s.kernel = own_conv_kernel(dt);
      s.cudnn = nullptr;
    }
#else
    CLIPCU_FAIL("op conv2d: CLIPCU_CONV_KERNEL=cudnn but this build has no cuDNN");
#endif
  }
  (void)dev, (void)chosen;
  return s;
}
#endif

}  // namespace

#ifdef CLIPCU_WITH_CUDA
namespace {

// ---------------------------------------------------------------- GPU paths
Tensor conv2d_gpu(const Tensor& x, const Tensor& weight, const Tensor& bias, const cpu::Conv2dDims& d) {
  const Device dev = x.device();
  const cuda::ConvShape s = gpu_conv_shape(d, x.dtype(), dev);
  Tensor y = Tensor::empty({d.N, d.Cout, d.OH, d.OW}, x.dtype(), dev);
  with_gpu_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    Tensor ws = scratch(cuda::conv2d_workspace_bytes<T>(s, cuda::ConvPass::Forward), dev);
    cuda::ConvArgs<T> a;
    a.x = dev_ptr_or_null<T>(x), a.w = dev_ptr_or_null<T>(weight), a.bias = dev_ptr_or_null<T>(bias);
    a.y = dev_ptr<T>(y);
    a.workspace = ws.raw(), a.workspace_bytes = ws.nbytes();
    cuda::conv2d_forward<T>(s, a, cuda::current_stream(dev.index));
  });
  if (needs_grad({&x, &weight, &bias})) {
    tape().record("conv2d", {x, weight, bias}, {y}, [x = x, weight = weight, bias = bias, y, s, dev]() mutable {
      with_gpu_float(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cudaStream_t stream = cuda::current_stream(dev.index);
        Tensor dy_t = y.grad();
        cuda::ConvArgs<T> a;
        a.x = dev_ptr_or_null<T>(x), a.w = dev_ptr_or_null<T>(weight), a.dy = dev_ptr<T>(dy_t);
        if (x.requires_grad()) {
          Tensor ws = scratch(cuda::conv2d_workspace_bytes<T>(s, cuda::ConvPass::BackwardData), dev);
          a.dx = dev_grad_if<T>(x);
          a.workspace = ws.raw(), a.workspace_bytes = ws.nbytes();
          cuda::conv2d_backward_data<T>(s, a, stream);
        }
        a.dx = nullptr;
        a.dw = dev_grad_if<T>(weight);
        a.dbias = dev_grad_if<T>(bias);
        if (a.dw || a.dbias) {
          Tensor ws = scratch(a.dw ? cuda::conv2d_workspace_bytes<T>(s, cuda::ConvPass::BackwardFilter) : 0, dev);
          a.workspace = ws.raw(), a.workspace_bytes = ws.nbytes();
          cuda::conv2d_backward_filter<T>(s, a, stream);
        }
      });
    });
  }
  return y;
}

// Calls f(T{}, P{}): T the activations' type, P the parameters' (float, or T).
template <class F>
void with_bn_types(DType xt, DType pt, F&& f) {
  if (xt == DType::F32) {
    f(float{}, float{});
  } else if (pt == DType::F32) {
    f(cuda::bf16{}, float{});
  } else {
    f(cuda::bf16{}, cuda::bf16{});
  }
}

Tensor batch_norm2d_gpu(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor running_mean,
                        Tensor running_var, bool training, double momentum, double eps, DType pt, bool relu) {
  const Device dev = x.device();
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), dev);
  Tensor mean = Tensor::empty({C}, DType::F32, dev);  // saved for backward (float on the GPU)
  Tensor rstd = Tensor::empty({C}, DType::F32, dev);
  with_bn_types(x.dtype(), pt, [&](auto ttag, auto ptag) {
    using T = decltype(ttag);
    using P = decltype(ptag);
    Tensor ws = scratch(cuda::batchnorm2d_workspace_bytes(N, C), dev);
    cuda::BatchNormArgs<T, P> a;
    a.N = N, a.C = C, a.HW = HW, a.training = training, a.relu = relu, a.eps = float(eps);
    a.momentum = float(momentum);
    a.x = dev_ptr_or_null<T>(x), a.weight = dev_ptr_or_null<P>(weight), a.bias = dev_ptr_or_null<P>(bias);
    a.running_mean = running_mean.defined() ? dev_ptr<P>(running_mean) : nullptr;
    a.running_var = running_var.defined() ? dev_ptr<P>(running_var) : nullptr;
    a.y = dev_ptr<T>(y), a.mean = mean.data<float>(), a.rstd = rstd.data<float>();
    a.workspace = ws.raw();
    cuda::batchnorm2d_forward<T, P>(a, cuda::current_stream(dev.index));
  });
  if (needs_grad({&x, &weight, &bias})) {
    tape().record(relu ? "batch_norm2d_relu" : "batch_norm2d", {x, weight, bias}, {y},
                  [x = x, weight = weight, bias = bias, y, mean, rstd, training, relu, N, C, HW, pt, dev]() mutable {
                    with_bn_types(x.dtype(), pt, [&](auto ttag, auto ptag) {
                      using T = decltype(ttag);
                      using P = decltype(ptag);
                      Tensor ws = scratch(cuda::batchnorm2d_workspace_bytes(N, C), dev);
                      Tensor dy_t = y.grad();
                      cuda::BatchNormArgs<T, P> a;
                      a.N = N, a.C = C, a.HW = HW, a.training = training, a.relu = relu;
                      a.y = dev_ptr<T>(y);  // the ReLU mask
                      a.x = dev_ptr_or_null<T>(x), a.weight = dev_ptr_or_null<P>(weight);
                      a.mean = mean.data<float>(), a.rstd = rstd.data<float>();
                      a.dy = dev_ptr<T>(dy_t), a.dx = dev_grad_if<T>(x);
                      a.dweight = dev_grad_if<P>(weight), a.dbias = dev_grad_if<P>(bias);
                      a.workspace = ws.raw();
                      cuda::batchnorm2d_backward<T, P>(a, cuda::current_stream(dev.index));
                    });
                  });
  }
  return y;
}

Tensor avg_pool2d_gpu(const Tensor& x, int k) {
  const Device dev = x.device();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  Tensor y = Tensor::empty({N, C, H / k, W / k}, x.dtype(), dev);
  with_gpu_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cuda::avgpool2d_forward<T>(N * C, H, W, k, dev_ptr_or_null<T>(x), dev_ptr<T>(y), cuda::current_stream(dev.index));
  });
  if (needs_grad({&x})) {
    tape().record("avg_pool2d", {x}, {y}, [x = x, y, N, C, H, W, k, dev]() mutable {
      with_gpu_float(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        Tensor dy_t = y.grad();
        cuda::avgpool2d_backward<T>(N * C, H, W, k, dev_ptr<T>(dy_t), dev_ptr<T>(x.grad_buffer()),
                                    cuda::current_stream(dev.index));
      });
    });
  }
  return y;
}

}  // namespace
#endif  // CLIPCU_WITH_CUDA

// ---------------------------------------------------------------- conv2d
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, int stride, int padding) {
  CLIPCU_CHECK(x.defined(), "op conv2d: argument 'x' is undefined");
  CLIPCU_CHECK(weight.defined(), "op conv2d: argument 'weight' is undefined");
  const bool gpu = on_cuda("conv2d", {{"x", &x}, {"weight", &weight}, {"bias", &bias}});
  if (gpu) {
    check_float_args("conv2d", {{"x", &x}, {"weight", &weight}, {"bias", &bias}}, true);
  } else {
    check_float_args("conv2d", {{"x", &x}, {"weight", &weight}, {"bias", &bias}}, false);
  }
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
#ifdef CLIPCU_WITH_CUDA
  if (gpu) return conv2d_gpu(x, weight, bias, d);
#endif
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
namespace {
Tensor batch_norm2d_impl(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor running_mean,
                         Tensor running_var, bool training, double momentum, double eps, bool relu) {
  CLIPCU_CHECK(x.defined(), "op batch_norm2d: argument 'x' is undefined");
  const bool gpu = on_cuda("batch_norm2d", {{"x", &x},
                                            {"weight", &weight},
                                            {"bias", &bias},
                                            {"running_mean", &running_mean},
                                            {"running_var", &running_var}});
  DType param_type = x.dtype();  // GPU: the dtype of weight, bias and the running statistics
  if (gpu) {
    check_float_args("batch_norm2d", {{"x", &x}}, true);
    check_float_args("batch_norm2d", {{"weight", &weight},
                                      {"bias", &bias},
                                      {"running_mean", &running_mean},
                                      {"running_var", &running_var}}, true);
    for (const Tensor* p : std::initializer_list<const Tensor*>{&weight, &bias, &running_mean, &running_var}) {
      if (!p->defined()) continue;
      param_type = p->dtype();
      CLIPCU_CHECK(param_type == DType::F32 || param_type == x.dtype(),
                   "op batch_norm2d: parameters are " << p->str() << " for x " << x.str()
                                                      << " (expected F32 or the dtype of x)");
      break;
    }
  } else {
    check_float_args("batch_norm2d", {{"x", &x},
                                      {"weight", &weight},
                                      {"bias", &bias},
                                      {"running_mean", &running_mean},
                                      {"running_var", &running_var}}, false);
  }
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
#ifdef CLIPCU_WITH_CUDA
  if (gpu) return batch_norm2d_gpu(x, weight, bias, running_mean, running_var, training, momentum, eps, param_type, relu);
#endif
  (void)param_type;
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  Tensor mean = Tensor::empty({C}, x.dtype());  // saved for backward
  Tensor rstd = Tensor::empty({C}, x.dtype());
  with_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if (training) {
      T* rm = running_mean.defined() ? running_mean.data<T>() : nullptr;
      T* rv = running_var.defined() ? running_var.data<T>() : nullptr;
      cpu::batchnorm2d_forward_train<T>(N, C, HW, x.data<T>(), ptr_or_null<T>(weight), ptr_or_null<T>(bias), momentum,
                                        eps, y.data<T>(), mean.data<T>(), rstd.data<T>(), rm, rv, relu);
    } else {
      cpu::batchnorm2d_forward_eval<T>(N, C, HW, x.data<T>(), ptr_or_null<T>(weight), ptr_or_null<T>(bias),
                                       running_mean.data<T>(), running_var.data<T>(), eps, y.data<T>(), mean.data<T>(),
                                       rstd.data<T>(), relu);
    }
  });
  if (needs_grad({&x, &weight, &bias})) {
    tape().record(relu ? "batch_norm2d_relu" : "batch_norm2d", {x, weight, bias}, {y},
                  [x = x, weight = weight, bias = bias, y, mean, rstd, training, relu, N, C, HW]() mutable {
                    with_float(x.dtype(), [&](auto tag) {
                      using T = decltype(tag);
                      cpu::batchnorm2d_backward<T>(N, C, HW, training, x.template data<T>(), ptr_or_null<T>(weight),
                                                   mean.template data<T>(), rstd.template data<T>(),
                                                   y.grad().template data<T>(), grad_ptr_if<T>(x),
                                                   grad_ptr_if<T>(weight), grad_ptr_if<T>(bias),
                                                   relu ? y.template data<T>() : nullptr);
                    });
                  });
  }
  return y;
}

}  // namespace

Tensor batch_norm2d(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor running_mean, Tensor running_var,
                    bool training, double momentum, double eps) {
  return batch_norm2d_impl(x, weight, bias, std::move(running_mean), std::move(running_var), training, momentum, eps,
                           false);
}

Tensor batch_norm2d_relu(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor running_mean,
                         Tensor running_var, bool training, double momentum, double eps) {
  return batch_norm2d_impl(x, weight, bias, std::move(running_mean), std::move(running_var), training, momentum, eps,
                           true);
}

// ---------------------------------------------------------------- avg_pool2d
Tensor avg_pool2d(const Tensor& x, int k) {
  CLIPCU_CHECK(x.defined(), "op avg_pool2d: argument 'x' is undefined");
  const bool gpu = on_cuda("avg_pool2d", {{"x", &x}});
  if (gpu) {
    check_float_args("avg_pool2d", {{"x", &x}}, true);
  } else {
    check_float_args("avg_pool2d", {{"x", &x}}, false);
  }
  CLIPCU_CHECK(x.dim() == 4,
               "op avg_pool2d: argument 'x' has shape " << shape_str(x.shape()) << ", expected [N, C, H, W]");
  CLIPCU_CHECK(k >= 1, "op avg_pool2d: kernel size " << k << " must be >= 1");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  CLIPCU_CHECK(H >= k && W >= k,
               "op avg_pool2d: kernel " << k << "x" << k << " is larger than the input x " << shape_str(x.shape()));
#ifdef CLIPCU_WITH_CUDA
  if (gpu) return avg_pool2d_gpu(x, k);
#endif
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
