// Differentiable embedding lookup: table [V, C], ids [...] (I32/I64) -> [..., C].
// Backward is the deterministic scatter-add of kernels/cpu/embedding.h (repeated ids add up).
//
// CUDA tensors (table F32/BF16, ids I32/I64 on the same device) run kernels/cuda/embedding.cuh.
// Its deterministic backward needs a host-built index of the batch (the distinct ids and the
// positions of each), so the forward copies the ids to the host once (a small synchronous copy,
// B*T ints), validates them there (a kernel cannot throw) and, when a gradient will be needed,
// builds and uploads the index then: the backward itself runs without a host round trip.
#include <cstring>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/ops_common.h"
#include "kernels/cpu/embedding.h"

#ifdef CLIPCU_WITH_CUDA
#include "kernels/cuda/embedding.cuh"
#endif

namespace clipcu::ops {

using namespace detail;

namespace {

#ifdef CLIPCU_WITH_CUDA
Tensor upload_i32(const std::vector<int32_t>& v, Device d) {
  Tensor h = Tensor::empty({int64_t(v.size())}, DType::I32);
  if (!v.empty()) std::memcpy(h.raw(), v.data(), v.size() * sizeof(int32_t));
  return h.to(d);
}

Tensor embedding_cuda(const Tensor& table, const Tensor& ids, int64_t V, int64_t C, int64_t N, const Shape& out_shape) {
  const char* op = "embedding";
  const std::vector<int64_t> host_ids = ids.to_i64_vector();  // synchronous: see the file comment
  const bool grad = needs_grad({&table});
  cuda::EmbeddingIndex index;
  if (grad) {
    index = cuda::embedding_build_index<int64_t>(N, V, host_ids.data());  // throws naming a bad id
  } else {
    for (int64_t n = 0; n < N; ++n) {
      const int64_t id = host_ids[size_t(n)];
      CLIPCU_CHECK(id >= 0 && id < V,
                   "op " << op << ": id " << id << " at position " << n << " is outside [0, V=" << V << ")");
    }
  }
  Tensor out = Tensor::empty(out_shape, table.dtype(), table.device());
  if (N > 0 && C > 0) {
    with_cuda_float(table.dtype(), [&](auto tt) {
      using T = decltype(tt);
      with_index(ids.dtype(), [&](auto it) {
        using I = decltype(it);
        cuda::embedding_forward<T, I>(N, 1, V, C, dev<T>(table), dev_index<I>(ids), nullptr, dev<T>(out), nullptr,
                                      stream_of(table));
      });
    });
  }
  if (grad) {
    const int64_t U = int64_t(index.rows.size());
    Tensor rows = upload_i32(index.rows, table.device()), offsets = upload_i32(index.offsets, table.device()),
           positions = upload_i32(index.positions, table.device());
    tape().record(op, {table, ids}, {out}, [table = table, out, rows, offsets, positions, U, C]() mutable {
      if (U == 0 || C == 0) return;
      with_cuda_float(table.dtype(), [&](auto tt) {
        using T = decltype(tt);
        cuda::embedding_backward<T>(U, C, rows.data<int32_t>(), offsets.data<int32_t>(), positions.data<int32_t>(),
                                    dev<T>(out.grad()), dev<T>(table.grad_buffer()), stream_of(table));
      });
    });
  }
  return out;
}
#endif

}  // namespace

Tensor embedding(const Tensor& table, const Tensor& ids) {
  const char* op = "embedding";
  check_float(op, "table", table);
  check_index(op, "ids", ids);
  check_same_device(op, "ids", ids, "table", table);
  CLIPCU_CHECK(table.dim() == 2,
               "op embedding: argument 'table' has shape " << shape_str(table.shape()) << ", expected [V, C]");
  const int64_t V = table.size(0), C = table.size(1), N = ids.numel();
  Shape out_shape = ids.shape();
  out_shape.push_back(C);
#ifdef CLIPCU_WITH_CUDA
  if (table.device().is_cuda()) return embedding_cuda(table, ids, V, C, N, out_shape);
#endif
  Tensor out = Tensor::empty(out_shape, table.dtype());

  // f(T{}, I{}) for the (already checked) table and id types
  auto dispatch = [](DType t, DType i, auto&& f) {
    auto with_i = [&](auto tt) {
      if (i == DType::I32) {
        f(tt, int32_t{});
      } else {
        f(tt, int64_t{});
      }
    };
    if (t == DType::F32) {
      with_i(float{});
    } else {
      with_i(double{});
    }
  };
  dispatch(table.dtype(), ids.dtype(), [&](auto tt, auto it) {
    using T = decltype(tt);
    using I = decltype(it);
    cpu::embedding_forward<T, I>(N, V, C, table.data<T>(), ids.data<I>(), out.data<T>());
  });
  if (needs_grad({&table})) {
    tape().record("embedding", {table, ids}, {out}, [table = table, ids = ids, out, dispatch, N, V, C]() mutable {
      dispatch(table.dtype(), ids.dtype(), [&](auto tt, auto it) {
        using T = decltype(tt);
        using I = decltype(it);
        cpu::embedding_backward<T, I>(N, V, C, ids.template data<I>(), out.grad().template data<T>(),
                                      table.grad_buffer().template data<T>());
      });
    });
  }
  return out;
}

}  // namespace clipcu::ops
