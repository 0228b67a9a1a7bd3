// Differentiable dense ops: matmul (with transposed forms) and linear (y = x W^T + b).
//
// Both run on cpu::gemm with GemmVariant::Auto (OpenBLAS when built in), in the forward and in
// every gradient: transposes are gemm flags, never materialized copies, and gradients are
// accumulated by gemm itself (beta = 1) straight into the inputs' grad buffers.
#include <algorithm>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/ops_common.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/matmul.h"

namespace clipcu::ops {

using namespace detail;

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  const char* op = "matmul";
  check_float(op, "a", a);
  check_float(op, "b", b);
  check_same_dtype(op, "b", b, "a", a);
  CLIPCU_CHECK(a.dim() == 2 && b.dim() == 2,
               "op matmul: a and b must be 2-d, got a " << shape_str(a.shape()) << ", b " << shape_str(b.shape()));
  const int64_t M = trans_a ? a.size(1) : a.size(0), K = trans_a ? a.size(0) : a.size(1);
  const int64_t Kb = trans_b ? b.size(1) : b.size(0), N = trans_b ? b.size(0) : b.size(1);
  CLIPCU_CHECK(K == Kb, "op matmul: inner sizes differ: a " << shape_str(a.shape()) << (trans_a ? " (transposed)" : "")
                                                            << " and b " << shape_str(b.shape())
                                                            << (trans_b ? " (transposed)" : ""));
  Tensor y = Tensor::empty({M, N}, a.dtype());
  with_float(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::gemm<T>(trans_a, trans_b, M, N, K, T(1), a.data<T>(), b.data<T>(), T(0), y.data<T>());
  });
  if (needs_grad({&a, &b})) {
    tape().record(op, {a, b}, {y}, [a, b, y, trans_a, trans_b, M, N, K]() {
      if (!y.has_grad()) return;
      const Tensor dy = y.grad();  // [M, N]
      Tensor ga = grad_target(a), gb = grad_target(b);
      with_float(a.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const T* g = dy.data<T>();
        if (ga.defined()) {
          // d op(A) = dY op(B)^T. A [M, K]: dY [M, N] times op(B)^T; A [K, M]: op(B) dY^T.
          T* da = ga.data<T>();
          if (!trans_a) {
            cpu::gemm<T>(false, !trans_b, M, K, N, T(1), g, b.data<T>(), T(1), da);
          } else {
            cpu::gemm<T>(trans_b, true, K, M, N, T(1), b.data<T>(), g, T(1), da);
          }
        }
        if (gb.defined()) {
          // d op(B) = op(A)^T dY. B [K, N]: op(A)^T dY; B [N, K]: dY^T op(A).
          T* db = gb.data<T>();
          if (!trans_b) {
            cpu::gemm<T>(!trans_a, false, K, N, M, T(1), a.data<T>(), g, T(1), db);
          } else {
            cpu::gemm<T>(true, trans_a, N, K, M, T(1), g, a.data<T>(), T(1), db);
          }
        }
      });
    });
  }
  return y;
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  const char* op = "linear";
  check_float(op, "x", x);
  check_float(op, "weight", weight);
  check_same_dtype(op, "weight", weight, "x", x);
  CLIPCU_CHECK(weight.dim() == 2, "op linear: argument 'weight' has shape " << shape_str(weight.shape())
                                                                            << ", expected [N, K]");
  const int64_t N = weight.size(0), K = weight.size(1);
  CLIPCU_CHECK(x.dim() >= 1 && x.size(-1) == K, "op linear: argument 'x' has shape "
                                                    << shape_str(x.shape()) << ", expected [..., " << K
                                                    << "] to match weight " << shape_str(weight.shape()));
  const bool has_bias = bias.defined();
  if (has_bias) {
    check_float(op, "bias", bias);
    check_same_dtype(op, "bias", bias, "x", x);
    check_shape(bias, {N}, op, "bias");
  }
  const int64_t M = K > 0 ? x.numel() / K : shape_numel(Shape(x.shape().begin(), x.shape().end() - 1));
  Shape out_shape = x.shape();
  out_shape.back() = N;
  Tensor y = Tensor::empty(out_shape, x.dtype());
  with_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* yp = y.data<T>();
    if (has_bias) {
      // Each row starts as the bias and gemm adds x W^T onto it (beta = 1): no second pass.
      cpu::fill_rows<T>(M, N, bias.data<T>(), yp);
    }
    cpu::gemm<T>(false, true, M, N, K, T(1), x.data<T>(), weight.data<T>(), has_bias ? T(1) : T(0), yp);
  });
  if (needs_grad({&x, &weight, &bias})) {
    tape().record(op, {x, weight, bias}, {y}, [x, weight, bias, y, M, N, K]() {
      if (!y.has_grad()) return;
      const Tensor dy = y.grad();  // [M, N]
      Tensor gx = grad_target(x), gw = grad_target(weight), gb = grad_target(bias);
      with_float(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const T* g = dy.data<T>();
        if (gx.defined()) {  // dx [M, K] += dy [M, N] W [N, K]
          cpu::gemm<T>(false, false, M, K, N, T(1), g, weight.data<T>(), T(1), gx.data<T>());
        }
        if (gw.defined()) {  // dW [N, K] += dy^T [N, M] x [M, K]
          cpu::gemm<T>(true, false, N, K, M, T(1), g, x.data<T>(), T(1), gw.data<T>());
        }
        if (gb.defined()) {  // db [N] += column sums of dy
          cpu::sum_rows<T>(M, N, g, gb.data<T>());
        }
      });
    });
  }
  return y;
}

}  // namespace clipcu::ops
