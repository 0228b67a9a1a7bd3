// Differentiable attention core: softmax(q k^T / sqrt(D)) v on [B, H, T, D] (kernels/cpu/attention.h).
//
// Forward keeps the per-row log-sum-exp [B, H, Tq] (a few bytes per query) for backward, which
// recomputes the probabilities from it instead of storing the [Tq, Tk] matrix of every head.
// CUDA tensors (F32/BF16) run the fused kernels of kernels/cuda/attention.cuh (D <= 128), which
// save the log-sum-exp in float32. The variant comes from CLIPCU_ATTENTION (docs/gpu.md):
// "tensorcore" (the default: mma.sync for bf16 storage; float32 storage runs the tiled kernel),
// "tiled" (SIMT float math) or "simple".
#include <cstdlib>
#include <string>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/ops_common.h"
#include "kernels/cpu/attention.h"

#ifdef CLIPCU_WITH_CUDA
#include "kernels/cuda/attention.cuh"
#endif

namespace clipcu::ops {

using namespace detail;

#ifdef CLIPCU_WITH_CUDA
namespace {
cuda::AttentionKernel attention_kernel() {
  return variant_from_env("CLIPCU_ATTENTION", cuda::AttentionKernel::TensorCore, cuda::attention_kernel_name);
}
}  // namespace
#endif

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal) {
  const char* op = "attention";
  check_float(op, "q", q);
  check_float(op, "k", k);
  check_float(op, "v", v);
  check_same_dtype(op, "k", k, "q", q);
  check_same_dtype(op, "v", v, "q", q);
  check_same_device(op, "k", k, "q", q);
  check_same_device(op, "v", v, "q", q);
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
#ifdef CLIPCU_WITH_CUDA
  if (q.device().is_cuda()) {
    cuda::AttentionShape s;
    s.B = p.B, s.H = p.H, s.Tq = p.Tq, s.Tk = p.Tk, s.D = p.D, s.causal = causal;
    s.kernel = attention_kernel();
    Tensor out = Tensor::empty(q.shape(), q.dtype(), q.device());
    Tensor lse = Tensor::empty({p.B, p.H, p.Tq}, DType::F32, q.device());
    with_cuda_float(q.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cuda::AttentionArgs<T> a;
      a.q = dev<T>(q), a.k = dev<T>(k), a.v = dev<T>(v), a.out = dev<T>(out), a.lse = lse.data<float>();
      cuda::attention_forward<T>(s, a, stream_of(q));
    });
    if (needs_grad({&q, &k, &v})) {
      const bool recorded = tape().record(op, {q, k, v}, {out}, [q, k, v, out, lse, s]() {
        if (!out.has_grad()) return;
        const Tensor dout = out.grad();
        Tensor gq = grad_target(q), gk = grad_target(k), gv = grad_target(v);
        // the kernels skip dK and dV only together: a throwaway buffer takes the one not wanted
        if (gk.defined() != gv.defined()) {
          (gk.defined() ? gv : gk) = Tensor::zeros(k.shape(), k.dtype(), k.device());
        }
        Tensor ws = scratch_floats(q, cuda::attention_backward_workspace_floats(s));
        with_cuda_float(q.dtype(), [&](auto tag) {
          using T = decltype(tag);
          cuda::AttentionArgs<T> a;
          a.q = dev<T>(q), a.k = dev<T>(k), a.v = dev<T>(v), a.out = dev<T>(out);
          a.lse = const_cast<float*>(lse.data<float>());
          a.dout = dev<T>(dout);
          a.dq = dev<T>(gq), a.dk = dev<T>(gk), a.dv = dev<T>(gv);
          a.workspace = ws.data<float>();
          cuda::attention_backward<T>(s, a, stream_of(q));
        });
      });
      if (recorded) tape().set_attr("causal", causal ? 1.0 : 0.0);
    }
    return out;
  }
#endif
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
