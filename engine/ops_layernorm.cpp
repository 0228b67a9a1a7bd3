// Differentiable layer normalization over the last dimension (kernels/cpu/layernorm.h).
//
// Forward keeps the per-row mean and rstd as tensors captured by the backward closure, so the
// backward never recomputes the statistics.
#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/ops_common.h"
#include "kernels/cpu/layernorm.h"

namespace clipcu::ops {

using namespace detail;

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
    check_shape(weight, {C}, op, "weight");
  }
  if (bias.defined()) {
    check_float(op, "bias", bias);
    check_same_dtype(op, "bias", bias, "x", x);
    check_shape(bias, {C}, op, "bias");
  }
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
