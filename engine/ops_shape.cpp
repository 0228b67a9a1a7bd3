// Differentiable shape ops: reshape, permute, slice, concat, gather_rows, mean, sum_all, and the
// attention head layouts split_qkv_heads / merge_heads.
//
// reshape returns a view of its input (storage is always contiguous, so a new shape is free);
// every other output is a new contiguous tensor. Backward closures accumulate into the inputs'
// gradients with the kernels of kernels/cpu/shape.h.
//
// CUDA tensors (F32/BF16) run kernels/cuda/shape.cuh (permute, slice/concat block copies, head
// layouts), kernels/cuda/reduce.cuh (mean, sum_all) and the end-token gather of
// kernels/cuda/embedding.cuh (gather_rows).
#include <algorithm>
#include <numeric>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/ops_common.h"
#include "kernels/cpu/shape.h"

#ifdef CLIPCU_WITH_CUDA
#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/embedding.cuh"
#include "kernels/cuda/reduce.cuh"
#include "kernels/cuda/shape.cuh"
#endif

namespace clipcu::ops {

using namespace detail;

namespace {

int normalize_dim(const char* op, int dim, int64_t ndim) {
  CLIPCU_CHECK(dim >= -ndim && dim < ndim,
               "op " << op << ": dim " << dim << " out of range for a tensor of " << ndim << " dimensions");
  return dim < 0 ? int(dim + ndim) : dim;
}

// [outer, D, inner] around dimension d.
struct Split {
  int64_t outer = 1, D = 1, inner = 1;
};
Split split_at(const Shape& s, int d) {
  Split r;
  for (int k = 0; k < d; ++k) r.outer *= s[size_t(k)];
  r.D = s[size_t(d)];
  for (size_t k = size_t(d) + 1; k < s.size(); ++k) r.inner *= s[k];
  return r;
}

}  // namespace

Tensor reshape(const Tensor& x, const Shape& shape) {
  const char* op = "reshape";
  check_float(op, "x", x);
  Shape s = shape;
  int64_t known = 1;
  int infer = -1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      CLIPCU_CHECK(infer < 0, "op reshape: more than one -1 in " << shape_str(shape));
      infer = int(i);
    } else {
      CLIPCU_CHECK(s[i] >= 0, "op reshape: negative size in " << shape_str(shape));
      known *= s[i];
    }
  }
  if (infer >= 0) {
    CLIPCU_CHECK(known > 0 && x.numel() % known == 0,
                 "op reshape: argument 'x' " << x.str() << " cannot take shape " << shape_str(shape));
    s[size_t(infer)] = x.numel() / known;
  }
  CLIPCU_CHECK(shape_numel(s) == x.numel(),
               "op reshape: argument 'x' " << x.str() << " cannot take shape " << shape_str(shape));
  // A view: no copy. It is still a node of the tape (a new variable with its own gradient, named
  // like every op output), and its backward adds the gradient back in x's shape.
  Tensor y = x.view(s);
  if (needs_grad({&x})) {
    tape().record(op, {x}, {y}, [x = x, y]() mutable {
#ifdef CLIPCU_WITH_CUDA
      if (x.device().is_cuda()) {
        with_cuda_float(x.dtype(), [&](auto tag) {
          using T = decltype(tag);
          cuda::add_scaled<T>(x.numel(), 1.f, dev<T>(y.grad()), dev<T>(x.grad_buffer()), stream_of(x));
        });
        return;
      }
#endif
      with_float(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::accumulate<T>(x.numel(), y.grad().template data<T>(), x.grad_buffer().template data<T>());
      });
    });
  }
  return y;
}

