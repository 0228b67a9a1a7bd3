// Helpers shared by the op implementations (engine/ops_*.cpp); not part of the public API.
#pragma once
#include <cstdint>

#include "engine/tensor.h"

namespace clipcu::ops::detail {

// Floating arguments: defined, F32 or F64, and on the CPU (the ops do not dispatch to the CUDA
// kernels yet: a CUDA tensor gets a clear error rather than a wrong pointer).
inline void check_float(const char* op, const char* arg, const Tensor& t) {
  CLIPCU_CHECK(t.defined(), "op " << op << ": argument '" << arg << "' is undefined");
  CLIPCU_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::F64,
               "op " << op << ": argument '" << arg << "' is " << t.str() << ", expected F32 or F64");
  CLIPCU_CHECK(!t.device().is_cuda(), "op " << op << ": CUDA path not built yet (argument '" << arg << "' is "
                                            << t.str() << ")");
}

// Index arguments: defined, I32 or I64, on the CPU.
inline void check_index(const char* op, const char* arg, const Tensor& t) {
  CLIPCU_CHECK(t.defined(), "op " << op << ": argument '" << arg << "' is undefined");
  CLIPCU_CHECK(t.dtype() == DType::I32 || t.dtype() == DType::I64,
               "op " << op << ": argument '" << arg << "' is " << t.str() << ", expected I32 or I64");
  CLIPCU_CHECK(!t.device().is_cuda(), "op " << op << ": CUDA path not built yet (argument '" << arg << "' is "
                                            << t.str() << ")");
}

inline void check_same_dtype(const char* op, const char* arg, const Tensor& t, const char* ref_arg, const Tensor& ref) {
  CLIPCU_CHECK(t.dtype() == ref.dtype(), "op " << op << ": argument '" << arg << "' is " << t.str() << " but '"
                                               << ref_arg << "' is " << ref.str() << " (one dtype for all)");
}

// Calls f(T{}) with T = float or double for an (already checked) floating dtype.
template <class F>
void with_float(DType t, F&& f) {
  if (t == DType::F32) {
    f(float{});
  } else {
    f(double{});
  }
}

// Calls f(I{}) with I = int32_t or int64_t for an (already checked) index dtype.
template <class F>
void with_index(DType t, F&& f) {
  if (t == DType::I32) {
    f(int32_t{});
  } else {
    f(int64_t{});
  }
}

// The gradient buffer of an input that requires one (zeros on first use), else an undefined
// tensor. Takes a handle by value: copies share the autograd state, and closures hold const ones.
inline Tensor grad_target(Tensor t) { return t.defined() && t.requires_grad() ? t.grad_buffer() : Tensor(); }

template <class T>
T* data_or_null(Tensor t) {
  return t.defined() ? t.data<T>() : nullptr;
}

}  // namespace clipcu::ops::detail
