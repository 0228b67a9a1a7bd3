// Differentiable losses: mean softmax cross entropy, and the fused CLIP contrastive loss.
// Both save their log-sum-exps in forward (kernels/cpu/softmax_xent.h, kernels/cpu/clip_loss.h)
// so backward needs no second reduction.
//
// CUDA tensors (F32/BF16): softmax_cross_entropy runs kernels/cuda/reduce.cuh (the targets are
// validated on the host: a small synchronous copy, since a kernel cannot throw), clip_loss the
// fused kernels of kernels/cuda/clip_loss.cuh (memory linear in B; its saved state is float32,
// the loss and its incoming gradient stay on the device).
#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/ops_common.h"
#include "kernels/cpu/clip_loss.h"
#include "kernels/cpu/softmax_xent.h"

#ifdef CLIPCU_WITH_CUDA
#include "kernels/cuda/clip_loss.cuh"
#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/reduce.cuh"
#endif

namespace clipcu::ops {

using namespace detail;

Tensor softmax_cross_entropy(const Tensor& logits, const Tensor& targets) {
  const char* op = "softmax_cross_entropy";
  check_float(op, "logits", logits);
  check_index(op, "targets", targets);
  check_same_device(op, "targets", targets, "logits", logits);
  CLIPCU_CHECK(logits.dim() == 2 && logits.size(0) >= 1 && logits.size(1) >= 1,
               "op softmax_cross_entropy: argument 'logits' has shape " << shape_str(logits.shape())
                                                                        << ", expected [N, C] with N, C >= 1");
  const int64_t N = logits.size(0), C = logits.size(1);
  CLIPCU_CHECK(targets.dim() == 1 && targets.size(0) == N, "op softmax_cross_entropy: argument 'targets' has shape "
                                                               << shape_str(targets.shape()) << ", expected [" << N
                                                               << "] for 'logits' " << shape_str(logits.shape()));
#ifdef CLIPCU_WITH_CUDA
  if (logits.device().is_cuda()) {
    {
      const std::vector<int64_t> host = targets.to_i64_vector();  // synchronous: see the file comment
      cpu::softmax_xent_check_targets<int64_t>(N, C, host.data());
    }
    Tensor loss = Tensor::empty({1}, logits.dtype(), logits.device());
    Tensor lse = Tensor::empty({N}, DType::F32, logits.device());
    Tensor terms = scratch_floats(logits, size_t(N));
    with_cuda_float(logits.dtype(), [&](auto tt) {
      using T = decltype(tt);
      with_index(targets.dtype(), [&](auto it) {
        using I = decltype(it);
        cuda::softmax_xent_forward<T, I>(N, C, dev<T>(logits), dev_index<I>(targets), lse.data<float>(), dev<T>(loss),
                                         terms.data<float>(), stream_of(logits));
      });
    });
    if (needs_grad({&logits})) {
      tape().record(op, {logits, targets}, {loss}, [logits = logits, targets = targets, loss, lse, N, C]() mutable {
        with_cuda_float(logits.dtype(), [&](auto tt) {
          using T = decltype(tt);
          with_index(targets.dtype(), [&](auto it) {
            using I = decltype(it);
            cuda::softmax_xent_backward<T, I>(N, C, dev<T>(logits), dev_index<I>(targets), lse.data<float>(),
                                              dev<T>(loss.grad()), dev<T>(logits.grad_buffer()), stream_of(logits));
          });
        });
      });
    }
    return loss;
  }
#endif
  Tensor loss = Tensor::empty({1}, logits.dtype());
  Tensor lse = Tensor::empty({N}, logits.dtype());
  auto dispatch = [](DType t, DType i, auto&& f) {
    with_float(t, [&](auto tt) {
      if (i == DType::I32) {
        f(tt, int32_t{});
      } else {
        f(tt, int64_t{});
      }
    });
  };
  dispatch(logits.dtype(), targets.dtype(), [&](auto tt, auto it) {
    using T = decltype(tt);
    using I = decltype(it);
    loss.data<T>()[0] = cpu::softmax_xent_forward<T, I>(N, C, logits.data<T>(), targets.data<I>(), lse.data<T>());
  });
  if (needs_grad({&logits})) {
    tape().record(op, {logits, targets}, {loss},
                  [logits = logits, targets = targets, loss, lse, dispatch, N, C]() mutable {
                    dispatch(logits.dtype(), targets.dtype(), [&](auto tt, auto it) {
                      using T = decltype(tt);
                      using I = decltype(it);
                      cpu::softmax_xent_backward<T, I>(N, C, logits.template data<T>(), targets.template data<I>(),
                                                       lse.template data<T>(), loss.grad().template data<T>()[0],
                                                       logits.grad_buffer().template data<T>());
                    });
                  });
  }
  return loss;
}

#ifdef CLIPCU_WITH_CUDA
namespace {

ClipLossOut clip_loss_cuda(const Tensor& image_features, const Tensor& text_features, const Tensor& log_scale,
                           int64_t B, int64_t E) {
  const char* op = "clip_loss";
  const DType dt = image_features.dtype();
  const Device d = image_features.device();
  // saved state (float32 whatever the storage type; see kernels/cuda/clip_loss.cuh)
  Tensor image_n = Tensor::empty({B, E}, DType::F32, d), text_n = Tensor::empty({B, E}, DType::F32, d);
  Tensor image_norm = Tensor::empty({B}, DType::F32, d), text_norm = Tensor::empty({B}, DType::F32, d);
  Tensor row_lse = Tensor::empty({B}, DType::F32, d), col_lse = Tensor::empty({B}, DType::F32, d);
  Tensor loss32 = Tensor::empty({1}, DType::F32, d);
  Tensor logits = Tensor::empty({B, B}, dt, d);  // logits_per_image, for the caller only (no gradient)

  // Rebuilt in backward from the captured tensors.
  auto args = [=](auto tag) mutable {
    using T = decltype(tag);
    cuda::ClipLossArgs<T> a;
    a.B = B;
    a.E = E;
    a.image = dev<T>(image_features);
    a.text = dev<T>(text_features);
    a.log_scale = dev<T>(log_scale);
    a.image_n = image_n.data<float>();
    a.text_n = text_n.data<float>();
    a.image_norm = image_norm.data<float>();
    a.text_norm = text_norm.data<float>();
    a.row_lse = row_lse.data<float>();
    a.col_lse = col_lse.data<float>();
    a.loss = loss32.data<float>();
    return a;
  };
  Tensor loss = dt == DType::F32 ? loss32 : Tensor::empty({1}, dt, d);
  with_cuda_float(dt, [&](auto tag) {
    using T = decltype(tag);
    cuda::ClipLossArgs<T> a = args(tag);
    a.logits = dev<T>(logits);
    cuda::clip_loss_forward<T>(a, stream_of(image_features));
    if constexpr (!std::is_same_v<T, float>) {
      cuda::convert<T, float>(1, loss32.data<float>(), dev<T>(loss), stream_of(image_features));
    }
  });
  if (needs_grad({&image_features, &text_features, &log_scale})) {
    tape().record(op, {image_features, text_features, log_scale}, {loss},
                  [args, image_features = image_features, text_features = text_features, log_scale = log_scale, loss,
                   dt, B]() mutable {
                    const Tensor g = loss.grad();
                    Tensor g32 = g;  // the kernels read the incoming gradient as float32 on the device
                    if (dt != DType::F32) {
                      g32 = Tensor::empty({1}, DType::F32, g.device());
                      cuda::convert<float, cuda::bf16>(1, dev<cuda::bf16>(g), g32.data<float>(), stream_of(g));
                    }
                    Tensor scratch = scratch_floats(image_features, size_t(B));
                    with_cuda_float(dt, [&](auto tag) {
                      using T = decltype(tag);
                      cuda::ClipLossArgs<T> a = args(tag);
                      a.scratch = scratch.data<float>();
                      cuda::clip_loss_backward<T>(a, g32.data<float>(), dev<T>(grad_target(image_features)),
                                                  dev<T>(grad_target(text_features)), dev<T>(grad_target(log_scale)),
                                                  stream_of(image_features));
                    });
                  });
  }
  return ClipLossOut{loss, logits};
}

}  // namespace
#endif

ClipLossOut clip_loss(const Tensor& image_features, const Tensor& text_features, const Tensor& log_scale) {
  const char* op = "clip_loss";
  check_float(op, "image_features", image_features);
  check_float(op, "text_features", text_features);
  check_float(op, "log_scale", log_scale);
  check_same_device(op, "text_features", text_features, "image_features", image_features);
  check_same_device(op, "log_scale", log_scale, "image_features", image_features);
  CLIPCU_CHECK(image_features.dim() == 2 && image_features.size(0) >= 1,
               "op clip_loss: argument 'image_features' has shape " << shape_str(image_features.shape())
                                                                    << ", expected [B, E] with B >= 1");
  CLIPCU_CHECK(text_features.shape() == image_features.shape(),
               "op clip_loss: argument 'text_features' has shape "
                   << shape_str(text_features.shape()) << ", 'image_features' has " << shape_str(image_features.shape())
                   << " (both [B, E])");
  CLIPCU_CHECK(log_scale.numel() == 1 && log_scale.dim() <= 1, "op clip_loss: argument 'log_scale' has shape "
                                                                   << shape_str(log_scale.shape())
                                                                   << ", expected [1] or []");
  const DType dt = image_features.dtype();
  CLIPCU_CHECK(text_features.dtype() == dt && log_scale.dtype() == dt, "op clip_loss: mixed dtypes: image_features "
                                                                           << image_features.str() << ", text_features "
                                                                           << text_features.str() << ", log_scale "
                                                                           << log_scale.str());
  const int64_t B = image_features.size(0), E = image_features.size(1);
#ifdef CLIPCU_WITH_CUDA
  if (image_features.device().is_cuda()) return clip_loss_cuda(image_features, text_features, log_scale, B, E);
#endif

  // saved state (see cpu::ClipLossParams)
  Tensor image_n = Tensor::empty({B, E}, dt), text_n = Tensor::empty({B, E}, dt);
  Tensor image_norm = Tensor::empty({B}, dt), text_norm = Tensor::empty({B}, dt);
  Tensor logits = Tensor::empty({B, B}, dt);
  Tensor row_lse = Tensor::empty({B}, dt), col_lse = Tensor::empty({B}, dt);
  Tensor loss = Tensor::empty({1}, dt);

  // Rebuilt in backward from the captured tensors (pointers are not captured: the tensors own them).
  auto params = [=](auto tag) mutable {
    using T = decltype(tag);
    cpu::ClipLossParams<T> p;
    p.B = B;
    p.E = E;
    p.image = image_features.data<T>();
    p.text = text_features.data<T>();
    p.log_scale = log_scale.data<T>()[0];
    p.image_n = image_n.data<T>();
    p.text_n = text_n.data<T>();
    p.image_norm = image_norm.data<T>();
    p.text_norm = text_norm.data<T>();
    p.logits = logits.data<T>();
    p.row_lse = row_lse.data<T>();
    p.col_lse = col_lse.data<T>();
    return p;
  };
  with_float(dt, [&](auto tag) {
    using T = decltype(tag);
    loss.data<T>()[0] = cpu::clip_loss_forward<T>(params(tag));
  });
  if (needs_grad({&image_features, &text_features, &log_scale})) {
    tape().record(op, {image_features, text_features, log_scale}, {loss},
                  [params, image_features = image_features, text_features = text_features, log_scale = log_scale, loss,
                   dt]() mutable {
                    with_float(dt, [&](auto tag) {
                      using T = decltype(tag);
                      T* gi =
                          image_features.requires_grad() ? image_features.grad_buffer().template data<T>() : nullptr;
                      T* gt = text_features.requires_grad() ? text_features.grad_buffer().template data<T>() : nullptr;
                      T* gs = log_scale.requires_grad() ? log_scale.grad_buffer().template data<T>() : nullptr;
                      cpu::clip_loss_backward<T>(params(tag), loss.grad().template data<T>()[0], gi, gt, gs);
                    });
                  });
  }
  // the caller's copy: the saved logits stay untouched whatever the caller does with theirs
  return ClipLossOut{loss, logits.clone()};
}

}  // namespace clipcu::ops
