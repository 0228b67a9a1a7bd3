// Differentiable layer normalization over the last dimension (kernels/cpu/layernorm.h).
//
// Forward keeps the per-row mean and rstd as tensors captured by the backward closure, so the
// backward never recomputes the statistics. CUDA tensors (F32/BF16) run kernels/cuda/layernorm.cuh
// (no residual fusion at this level), with float32 mean/rstd; the variant is CLIPCU_LAYERNORM
// (docs/gpu.md): warp (the default), pipelined (its backward, not yet measured on a GPU) or
// simple.
#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/ops_common.h"
#include "kernels/cpu/layernorm.h"

#ifdef CLIPCU_WITH_CUDA
#include "kernels/cuda/layernorm.cuh"
#endif

namespace clipcu::ops {

using namespace detail;

#ifdef CLIPCU_WITH_CUDA
namespace {
cuda::LayerNormKernel layernorm_kernel() {
  return variant_from_env("CLIPCU_LAYERNORM", cuda::LayerNormKernel::Warp, cuda::layernorm_kernel_name);
}
}  // namespace
#endif

Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  const char* op = "layer_norm";
  check_float(op, "x", x);
  CLIPCU_CHECK(x.dim() >= 1, "op layer_norm: argument 'x' has shape " << shape_str(x.shape()) << ", expected [..., C]");
  CLIPCU_CHECK(eps > 0, "op layer_norm: eps must be positive, got " << eps);
  const int64_t C = x.size(-1);
  const int64_t N = C > 0 ? x.numel() / C : shape_numel(Shape(x.shape().begin(), x.shape().end() - 1));
  // weight and bias are optional (undefined: ones / zeros), as in a LayerNorm without affine.
  if (weight.defined()) {
    check_float(op, "weight", weight);
    check_same_dtype(op, "weight", weight, "x", x);
    check_same_device(op, "weight", weight, "x", x);
    check_shape(weight, {C}, op, "weight");
  }
  if (bias.defined()) {
    check_float(op, "bias", bias);
    check_same_dtype(op, "bias", bias, "x", x);
    check_same_device(op, "bias", bias, "x", x);
    check_shape(bias, {C}, op, "bias");
  }
#ifdef CLIPCU_WITH_CUDA
  if (x.device().is_cuda()) {
    Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
    Tensor mean = Tensor::empty({N}, DType::F32, x.device());
    Tensor rstd = Tensor::empty({N}, DType::F32, x.device());
    with_cuda_float(x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cuda::LayerNormForwardArgs<T> a;
      a.N = N, a.C = C, a.eps = float(eps);
      a.x = dev<T>(x), a.weight = dev<T>(weight), a.bias = dev<T>(bias);
      a.y = dev<T>(y), a.mean = mean.data<float>(), a.rstd = rstd.data<float>();
      a.kernel = layernorm_kernel();
      cuda::layernorm_forward<T>(a, stream_of(x));
    });
    if (needs_grad({&x, &weight, &bias})) {
      tape().record(op, {x, weight, bias}, {y}, [x, weight, bias, y, mean, rstd, N, C]() {
        if (!y.has_grad()) return;
        const Tensor dy = y.grad();
        Tensor gx = grad_target(x), gw = grad_target(weight), gb = grad_target(bias);
        Tensor ws = (gw.defined() || gb.defined()) ? scratch_floats(x, cuda::layernorm_backward_workspace_floats(N, C))
                                                   : Tensor();
        with_cuda_float(x.dtype(), [&](auto tag) {
          using T = decltype(tag);
          cuda::LayerNormBackwardArgs<T> a;
          a.N = N, a.C = C;
          a.dy = dev<T>(dy), a.h = dev<T>(x), a.weight = dev<T>(weight);
          a.mean = mean.data<float>(), a.rstd = rstd.data<float>();
          a.dx = dev<T>(gx), a.dweight = dev<T>(gw), a.dbias = dev<T>(gb);
          a.workspace = ws.defined() ? ws.data<float>() : nullptr;
          a.kernel = layernorm_kernel();
          cuda::layernorm_backward<T>(a, stream_of(x));
        });
      });
    }
    return y;
  }
#endif
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  Tensor mean = Tensor::empty({N}, x.dtype());
  Tensor rstd = Tensor::empty({N}, x.dtype());
  with_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::layernorm_forward<T>(N, C, eps, x.data<T>(), weight.defined() ? weight.data<T>() : nullptr,
                              bias.defined() ? bias.data<T>() : nullptr, y.data<T>(), mean.data<T>(), rstd.data<T>());
  });
  if (needs_grad({&x, &weight, &bias})) {
    tape().record(op, {x, weight, bias}, {y}, [x, weight, bias, y, mean, rstd, N, C]() {
      if (!y.has_grad()) return;
      const Tensor dy = y.grad();
      Tensor gx = grad_target(x), gw = grad_target(weight), gb = grad_target(bias);
      with_float(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::layernorm_backward<T>(N, C, dy.data<T>(), x.data<T>(), data_or_null<T>(weight), mean.data<T>(),
                                   rstd.data<T>(), data_or_null<T>(gx), data_or_null<T>(gw), data_or_null<T>(gb));
      });
    });
  }
  return y;
}

}  // namespace clipcu::ops
