// Differentiable attention core: softmax(q k^T / sqrt(D)) v on [B, H, T, D] (kernels/cpu/attention.h).
//
// Forward keeps the per-row log-sum-exp [B, H, Tq] (a few bytes per query) for backward, which
// recomputes the probabilities from it instead of storing the [Tq, Tk] matrix of every head.
#include "engine/autograd.h"
#include "engine/ops.h"
#include "kernels/cpu/attention.h"

namespace clipcu::ops {

namespace {

// The CPU path only, for now: a CUDA tensor gets a clear error rather than a wrong pointer.
void check_float(const char* op, const char* arg, const Tensor& t) {
  CLIPCU_CHECK(t.defined(), "op " << op << ": argument '" << arg << "' is undefined");
  CLIPCU_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::F64,
               "op " << op << ": argument '" << arg << "' is " << t.str() << ", expected F32 or F64");
  CLIPCU_CHECK(!t.device().is_cuda(), "op " << op << ": CUDA path not built yet (argument '" << arg << "' is "
                                            << t.str() << ")");
}

void check_same_dtype(const char* op, const char* arg, const Tensor& t, const char* ref_arg, const Tensor& ref) {
  CLIPCU_CHECK(t.dtype() == ref.dtype(), "op " << op << ": argument '" << arg << "' is " << t.str() << " but '"
                                               << ref_arg << "' is " << ref.str() << " (one dtype for all)");
}

template <class F>
void with_float(DType t, F&& f) {
  if (t == DType::F32) {
    f(float{});
  } else {
    f(double{});
  }
}

// The gradient buffer of an input that requires one (zeros on first use), else an undefined
// tensor. Takes a handle by value: copies share the autograd state, and closures hold const ones.
Tensor grad_target(Tensor t) { return t.defined() && t.requires_grad() ? t.grad_buffer() : Tensor(); }

template <class T>
T* data_or_null(Tensor t) {
  return t.defined() ? t.data<T>() : nullptr;
}

}  // namespace

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
