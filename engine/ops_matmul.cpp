// Differentiable dense ops: matmul (with transposed forms) and linear (y = x W^T + b).
//
// Both run on cpu::gemm with GemmVariant::Auto (OpenBLAS when built in), in the forward and in
// every gradient: transposes are gemm flags, never materialized copies, and gradients are
// accumulated by gemm itself (beta = 1) straight into the inputs' grad buffers.
//
// CUDA tensors (F32/BF16) run cuda::gemm (kernels/cuda/gemm.cuh) with the same flags, linear's
// bias fused into the product's epilogue and its gradient a deterministic column sum
// (kernels/cuda/layernorm.cuh). The backend is chosen at run time by the environment variable
// CLIPCU_GEMM (docs/gpu.md): "cublas" (the default: cuBLASLt), "ours" (our mma.sync tensor-core
// kernels; float32 then runs as TF32), "wgmma" (our Hopper kernel for bf16; float32 as "ours")
// or "simple" (the SIMT reference). Float32 on cuBLAS uses full float32 math unless
// CLIPCU_TF32=1.
#include <algorithm>
#include <cstdlib>
#include <string>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/ops_common.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/matmul.h"

#ifdef CLIPCU_WITH_CUDA
#include "kernels/cuda/gemm.cuh"
#include "kernels/cuda/layernorm.cuh"
#endif

namespace clipcu::ops {

using namespace detail;

#ifdef CLIPCU_WITH_CUDA
namespace {

cuda::GemmBackend gemm_backend() {
  return variant_from_env("CLIPCU_GEMM", cuda::GemmBackend::Cublas, cuda::gemm_backend_name,
                          {{"ours", cuda::GemmBackend::TensorCore}});
}

// C = op(A) op(B) (+ beta C) (+ bias) on the current stream of `on`'s device.
template <class T>
void run_gemm(const Tensor& on, bool ta, bool tb, int64_t M, int64_t N, int64_t K, const T* A, const T* B, T* C,
              float beta, const T* bias = nullptr) {
  cuda::GemmParams<T> p;
  p.trans_a = ta;
  p.trans_b = tb;
  p.M = M, p.N = N, p.K = K;
  p.A = A, p.B = B, p.C = C;
  p.alpha = 1.f;
  p.beta = beta;
  p.bias = bias;
  p.backend = gemm_backend();
  const int d = on.device().index;
  // the runtime's workspace: cuBLASLt's scratch, or our TensorCore backend's split-K partials;
  // used by this call only, in stream order on the current stream
  p.workspace = cuda::cublaslt_workspace(d);
  p.workspace_bytes = cuda::kCublasLtWorkspaceBytes;
  if (p.backend == cuda::GemmBackend::Cublas) {
    p.lt = cuda::cublaslt_handle(d);
    p.cublas = cuda::cublas_handle(d);
    p.allow_tf32 = env_flag("CLIPCU_TF32");  // float32 accuracy by default (the tests' 1e-5)
  }
  cuda::gemm<T>(p, stream_of(on));
}

}  // namespace
#endif

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
  check_same_device(op, "b", b, "a", a);
#ifdef CLIPCU_WITH_CUDA
  if (a.device().is_cuda()) {
    Tensor y = Tensor::empty({M, N}, a.dtype(), a.device());
    with_cuda_float(a.dtype(), [&](auto tag) {
      using T = decltype(tag);
      run_gemm<T>(a, trans_a, trans_b, M, N, K, dev<T>(a), dev<T>(b), dev<T>(y), 0.f);
    });
    if (needs_grad({&a, &b})) {
      tape().record(op, {a, b}, {y}, [a, b, y, trans_a, trans_b, M, N, K]() {
        if (!y.has_grad()) return;
        const Tensor dy = y.grad();  // [M, N]
        Tensor ga = grad_target(a), gb = grad_target(b);
        with_cuda_float(a.dtype(), [&](auto tag) {
          using T = decltype(tag);
          const T* g = dev<T>(dy);
          // the same products as the CPU branch below, accumulated with beta = 1
          if (ga.defined()) {
            if (!trans_a) {
              run_gemm<T>(a, false, !trans_b, M, K, N, g, dev<T>(b), dev<T>(ga), 1.f);
            } else {
              run_gemm<T>(a, trans_b, true, K, M, N, dev<T>(b), g, dev<T>(ga), 1.f);
            }
          }
          if (gb.defined()) {
            if (!trans_b) {
              run_gemm<T>(a, !trans_a, false, K, N, M, dev<T>(a), g, dev<T>(gb), 1.f);
            } else {
              run_gemm<T>(a, true, trans_a, N, K, M, g, dev<T>(a), dev<T>(gb), 1.f);
            }
          }
        });
      });
    }
    return y;
  }
#endif
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
  check_same_device(op, "weight", weight, "x", x);
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
    check_same_device(op, "bias", bias, "x", x);
    check_shape(bias, {N}, op, "bias");
  }
  const int64_t M = K > 0 ? x.numel() / K : shape_numel(Shape(x.shape().begin(), x.shape().end() - 1));
  Shape out_shape = x.shape();
  out_shape.back() = N;
#ifdef CLIPCU_WITH_CUDA
  if (x.device().is_cuda()) {
    Tensor y = Tensor::empty(out_shape, x.dtype(), x.device());
    with_cuda_float(x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      // y = x W^T + b: the bias rides in the GEMM's epilogue (cuBLASLt's BIAS epilogue, or ours)
      run_gemm<T>(x, false, true, M, N, K, dev<T>(x), dev<T>(weight), dev<T>(y), 0.f, dev<T>(bias));
    });
    if (needs_grad({&x, &weight, &bias})) {
      tape().record(op, {x, weight, bias}, {y}, [x, weight, bias, y, M, N, K]() {
        if (!y.has_grad()) return;
        const Tensor dy = y.grad();  // [M, N]
        Tensor gx = grad_target(x), gw = grad_target(weight), gb = grad_target(bias);
        with_cuda_float(x.dtype(), [&](auto tag) {
          using T = decltype(tag);
          const T* g = dev<T>(dy);
          if (gx.defined()) run_gemm<T>(x, false, false, M, K, N, g, dev<T>(weight), dev<T>(gx), 1.f);  // dx += dy W
          if (gw.defined()) run_gemm<T>(x, true, false, N, K, M, g, dev<T>(x), dev<T>(gw), 1.f);  // dW += dy^T x
          if (gb.defined() && M > 0 && N > 0) {  // db += column sums of dy (deterministic, two passes)
            Tensor ws = scratch_floats(x, cuda::column_sum_workspace_floats(M, N));
            cuda::column_sum<T>(M, N, g, dev<T>(gb), ws.data<float>(), stream_of(x));
          }
        });
      });
    }
    return y;
  }
#endif
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
