#include "engine/train/device_setup.h"

#include <cstdio>

#include "engine/error.h"
#include "engine/models/clip.h"

#ifdef CLIPCU_WITH_CUDA
#include <cuda_runtime_api.h>

#include "engine/cuda_runtime.h"
#endif

namespace clipcu::train {

std::string ComputeTarget::describe() const {
  std::string d = device.str();
  if (device.is_cuda()) d += " (" + device_name(device) + ")";
  return d + ", " + precision;
}

ComputeTarget resolve_target(const std::string& device, const std::string& precision) {
  CLIPCU_CHECK(precision == "fp32" || precision == "bf16",
               "--precision must be fp32 or bf16, got '" << precision << "'");
  ComputeTarget t;
  t.precision = precision;
  t.dtype = precision == "bf16" ? DType::BF16 : DType::F32;
  t.device = device == "auto" ? default_device() : parse_device(device);
  if (t.device.is_cuda()) {
#ifdef CLIPCU_WITH_CUDA
    CLIPCU_CHECK(cuda_available(), "--device " << device << ": no GPU answers (this build has the CUDA backend, but "
                                                            "the driver reports no usable device); use --device cpu");
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      (void)cudaGetLastError();
      n = 0;
    }
    CLIPCU_CHECK(t.device.index < n, "--device " << device << ": there are " << n << " GPU(s), numbered from 0");
#else
    CLIPCU_FAIL("--device " << device << ": this build of clipcu has no CUDA backend (configure with "
                                         "-DCLIPCU_CUDA=ON on a machine with the CUDA toolkit); use --device cpu");
#endif
  }
  CLIPCU_CHECK(t.device.is_cuda() || t.dtype == DType::F32,
               "--precision bf16 is a GPU precision: the CPU engine computes in fp32"
                   << (device == "auto" ? " (--device auto found no GPU)" : "")
                   << "; use --precision fp32 or --device cuda");
  return t;
}

void move_model(models::CLIP& model, const ComputeTarget& target) {
  if (target.device.is_cpu() && target.dtype == DType::F32 && model.device().is_cpu() && model.dtype() == DType::F32)
    return;
  model.to(target.device, target.dtype);
  model.name_tensors();
}

std::string device_name(Device d) {
  if (d.is_cpu()) return "cpu";
#ifdef CLIPCU_WITH_CUDA
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, d.index) == cudaSuccess) return prop.name;
  (void)cudaGetLastError();
#endif
  return d.str();
}

MemoryStats memory_stats(Device d) {
  MemoryStats m;
#ifdef CLIPCU_WITH_CUDA
  if (d.is_cuda()) {
    const cuda::AllocatorStats s = cuda::allocator(d.index).stats();
    m.in_use_bytes = s.in_use_bytes;
    m.peak_bytes = s.peak_in_use_bytes;
    m.device_mallocs = s.device_mallocs;
  }
#else
  (void)d;
#endif
  return m;
}

void reset_peak_memory(Device d) {
#ifdef CLIPCU_WITH_CUDA
  if (d.is_cuda()) cuda::allocator(d.index).reset_peak();
#else
  (void)d;
#endif
}

std::string format_bytes(size_t bytes) {
  char buf[64];
  const double b = double(bytes);
  if (b >= double(1ull << 30)) {
    std::snprintf(buf, sizeof buf, "%.2f GiB", b / double(1ull << 30));
  } else {
    std::snprintf(buf, sizeof buf, "%.1f MiB", b / double(1ull << 20));
  }
  return buf;
}

}  // namespace clipcu::train