Tensor permute(const Tensor& x, const std::vector<int>& dims) {
  const char* op = "permute";
  check_float(op, "x", x);
  const int64_t nd = x.dim();
  CLIPCU_CHECK(int64_t(dims.size()) == nd, "op permute: " << dims.size() << " dims for argument 'x' " << x.str());
  CLIPCU_CHECK(nd <= 8, "op permute: at most 8 dimensions, got " << x.str());
  std::vector<int> d(dims.size()), inv(dims.size(), -1);
  Shape out_shape(dims.size());
  for (size_t k = 0; k < dims.size(); ++k) {
    d[k] = normalize_dim(op, dims[k], nd);
    CLIPCU_CHECK(inv[size_t(d[k])] < 0, "op permute: dim " << dims[k] << " repeated (dims must be a permutation)");
    inv[size_t(d[k])] = int(k);
    out_shape[k] = x.shape()[size_t(d[k])];
  }
#ifdef CLIPCU_WITH_CUDA
  if (x.device().is_cuda()) {
    Tensor y = Tensor::empty(out_shape, x.dtype(), x.device());
    with_cuda_float(x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cuda::permute<T>(int(nd), x.shape().data(), d.data(), dev<T>(x), dev<T>(y), false, stream_of(x));
    });
    if (needs_grad({&x})) {
      tape().record(op, {x}, {y}, [x = x, y, inv]() mutable {
        with_cuda_float(x.dtype(), [&](auto tag) {
          using T = decltype(tag);
          // the gradient flows back through the inverse permutation
          cuda::permute<T>(int(y.dim()), y.shape().data(), inv.data(), dev<T>(y.grad()), dev<T>(x.grad_buffer()),
                           true, stream_of(x));
        });
      });
    }
    return y;
  }
#endif
  Tensor y = Tensor::empty(out_shape, x.dtype());
  with_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::permute<T>(int(nd), x.shape().data(), d.data(), x.data<T>(), y.data<T>(), false);
  });
  if (needs_grad({&x})) {
    tape().record(op, {x}, {y}, [x = x, y, inv]() mutable {
      with_float(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        // the gradient flows back through the inverse permutation
        cpu::permute<T>(int(y.dim()), y.shape().data(), inv.data(), y.grad().template data<T>(),
                        x.grad_buffer().template data<T>(), true);
      });
    });
  }
  return y;
}

Tensor slice(const Tensor& x, int dim, int64_t start, int64_t end) {
  const char* op = "slice";
  check_float(op, "x", x);
  const int d = normalize_dim(op, dim, x.dim());
  const int64_t n = x.shape()[size_t(d)];
  CLIPCU_CHECK(0 <= start && start <= end && end <= n, "op slice: [" << start << ", " << end << ") along dim " << dim
                                                                     << " out of range for argument 'x' " << x.str());
  Split sp = split_at(x.shape(), d);
  Shape out_shape = x.shape();
  out_shape[size_t(d)] = end - start;
#ifdef CLIPCU_WITH_CUDA
  if (x.device().is_cuda()) {
    Tensor y = Tensor::empty(out_shape, x.dtype(), x.device());
    const int64_t len = end - start;
    with_cuda_float(x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cuda::copy_block<T>(sp.outer, len, sp.inner, dev<T>(x), sp.D, start, dev<T>(y), len, 0, false, stream_of(x));
    });
    if (needs_grad({&x})) {
      tape().record(op, {x}, {y}, [x = x, y, sp, start, len]() mutable {
        with_cuda_float(x.dtype(), [&](auto tag) {
          using T = decltype(tag);
          cuda::copy_block<T>(sp.outer, len, sp.inner, dev<T>(y.grad()), len, 0, dev<T>(x.grad_buffer()), sp.D, start,
                              true, stream_of(x));
        });
      });
    }
    return y;
  }
#endif
  Tensor y = Tensor::empty(out_shape, x.dtype());
  with_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::slice_forward<T>(sp.outer, sp.D, sp.inner, start, end - start, x.data<T>(), y.data<T>());
  });
  if (needs_grad({&x})) {
    tape().record(op, {x}, {y}, [x = x, y, sp, start, end]() mutable {
      with_float(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::slice_backward<T>(sp.outer, sp.D, sp.inner, start, end - start, y.grad().template data<T>(),
                               x.grad_buffer().template data<T>());
      });
    });
  }
  return y;
}

