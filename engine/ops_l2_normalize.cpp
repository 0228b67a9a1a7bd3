// Differentiable row-wise L2 normalization: x [N, C] -> x / max(||x||, 1e-12).
// Saves the output and the row norms (kernels/cpu/l2_normalize.h) for backward. CUDA tensors
// (F32/BF16) run kernels/cuda/reduce.cuh, with float32 norms.
#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/ops_common.h"
#include "kernels/cpu/l2_normalize.h"

#ifdef CLIPCU_WITH_CUDA
#include "kernels/cuda/reduce.cuh"
#endif

namespace clipcu::ops {

Tensor l2_normalize(const Tensor& x) {
  detail::check_float("l2_normalize", "x", x);
  CLIPCU_CHECK(x.dim() == 2, "op l2_normalize: argument 'x' has shape " << shape_str(x.shape()) << ", expected [N, C]");
  const int64_t N = x.size(0), C = x.size(1);
#ifdef CLIPCU_WITH_CUDA
  if (x.device().is_cuda()) {
    using detail::dev;
    Tensor y = Tensor::empty({N, C}, x.dtype(), x.device());
    Tensor norm = Tensor::empty({N}, DType::F32, x.device());
    detail::with_cuda_float(x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cuda::l2_normalize_forward<T>(N, C, dev<T>(x), dev<T>(y), norm.data<float>(), detail::stream_of(x));
    });
    if (needs_grad({&x})) {
      tape().record("l2_normalize", {x}, {y}, [x = x, y, norm, N, C]() mutable {
        detail::with_cuda_float(x.dtype(), [&](auto tag) {
          using T = decltype(tag);
          cuda::l2_normalize_backward<T>(N, C, dev<T>(y), norm.data<float>(), dev<T>(y.grad()), dev<T>(x.grad_buffer()),
                                         detail::stream_of(x));
        });
      });
    }
    return y;
  }
#endif
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
