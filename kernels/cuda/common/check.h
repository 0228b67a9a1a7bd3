// Error checks for CUDA, cuBLAS and cuDNN calls: a failing call throws clipcu::Error naming the
// call, the library's error name and text, and file:line. Host code only (.cu and .cpp).
//
// Header-only on purpose: clipcu_kernels_cuda is linked after clipcu_core (clipcu_core links it),
// so kernel files must not call functions defined in clipcu_core's .cpp files (a static-library
// cycle). clipcu::Error itself is header-only (engine/error.h), so throwing it is fine.
#pragma once
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>

#include "engine/error.h"

#ifdef CLIPCU_WITH_CUDNN
#include <cudnn.h>
#endif

namespace clipcu::cuda::detail {

// "kernels/cuda/gemm.cu" from an absolute __FILE__ (the same rule as engine/error.cpp).
inline const char* short_path(const char* file) {
  for (const char* root : {"/engine/", "/kernels/", "/weights/", "/tools/", "/tests/", "/bench/"}) {
    if (const char* p = std::strstr(file, root)) return p + 1;
  }
  return file;
}

[[noreturn]] inline void fail(const char* file, int line, const std::string& msg) {
  throw ::clipcu::Error(msg + " [" + short_path(file) + ":" + std::to_string(line) + "]");
}

[[noreturn]] inline void fail_cuda(const char* file, int line, const char* call, cudaError_t e) {
  fail(file, line,
       std::string(call) + " failed: " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

[[noreturn]] inline void fail_cublas(const char* file, int line, const char* call, cublasStatus_t s) {
  fail(file, line, std::string(call) + " failed: " + cublasGetStatusName(s) + " (" + cublasGetStatusString(s) + ")");
}

#ifdef CLIPCU_WITH_CUDNN
[[noreturn]] inline void fail_cudnn(const char* file, int line, const char* call, cudnnStatus_t s) {
  fail(file, line, std::string(call) + " failed: " + cudnnGetErrorString(s));
}
#endif

// True when p is a multiple of `bytes` (vector loads need it).
inline bool aligned_to(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

}  // namespace clipcu::cuda::detail

// CLIPCU_CUDA_CHECK(cudaMemcpyAsync(...)): throws on any error. The error is also taken off the
// runtime's "last error" slot so that a later launch check does not report it a second time.
#define CLIPCU_CUDA_CHECK(call)                                                    \
  do {                                                                             \
    cudaError_t clipcu_e_ = (call);                                                \
    if (clipcu_e_ != cudaSuccess) {                                                \
      (void)cudaGetLastError();                                                    \
      ::clipcu::cuda::detail::fail_cuda(__FILE__, __LINE__, #call, clipcu_e_);     \
    }                                                                              \
  } while (0)

// After a kernel launch: a bad configuration (too many threads, too much shared memory) is
// reported here; faults inside the kernel surface at the next synchronizing call.
#define CLIPCU_CUDA_CHECK_LAUNCH(kernel_name)                                      \
  do {                                                                             \
    cudaError_t clipcu_e_ = cudaGetLastError();                                    \
    if (clipcu_e_ != cudaSuccess)                                                  \
      ::clipcu::cuda::detail::fail_cuda(__FILE__, __LINE__, "launch of " kernel_name, clipcu_e_); \
  } while (0)

#define CLIPCU_CUBLAS_CHECK(call)                                                  \
  do {                                                                             \
    cublasStatus_t clipcu_s_ = (call);                                             \
    if (clipcu_s_ != CUBLAS_STATUS_SUCCESS)                                        \
      ::clipcu::cuda::detail::fail_cublas(__FILE__, __LINE__, #call, clipcu_s_);   \
  } while (0)

#ifdef CLIPCU_WITH_CUDNN
#define CLIPCU_CUDNN_CHECK(call)                                                   \
  do {                                                                             \
    cudnnStatus_t clipcu_s_ = (call);                                              \
    if (clipcu_s_ != CUDNN_STATUS_SUCCESS)                                         \
      ::clipcu::cuda::detail::fail_cudnn(__FILE__, __LINE__, #call, clipcu_s_);    \
  } while (0)
#endif

// CLIPCU_CUDA_REQUIRE(cond, "gemm: K " << K << " < 0"): argument checks in launchers
// (header-only twin of CLIPCU_CHECK, for the reason in this file's first comment).
#define CLIPCU_CUDA_REQUIRE(cond, msg_stream)                                      \
  do {                                                                             \
    if (!(cond)) {                                                                 \
      std::ostringstream clipcu_m_;                                                \
      clipcu_m_ << msg_stream;                                                     \
      ::clipcu::cuda::detail::fail(__FILE__, __LINE__, clipcu_m_.str());           \
    }                                                                              \
  } while (0)