Tensor concat(const std::vector<Tensor>& xs, int dim) {
  const char* op = "concat";
  CLIPCU_CHECK(!xs.empty(), "op concat: no inputs");
  for (const Tensor& x : xs) check_float(op, "xs", x);
  const Tensor& x0 = xs[0];
  const int d = normalize_dim(op, dim, x0.dim());
  Shape out_shape = x0.shape();
  out_shape[size_t(d)] = 0;
  for (size_t k = 0; k < xs.size(); ++k) {
    const Tensor& x = xs[k];
    CLIPCU_CHECK(x.dtype() == x0.dtype(), "op concat: input " << k << " is " << x.str() << " but input 0 is "
                                                              << x0.str() << " (one dtype for all inputs)");
    CLIPCU_CHECK(x.device() == x0.device(), "op concat: input " << k << " is on " << x.device().str()
                                                                << " but input 0 is on " << x0.device().str()
                                                                << " (all inputs of an op must be on one device)");
    bool ok = x.dim() == x0.dim();
    for (int64_t a = 0; ok && a < x0.dim(); ++a) ok = a == d || x.shape()[size_t(a)] == x0.shape()[size_t(a)];
    CLIPCU_CHECK(ok, "op concat: input " << k << " has shape " << shape_str(x.shape()) << ", input 0 has "
                                         << shape_str(x0.shape()) << " (they may differ only along dim " << dim << ")");
    out_shape[size_t(d)] += x.shape()[size_t(d)];
  }
  const Split sp = split_at(out_shape, d);
  std::vector<int64_t> starts(xs.size());
  int64_t at = 0;
  for (size_t k = 0; k < xs.size(); ++k) {
    starts[k] = at;
    at += xs[k].shape()[size_t(d)];
  }
#ifdef CLIPCU_WITH_CUDA
  if (x0.device().is_cuda()) {
    Tensor y = Tensor::empty(out_shape, x0.dtype(), x0.device());
    with_cuda_float(x0.dtype(), [&](auto tag) {
      using T = decltype(tag);
      for (size_t k = 0; k < xs.size(); ++k) {
        const int64_t len = xs[k].shape()[size_t(d)];
        cuda::copy_block<T>(sp.outer, len, sp.inner, dev<T>(xs[k]), len, 0, dev<T>(y), sp.D, starts[k], false,
                            stream_of(x0));
      }
    });
    bool any_grad = false;
    for (const Tensor& x : xs) any_grad = any_grad || needs_grad({&x});
    if (any_grad) {
      tape().record(op, xs, {y}, [xs = xs, y, sp, starts, d]() mutable {
        with_cuda_float(y.dtype(), [&](auto tag) {
          using T = decltype(tag);
          const T* gy = dev<T>(y.grad());
          for (size_t k = 0; k < xs.size(); ++k) {
            if (!xs[k].requires_grad()) continue;
            const int64_t len = xs[k].shape()[size_t(d)];
            cuda::copy_block<T>(sp.outer, len, sp.inner, gy, sp.D, starts[k], dev<T>(xs[k].grad_buffer()), len, 0,
                                true, stream_of(y));
          }
        });
      });
    }
    return y;
  }
#endif
  Tensor y = Tensor::empty(out_shape, x0.dtype());
  with_float(x0.dtype(), [&](auto tag) {
    using T = decltype(tag);
    for (size_t k = 0; k < xs.size(); ++k)
      cpu::concat_forward_part<T>(sp.outer, sp.D, sp.inner, starts[k], xs[k].shape()[size_t(d)], xs[k].data<T>(),
                                  y.data<T>());
  });
  bool any = false;
  for (const Tensor& x : xs) any = any || needs_grad({&x});
  if (any) {
    tape().record(op, xs, {y}, [xs = xs, y, sp, starts, d]() mutable {
      with_float(y.dtype(), [&](auto tag) {
        using T = decltype(tag);
        const T* gy = y.grad().template data<T>();
        for (size_t k = 0; k < xs.size(); ++k) {
          if (!xs[k].requires_grad()) continue;
          cpu::concat_backward_part<T>(sp.outer, sp.D, sp.inner, starts[k], xs[k].shape()[size_t(d)], gy,
                                       xs[k].grad_buffer().template data<T>());
        }
      });
    });
  }
  return y;
}

