#include "engine/device.h"

#include <cstdlib>
#include <cstring>
#include <new>

#include "engine/error.h"

#ifdef CLIPCU_WITH_CUDA
#include <cuda_runtime_api.h>

#include "engine/cuda_runtime.h"
#endif

namespace clipcu {

std::string Device::str() const { return is_cpu() ? std::string("cpu") : "cuda:" + std::to_string(index); }

Device parse_device(const std::string& s) {
  if (s == "cpu") return Device::cpu();
  if (s == "cuda") return Device::cuda(0);
  if (s.rfind("cuda:", 0) == 0 && s.size() > 5) {
    char* end = nullptr;
    long i = std::strtol(s.c_str() + 5, &end, 10);
    if (*end == '\0' && i >= 0) return Device::cuda(int(i));
  }
  CLIPCU_FAIL("unknown device '" << s << "' (expected cpu, cuda or cuda:N)");
}

bool cuda_available() {
#ifdef CLIPCU_WITH_CUDA
  static const bool available = [] {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
      cudaGetLastError();  // clear the sticky "insufficient driver" / "no device" error
      return false;
    }
    return n > 0;
  }();
  return available;
#else
  return false;
#endif
}

Device default_device() { return cuda_available() ? Device::cuda(0) : Device::cpu(); }

void* device_alloc(Device d, size_t bytes) {
  if (bytes == 0) bytes = 1;
  if (d.is_cpu()) {
    size_t rounded = (bytes + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded);
    if (!p) throw OutOfMemory("out of host memory allocating " + std::to_string(bytes) + " bytes", bytes);
    return p;
  }
#ifdef CLIPCU_WITH_CUDA
  CLIPCU_CHECK(cuda_available(), "no CUDA device is available for an allocation on " << d.str());
  // the caching allocator: no cudaMalloc once a training loop has warmed up (throws OutOfMemory)
  return cuda::allocator(d.index).allocate(bytes);
#else
  CLIPCU_FAIL("this build of clipcu has no CUDA backend (device " << d.str() << ")");
#endif
}

void device_free(Device d, void* p) {
  if (!p) return;
  if (d.is_cpu()) {
    std::free(p);
    return;
  }
#ifdef CLIPCU_WITH_CUDA
  cuda::allocator(d.index).free(p);  // back to a free list; safe in stream order (cuda_runtime.h)
#endif
}

void device_copy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes) {
  if (bytes == 0) return;
  if (dst_dev.is_cpu() && src_dev.is_cpu()) {
    std::memcpy(dst, src, bytes);
    return;
  }
#ifdef CLIPCU_WITH_CUDA
  cudaMemcpyKind kind = dst_dev.is_cpu() ? cudaMemcpyDeviceToHost
                        : src_dev.is_cpu() ? cudaMemcpyHostToDevice
                                           : cudaMemcpyDeviceToDevice;
  cudaError_t e = cudaMemcpy(dst, src, bytes, kind);
  CLIPCU_CHECK(e == cudaSuccess, "cudaMemcpy of " << bytes << " bytes failed: " << cudaGetErrorString(e));
#else
  CLIPCU_FAIL("this build of clipcu has no CUDA backend");
#endif
}

void device_memset_zero(Device d, void* p, size_t bytes) {
  if (bytes == 0) return;
  if (d.is_cpu()) {
    std::memset(p, 0, bytes);
    return;
  }
#ifdef CLIPCU_WITH_CUDA
  cudaError_t e = cudaMemset(p, 0, bytes);
  CLIPCU_CHECK(e == cudaSuccess, "cudaMemset failed: " << cudaGetErrorString(e));
#else
  CLIPCU_FAIL("this build of clipcu has no CUDA backend");
#endif
}

}  // namespace clipcu
