// Differentiable losses: mean softmax cross entropy, and the fused CLIP contrastive loss.
// Both save their log-sum-exps in forward (kernels/cpu/softmax_xent.h, kernels/cpu/clip_loss.h)
// so backward needs no second reduction.
#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/ops_common.h"
#include "kernels/cpu/clip_loss.h"
#include "kernels/cpu/softmax_xent.h"

namespace clipcu::ops {

using namespace detail;

Tensor softmax_cross_entropy(const Tensor& logits, const Tensor& targets) {
  const char* op = "softmax_cross_entropy";
  check_float(op, "logits", logits);
  CLIPCU_CHECK(targets.defined(), "op softmax_cross_entropy: argument 'targets' is undefined");
  CLIPCU_CHECK(!targets.device().is_cuda(),
               "op softmax_cross_entropy: CUDA path not built yet (argument 'targets' " << targets.str() << ")");
  CLIPCU_CHECK(targets.dtype() == DType::I32 || targets.dtype() == DType::I64,
               "op softmax_cross_entropy: argument 'targets' is " << targets.str() << ", expected I32 or I64");
  CLIPCU_CHECK(logits.dim() == 2 && logits.size(0) >= 1 && logits.size(1) >= 1,
               "op softmax_cross_entropy: argument 'logits' has shape " << shape_str(logits.shape())
                                                                        << ", expected [N, C] with N, C >= 1");
  const int64_t N = logits.size(0), C = logits.size(1);
  CLIPCU_CHECK(targets.dim() == 1 && targets.size(0) == N, "op softmax_cross_entropy: argument 'targets' has shape "
                                                               << shape_str(targets.shape()) << ", expected [" << N
                                                               << "] for 'logits' " << shape_str(logits.shape()));
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

ClipLossOut clip_loss(const Tensor& image_features, const Tensor& text_features, const Tensor& log_scale) {
  const char* op = "clip_loss";
  check_float(op, "image_features", image_features);
  check_float(op, "text_features", text_features);
  check_float(op, "log_scale", log_scale);
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