Tensor gather_rows(const Tensor& x, const Tensor& index) {
  const char* op = "gather_rows";
  check_float(op, "x", x);
  check_index(op, "index", index);
  CLIPCU_CHECK(x.dim() == 3,
               "op gather_rows: argument 'x' has shape " << shape_str(x.shape()) << ", expected [B, T, C]");
  const int64_t B = x.size(0), Tn = x.size(1), C = x.size(2);
  CLIPCU_CHECK(index.dim() == 1 && index.size(0) == B, "op gather_rows: argument 'index' has shape "
                                                           << shape_str(index.shape()) << ", expected [" << B
                                                           << "] for 'x' " << shape_str(x.shape()));
  check_same_device(op, "index", index, "x", x);
#ifdef CLIPCU_WITH_CUDA
  if (x.device().is_cuda()) {
    // The kernel cannot throw: validate the B indices on the host first (a small synchronous
    // copy; an out-of-range index must be an error, not a silent zero row).
    {
      const std::vector<int64_t> host = index.to_i64_vector();
      cpu::check_row_indices<int64_t>(op, B, Tn, host.data());
    }
    Tensor y = Tensor::empty({B, C}, x.dtype(), x.device());
    with_cuda_float(x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      with_index(index.dtype(), [&](auto itag) {
        using I = decltype(itag);
        if (B > 0 && C > 0)
          cuda::gather_rows_forward<T, I>(B, Tn, C, dev<T>(x), dev_index<I>(index), dev<T>(y), nullptr,
                                          stream_of(x));
      });
    });
    if (needs_grad({&x})) {
      tape().record(op, {x, index}, {y}, [x = x, index = index, y, B, Tn, C]() mutable {
        if (B == 0 || C == 0) return;
        with_cuda_float(x.dtype(), [&](auto tag) {
          using T = decltype(tag);
          with_index(index.dtype(), [&](auto itag) {
            using I = decltype(itag);
            cuda::gather_rows_backward<T, I>(B, Tn, C, dev_index<I>(index), dev<T>(y.grad()), dev<T>(x.grad_buffer()),
                                             nullptr, stream_of(x));
          });
        });
      });
    }
    return y;
  }
#endif
  Tensor y = Tensor::empty({B, C}, x.dtype());
  with_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    with_index(index.dtype(), [&](auto itag) {
      using I = decltype(itag);
      cpu::gather_rows_forward<T, I>(B, Tn, C, x.data<T>(), index.data<I>(), y.data<T>());
    });
  });
  if (needs_grad({&x})) {
    tape().record(op, {x, index}, {y}, [x = x, index = index, y, B, Tn, C]() mutable {
      with_float(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        with_index(index.dtype(), [&](auto itag) {
          using I = decltype(itag);
          cpu::gather_rows_backward<T, I>(B, Tn, C, index.template data<I>(), y.grad().template data<T>(),
                                          x.grad_buffer().template data<T>());
        });
      });
    });
  }
  return y;
}

