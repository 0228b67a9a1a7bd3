// Differentiable row-wise L2 normalization: x [N, C] -> x / max(||x||, 1e-12).
// Saves the output and the row norms (kernels/cpu/l2_normalize.h) for backward.
#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/ops_common.h"
#include "kernels/cpu/l2_normalize.h"

namespace clipcu::ops {

Tensor l2_normalize(const Tensor& x) {
  detail::check_float("l2_normalize", "x", x);
  CLIPCU_CHECK(x.dim() == 2, "op l2_normalize: argument 'x' has shape " << shape_str(x.shape()) << ", expected [N, C]");
  const int64_t N = x.size(0), C = x.size(1);
  Tensor y = Tensor::empty({N, C}, x.dtype());
  Tensor norm = Tensor::empty({N}, x.dtype());
  detail::with_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::l2_normalize_forward<T>(N, C, x.data<T>(), y.data<T>(), norm.data<T>());
  });
  if (needs_grad({&x})) {
    tape().record("l2_normalize", {x}, {y}, [x = x, y, norm, N, C]() mutable {
      detail::with_float(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::l2_normalize_backward<T>(N, C, y.template data<T>(), norm.template data<T>(), y.grad().template data<T>(),
                                      x.grad_buffer().template data<T>());
      });
    });
  }
  return y;
}

}  // namespace clipcu::ops
