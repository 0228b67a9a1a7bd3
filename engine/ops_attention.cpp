// Differentiable attention core: softmax(q k^T / sqrt(D)) v on [B, H, T, D] (kernels/cpu/attention.h).
//
// Forward keeps the per-row log-sum-exp [B, H, Tq] (a few bytes per query) for backward, which
// recomputes the probabilities from it instead of storing the [Tq, Tk] matrix of every head.
#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/ops_common.h"
#include "kernels/cpu/attention.h"

namespace clipcu::ops {

using namespace detail;

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal) {
  const char* op = "attention";
  check_float(op, "q", q);
  check_float(op, "k", k);
  check_float(op, "v", v);
  check_same_dtype(op, "k", k, "q", q);
  check_same_dtype(op, "v", v, "q", q);
  CLIPCU_CHECK(q.dim() == 4, "op attention: argument 'q' has shape " << shape_str(q.shape())
                                                                     << ", expected [B, H, Tq, D]");
  cpu::AttentionParams p;
  p.B = q.size(0);
  p.H = q.size(1);
  p.Tq = q.size(2);
  p.D = q.size(3);
  p.causal = causal;
  check_shape(k, {p.B, p.H, -1, p.D}, op, "k");
  p.Tk = k.size(2);
  check_shape(v, k.shape(), op, "v");
  CLIPCU_CHECK(p.Tk >= 1, "op attention: no keys to attend to: k has shape " << shape_str(k.shape()));
  CLIPCU_CHECK(!causal || p.Tq == p.Tk, "op attention: causal needs as many queries as keys, got q "
                                            << shape_str(q.shape()) << " and k " << shape_str(k.shape()));
  Tensor out = Tensor::empty(q.shape(), q.dtype());
  Tensor lse = Tensor::empty({p.B, p.H, p.Tq}, q.dtype());
  with_float(q.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::attention_forward<T>(p, q.data<T>(), k.data<T>(), v.data<T>(), out.data<T>(), lse.data<T>());
  });
  if (needs_grad({&q, &k, &v})) {
    const bool recorded = tape().record(op, {q, k, v}, {out}, [q, k, v, out, lse, p]() {
      if (!out.has_grad()) return;
      const Tensor dout = out.grad();
      Tensor gq = grad_target(q), gk = grad_target(k), gv = grad_target(v);
      with_float(q.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::attention_backward<T>(p, q.data<T>(), k.data<T>(), v.data<T>(), out.data<T>(), lse.data<T>(),
                                   dout.data<T>(), data_or_null<T>(gq), data_or_null<T>(gk), data_or_null<T>(gv));
      });
    });
    // The mask is not visible in the shapes; the profile's FLOP count needs it.
    if (recorded) tape().set_attr("causal", causal ? 1.0 : 0.0);
  }
  return out;
}

}  // namespace clipcu::ops