Tensor mean(const Tensor& x, int dim, bool keepdim) {
  const char* op = "mean";
  check_float(op, "x", x);
  const int d = normalize_dim(op, dim, x.dim());
  const Split sp = split_at(x.shape(), d);
  CLIPCU_CHECK(sp.D > 0, "op mean: dim " << dim << " of argument 'x' " << x.str() << " is empty");
  Shape out_shape = x.shape();
  if (keepdim) {
    out_shape[size_t(d)] = 1;
  } else {
    out_shape.erase(out_shape.begin() + d);
  }
#ifdef CLIPCU_WITH_CUDA
  if (x.device().is_cuda()) {
    Tensor y = Tensor::empty(out_shape, x.dtype(), x.device());
    with_cuda_float(x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cuda::mean_forward<T>(sp.outer, sp.D, sp.inner, dev<T>(x), dev<T>(y), stream_of(x));
    });
    if (needs_grad({&x})) {
      tape().record(op, {x}, {y}, [x = x, y, sp]() mutable {
        with_cuda_float(x.dtype(), [&](auto tag) {
          using T = decltype(tag);
          cuda::mean_backward<T>(sp.outer, sp.D, sp.inner, dev<T>(y.grad()), dev<T>(x.grad_buffer()), stream_of(x));
        });
      });
    }
    return y;
  }
#endif
  Tensor y = Tensor::empty(out_shape, x.dtype());
  with_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::mean_forward<T>(sp.outer, sp.D, sp.inner, x.data<T>(), y.data<T>());
  });
  if (needs_grad({&x})) {
    tape().record(op, {x}, {y}, [x = x, y, sp]() mutable {
      with_float(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::mean_backward<T>(sp.outer, sp.D, sp.inner, y.grad().template data<T>(),
                              x.grad_buffer().template data<T>());
      });
    });
  }
  return y;
}

Tensor sum_all(const Tensor& x) {
  const char* op = "sum_all";
  check_float(op, "x", x);
#ifdef CLIPCU_WITH_CUDA
  if (x.device().is_cuda()) {
    Tensor y = Tensor::empty({1}, x.dtype(), x.device());
    Tensor ws = scratch_floats(x, cuda::sum_all_workspace_floats(x.numel()));
    with_cuda_float(x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cuda::sum_all_forward<T>(x.numel(), dev<T>(x), dev<T>(y), ws.data<float>(), stream_of(x));
    });
    if (needs_grad({&x})) {
      tape().record(op, {x}, {y}, [x = x, y]() mutable {
        with_cuda_float(x.dtype(), [&](auto tag) {
          using T = decltype(tag);
          // the incoming gradient stays on the device: no host round trip
          cuda::sum_all_backward<T>(x.numel(), dev<T>(y.grad()), dev<T>(x.grad_buffer()), stream_of(x));
        });
      });
    }
    return y;
  }
#endif
  Tensor y = Tensor::empty({1}, x.dtype());
  with_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    y.data<T>()[0] = cpu::sum_all_forward<T>(x.numel(), x.data<T>());
  });
  if (needs_grad({&x})) {
    tape().record(op, {x}, {y}, [x = x, y]() mutable {
      with_float(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::sum_all_backward<T>(x.numel(), y.grad().template data<T>()[0], x.grad_buffer().template data<T>());
      });
    });
  }
  return y;
}

std::vector<Tensor> split_qkv_heads(const Tensor& qkv, int64_t H) {
  const char* op = "split_qkv_heads";
  check_float(op, "qkv", qkv);
  CLIPCU_CHECK(qkv.dim() == 3, "op split_qkv_heads: argument 'qkv' has shape " << shape_str(qkv.shape())
                                                                             << ", expected [B, T, 3*H*D]");
  CLIPCU_CHECK(H > 0 && qkv.size(2) % (3 * H) == 0,
               "op split_qkv_heads: argument 'qkv' has shape " << shape_str(qkv.shape())
                                                               << ", whose last dim is not 3*H*D for H = " << H);
  const int64_t B = qkv.size(0), Tn = qkv.size(1), D = qkv.size(2) / (3 * H);
#ifdef CLIPCU_WITH_CUDA
  if (qkv.device().is_cuda()) {
    const Shape hs = {B, H, Tn, D};
    Tensor q = Tensor::empty(hs, qkv.dtype(), qkv.device()), k = Tensor::empty(hs, qkv.dtype(), qkv.device()),
           v = Tensor::empty(hs, qkv.dtype(), qkv.device());
    with_cuda_float(qkv.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cuda::split_qkv_heads_forward<T>(B, Tn, H, D, dev<T>(qkv), dev<T>(q), dev<T>(k), dev<T>(v), stream_of(qkv));
    });
    if (needs_grad({&qkv})) {
      tape().record(op, {qkv}, {q, k, v}, [qkv = qkv, q, k, v, B, Tn, H, D]() mutable {
        with_cuda_float(qkv.dtype(), [&](auto tag) {
          using T = decltype(tag);
          auto grad_or_null = [](const Tensor& t) { return t.has_grad() ? dev<T>(t.grad()) : nullptr; };
          cuda::split_qkv_heads_backward<T>(B, Tn, H, D, grad_or_null(q), grad_or_null(k), grad_or_null(v),
                                            dev<T>(qkv.grad_buffer()), stream_of(qkv));
        });
      });
    }
    return {q, k, v};
  }
