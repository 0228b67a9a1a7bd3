// Differentiable embedding lookup: table [V, C], ids [...] (I32/I64) -> [..., C].
// Backward is the deterministic scatter-add of kernels/cpu/embedding.h (repeated ids add up).
#include "engine/autograd.h"
#include "engine/ops.h"
#include "kernels/cpu/embedding.h"

namespace clipcu::ops {

Tensor embedding(const Tensor& table, const Tensor& ids) {
  CLIPCU_CHECK(table.defined() && ids.defined(), "op embedding: undefined argument");
  CLIPCU_CHECK(!table.device().is_cuda() && !ids.device().is_cuda(),
               "op embedding: CUDA path not built yet (table " << table.str() << ", ids " << ids.str() << ")");
  CLIPCU_CHECK(table.dtype() == DType::F32 || table.dtype() == DType::F64,
               "op embedding: argument 'table' is " << table.str() << ", expected F32 or F64");
  CLIPCU_CHECK(ids.dtype() == DType::I32 || ids.dtype() == DType::I64,
               "op embedding: argument 'ids' is " << ids.str() << ", expected I32 or I64");
  CLIPCU_CHECK(table.dim() == 2,
               "op embedding: argument 'table' has shape " << shape_str(table.shape()) << ", expected [V, C]");
  const int64_t V = table.size(0), C = table.size(1), N = ids.numel();
  Shape out_shape = ids.shape();
  out_shape.push_back(C);
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
