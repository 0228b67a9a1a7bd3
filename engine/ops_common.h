// Helpers shared by the op implementations (engine/ops_*.cpp); not part of the public API.
//
// Dispatch: every op checks its arguments with check_float / check_index / check_same_device,
// then runs the CUDA kernels when its inputs live on a CUDA device (builds with the CUDA backend,
// CLIPCU_WITH_CUDA) and the CPU twin otherwise. CPU tensors are F32 or F64; CUDA tensors F32 or
// BF16 (float accumulation inside the kernels); index tensors I32 or I64 on either device.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "engine/device.h"
#include "engine/tensor.h"
#include "engine/variants.h"  // variant_from_env, for the CLIPCU_* kernel choices

#ifdef CLIPCU_WITH_CUDA
#include "engine/cuda_runtime.h"
#include "kernels/cuda/common/types.h"
#endif

namespace clipcu::ops::detail {

// Whether the environment variable `name` is set to something other than "" or "0" (CLIPCU_TF32).
inline bool env_flag(const char* name) {
  const char* v = std::getenv(name);
  return v && *v && std::string(v) != "0";
}

// Floating arguments: defined, and of a dtype the tensor's device computes in: F32 or F64 on
// the CPU, F32 or BF16 on a CUDA device (builds without the CUDA backend reject CUDA tensors).
inline void check_float(const char* op, const char* arg, const Tensor& t) {
  CLIPCU_CHECK(t.defined(), "op " << op << ": argument '" << arg << "' is undefined");
  if (t.device().is_cuda()) {
#ifdef CLIPCU_WITH_CUDA
    CLIPCU_CHECK(cuda_available(), "op " << op << ": argument '" << arg << "' is " << t.str()
                                         << " but no CUDA device answers on this machine");
    CLIPCU_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::BF16,
                 "op " << op << ": argument '" << arg << "' is " << t.str()
                       << ": CUDA tensors must be F32 or BF16 (F64 runs on the CPU only)");
#else
    CLIPCU_FAIL("op " << op << ": this build has no CUDA backend (configure with -DCLIPCU_CUDA=ON; argument '" << arg
                      << "' is " << t.str() << ")");
#endif
    return;
  }
  CLIPCU_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::F64,
               "op " << op << ": argument '" << arg << "' is " << t.str() << ", expected F32 or F64");
}

// Index arguments: defined, I32 or I64 (on the CPU, or on a CUDA device in CUDA builds).
inline void check_index(const char* op, const char* arg, const Tensor& t) {
  CLIPCU_CHECK(t.defined(), "op " << op << ": argument '" << arg << "' is undefined");
  CLIPCU_CHECK(t.dtype() == DType::I32 || t.dtype() == DType::I64,
               "op " << op << ": argument '" << arg << "' is " << t.str() << ", expected I32 or I64");
#ifndef CLIPCU_WITH_CUDA
  CLIPCU_CHECK(!t.device().is_cuda(), "op " << op << ": this build has no CUDA backend (configure with -DCLIPCU_CUDA=ON; "
                                            << "argument '" << arg << "' is " << t.str() << ")");
#endif
}

inline void check_same_dtype(const char* op, const char* arg, const Tensor& t, const char* ref_arg, const Tensor& ref) {
  CLIPCU_CHECK(t.dtype() == ref.dtype(), "op " << op << ": argument '" << arg << "' is " << t.str() << " but '"
                                               << ref_arg << "' is " << ref.str() << " (one dtype for all)");
}

// All inputs of an op live on one device (an undefined optional argument is skipped).
inline void check_same_device(const char* op, const char* arg, const Tensor& t, const char* ref_arg, const Tensor& ref) {
  if (!t.defined() || !ref.defined()) return;
  CLIPCU_CHECK(t.device() == ref.device(), "op " << op << ": argument '" << arg << "' is on " << t.device().str()
                                                 << " but '" << ref_arg << "' is on " << ref.device().str()
                                                 << " (all inputs of an op must be on one device; move them with "
                                                    "Tensor::to(Device))");
}

// Calls f(T{}) with T = float or double for an (already checked) CPU floating dtype.
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

#ifdef CLIPCU_WITH_CUDA
// ---------------------------------------------------------------- CUDA side
// Calls f(T{}) with T = float or cuda::bf16 for an (already checked) CUDA floating dtype.
template <class F>
void with_cuda_float(DType t, F&& f) {
  if (t == DType::F32) {
    f(float{});
  } else {
    f(cuda::bf16{});
  }
}

// A CUDA tensor's data as T (float or bf16; the dtype is checked), nullptr for an undefined one.
template <class T>
T* dev(Tensor t) {
  if (!t.defined()) return nullptr;
  constexpr DType want = std::is_same_v<T, float> ? DType::F32 : DType::BF16;
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, cuda::bf16>, "dev<T>: float or bf16");
  CLIPCU_CHECK(t.dtype() == want && t.device().is_cuda(), "internal: tensor " << t.str() << " used as "
                                                                              << dtype_name(want) << " on CUDA");
  return static_cast<T*>(t.raw());
}
// The same for index and float32 scratch tensors.
template <class I>
I* dev_index(Tensor t) {
  return t.defined() ? t.data<I>() : nullptr;
}

// The stream the op's kernels go on: the current stream of the inputs' device.
inline cudaStream_t stream_of(const Tensor& t) { return cuda::current_stream(t.device().index); }

// Float32 scratch on the tensor's device (from the caching allocator; freed in stream order).
inline Tensor scratch_floats(const Tensor& like, size_t n) {
  return Tensor::empty({int64_t(n > 0 ? n : 1)}, DType::F32, like.device());
}
#endif

}  // namespace clipcu::ops::detail