#endif
  Tensor q = Tensor::empty({B, H, Tn, D}, qkv.dtype()), k = Tensor::empty({B, H, Tn, D}, qkv.dtype()),
         v = Tensor::empty({B, H, Tn, D}, qkv.dtype());
  with_float(qkv.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::split_qkv_heads_forward<T>(B, Tn, H, D, qkv.data<T>(), q.data<T>(), k.data<T>(), v.data<T>());
  });
  if (needs_grad({&qkv})) {
    tape().record(op, {qkv}, {q, k, v}, [qkv = qkv, q, k, v, B, Tn, H, D]() mutable {
      with_float(qkv.dtype(), [&](auto tag) {
        using T = decltype(tag);
        auto grad_or_null = [](const Tensor& t) { return t.has_grad() ? t.grad().template data<T>() : nullptr; };
        cpu::split_qkv_heads_backward<T>(B, Tn, H, D, grad_or_null(q), grad_or_null(k), grad_or_null(v),
                                         qkv.grad_buffer().template data<T>());
      });
    });
  }
  return {q, k, v};
}

Tensor merge_heads(const Tensor& x) {
  const char* op = "merge_heads";
  check_float(op, "x", x);
  CLIPCU_CHECK(x.dim() == 4,
               "op merge_heads: argument 'x' has shape " << shape_str(x.shape()) << ", expected [B, H, T, D]");
  const int64_t B = x.size(0), H = x.size(1), Tn = x.size(2), D = x.size(3);
#ifdef CLIPCU_WITH_CUDA
  if (x.device().is_cuda()) {
    Tensor y = Tensor::empty({B, Tn, H * D}, x.dtype(), x.device());
    with_cuda_float(x.dtype(), [&](auto tag) {
      using T = decltype(tag);
      cuda::merge_heads_forward<T>(B, H, Tn, D, dev<T>(x), dev<T>(y), stream_of(x));
    });
    if (needs_grad({&x})) {
      tape().record(op, {x}, {y}, [x = x, y, B, H, Tn, D]() mutable {
        with_cuda_float(x.dtype(), [&](auto tag) {
          using T = decltype(tag);
          cuda::merge_heads_backward<T>(B, H, Tn, D, dev<T>(y.grad()), dev<T>(x.grad_buffer()), stream_of(x));
        });
      });
    }
    return y;
  }
#endif
  Tensor y = Tensor::empty({B, Tn, H * D}, x.dtype());
  with_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::merge_heads_forward<T>(B, H, Tn, D, x.data<T>(), y.data<T>());
  });
  if (needs_grad({&x})) {
    tape().record(op, {x}, {y}, [x = x, y, B, H, Tn, D]() mutable {
      with_float(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        cpu::merge_heads_backward<T>(B, H, Tn, D, y.grad().template data<T>(), x.grad_buffer().template data<T>());
      });
    });
  }
  return y;
}

}  // namespace clipcu::ops
