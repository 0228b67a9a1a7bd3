// The CUDA runtime layer (see cuda_runtime.h). Per-device state is created on first use and
// deliberately never destroyed: tensors in static storage may be freed during process exit,
// after any static destructor of ours would have run, and the CUDA runtime itself may already
// be unloading by then. The operating system reclaims everything at exit.
#include "engine/cuda_runtime.h"

#ifdef CLIPCU_WITH_CUDA

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include "engine/error.h"
#include "kernels/cuda/common/check.h"

namespace clipcu::cuda {

namespace {

constexpr int kMaxDevices = 64;

// Makes `device` current for the scope and restores the previous one.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    CLIPCU_CUDA_CHECK(cudaGetDevice(&prev_));
    if (prev_ != device) CLIPCU_CUDA_CHECK(cudaSetDevice(device));
    set_ = prev_ != device;
  }
  ~DeviceGuard() {
    if (set_) cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
  bool set_ = false;
};

struct DeviceState {
  cudaStream_t stream = nullptr;
  CachingAllocator* allocator = nullptr;
  HostStaging* staging = nullptr;
  cublasHandle_t cublas = nullptr;
  void* cublas_workspace = nullptr;
  cublasLtHandle_t cublaslt = nullptr;
  void* cublaslt_workspace = nullptr;
#ifdef CLIPCU_WITH_CUDNN
  cudnnHandle_t cudnn = nullptr;
#endif
};

// Both leaked on purpose (file comment): device_free may run from static destructors elsewhere.
std::mutex& g_mu = *new std::mutex;  // guards the creation of everything in g_state
std::array<DeviceState, kMaxDevices>& g_state = *new std::array<DeviceState, kMaxDevices>{};

DeviceState& state(int device) {
  CLIPCU_CHECK(device >= 0 && device < kMaxDevices, "CUDA device index " << device << " out of range");
  return g_state[size_t(device)];
}

std::string mib(size_t bytes) { return std::to_string(double(bytes) / double(1 << 20)) + " MiB"; }

}  // namespace

// ---------------------------------------------------------------- streams
cudaStream_t current_stream(int device) {
  DeviceState& s = state(device);
  std::lock_guard<std::mutex> lock(g_mu);
  if (!s.stream) {
    DeviceGuard g(device);
    // blocking (not cudaStreamNonBlocking): ordered with the legacy default stream, see the header
    CLIPCU_CUDA_CHECK(cudaStreamCreate(&s.stream));
  }
  return s.stream;
}

void synchronize(int device) { CLIPCU_CUDA_CHECK(cudaStreamSynchronize(current_stream(device))); }

// ---------------------------------------------------------------- caching allocator
size_t CachingAllocator::size_class(size_t bytes) {
  constexpr size_t kSmallStep = 512, kSmallMax = size_t(1) << 20;
  if (bytes <= kSmallStep) return kSmallStep;
  if (bytes <= kSmallMax) return (bytes + kSmallStep - 1) / kSmallStep * kSmallStep;
  // 2^k < bytes <= 2^(k+1): round up to a multiple of 2^k / 4
  const int k = 63 - __builtin_clzll(uint64_t(bytes - 1));
  const size_t step = size_t(1) << (k - 2);
  return (bytes + step - 1) / step * step;
}

void* CachingAllocator::allocate(size_t bytes) {
  const size_t cls = size_class(bytes);
  std::lock_guard<std::mutex> lock(mu_);
  ++stats_.allocations;
  void* p = nullptr;
  auto it = free_.find(cls);
  if (it != free_.end() && !it->second.empty()) {
    p = it->second.back();
    it->second.pop_back();
    stats_.cached_bytes -= cls;
    ++stats_.cache_hits;
  } else {
    DeviceGuard g(device_);
    cudaError_t e = cudaMalloc(&p, cls);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      release_cached_locked();  // give the cached blocks back and try once more
      e = cudaMalloc(&p, cls);
    }
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      throw OutOfMemory("out of GPU memory on cuda:" + std::to_string(device_) + " allocating " +
                            std::to_string(bytes) + " bytes (" + cudaGetErrorString(e) + "; in use " +
                            mib(stats_.in_use_bytes) + ", peak " + mib(stats_.peak_in_use_bytes) +
                            "); try a smaller batch size",
                        bytes);
    }
    ++stats_.device_mallocs;
  }
  live_[p] = {cls, bytes};
  stats_.in_use_bytes += cls;
  stats_.requested_bytes += bytes;
  stats_.peak_in_use_bytes = std::max(stats_.peak_in_use_bytes, stats_.in_use_bytes);
  return p;
}

void CachingAllocator::free(void* p) {
  if (!p) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(p);
  if (it == live_.end()) {
    // Not ours: a bug elsewhere. This runs in destructors, so it must not throw; say so and
    // hand the pointer to the driver rather than keep it in a free list of the wrong size.
    std::fprintf(stderr, "clipcu: CachingAllocator::free of a pointer it did not allocate (%p)\n", p);
    cudaFree(p);
    (void)cudaGetLastError();
    return;
  }
  const size_t cls = it->second.first;
  stats_.in_use_bytes -= cls;
  stats_.requested_bytes -= it->second.second;
  live_.erase(it);
  free_[cls].push_back(p);  // reused by work queued after this point on the current stream
  stats_.cached_bytes += cls;
}

void CachingAllocator::release_cached_locked() {
  DeviceGuard g(device_);
  // cached blocks may still be read by queued kernels (freed on the host, not yet on the GPU)
  cudaDeviceSynchronize();
  (void)cudaGetLastError();
  for (auto& [cls, blocks] : free_) {
    for (void* p : blocks) {
      cudaFree(p);
      ++stats_.device_frees;
    }
    stats_.cached_bytes -= cls * blocks.size();
    blocks.clear();
  }
  (void)cudaGetLastError();
}

void CachingAllocator::empty_cache() {
  std::lock_guard<std::mutex> lock(mu_);
  release_cached_locked();
}

void CachingAllocator::reset_peak() {
  std::lock_guard<std::mutex> lock(mu_);
  stats_.peak_in_use_bytes = stats_.in_use_bytes;
}

AllocatorStats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

CachingAllocator::~CachingAllocator() {
  for (auto& [cls, blocks] : free_)
    for (void* p : blocks) cudaFree(p);
  (void)cudaGetLastError();
}

CachingAllocator& allocator(int device) {
  DeviceState& s = state(device);
  std::lock_guard<std::mutex> lock(g_mu);
  if (!s.allocator) s.allocator = new CachingAllocator(device);  // never deleted (file comment)
  return *s.allocator;
}

// ---------------------------------------------------------------- pinned host memory
void* pinned_alloc(size_t bytes) {
  void* p = nullptr;
  const cudaError_t e = cudaHostAlloc(&p, std::max<size_t>(bytes, 1), cudaHostAllocDefault);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    throw OutOfMemory("cudaHostAlloc of " + std::to_string(bytes) + " bytes of pinned host memory failed (" +
                          cudaGetErrorString(e) + ")",
                      bytes);
  }
  return p;
}

void pinned_free(void* p) {
  if (p) {
    cudaFreeHost(p);
    (void)cudaGetLastError();
  }
}

void HostStaging::upload(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  cudaStream_t stream = current_stream(device_);
  std::lock_guard<std::mutex> lock(mu_);
  Slot& s = slots_[next_];
  next_ ^= 1;
  DeviceGuard g(device_);
  if (s.done) CLIPCU_CUDA_CHECK(cudaEventSynchronize(s.done));  // the slot's previous copy is done
  if (s.bytes < bytes) {
    const size_t grown = std::max(bytes, s.bytes + s.bytes / 2);  // amortize a growing batch
    pinned_free(s.host);
    s.host = nullptr;
    s.bytes = 0;
    s.host = pinned_alloc(grown);
    s.bytes = grown;
  }
  if (!s.done) CLIPCU_CUDA_CHECK(cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming));
  std::memcpy(s.host, src, bytes);
  CLIPCU_CUDA_CHECK(cudaMemcpyAsync(dst, s.host, bytes, cudaMemcpyHostToDevice, stream));
  CLIPCU_CUDA_CHECK(cudaEventRecord(s.done, stream));
}

HostStaging::~HostStaging() {
  for (Slot& s : slots_) {
    if (s.done) {
      cudaEventSynchronize(s.done);
      cudaEventDestroy(s.done);
    }
    pinned_free(s.host);
  }
  (void)cudaGetLastError();
}

HostStaging& staging(int device) {
  DeviceState& s = state(device);
  std::lock_guard<std::mutex> lock(g_mu);
  if (!s.staging) s.staging = new HostStaging(device);  // never deleted (file comment)
  return *s.staging;
}

// ---------------------------------------------------------------- library handles
cublasHandle_t cublas_handle(int device) {
  cudaStream_t stream = current_stream(device);
  CachingAllocator& alloc = allocator(device);
  DeviceState& s = state(device);
  std::lock_guard<std::mutex> lock(g_mu);
  if (!s.cublas) {
    DeviceGuard g(device);
    CLIPCU_CUBLAS_CHECK(cublasCreate(&s.cublas));
    CLIPCU_CUBLAS_CHECK(cublasSetStream(s.cublas, stream));
    // our own workspace, so that cuBLAS does not cudaMalloc one inside a step
    s.cublas_workspace = alloc.allocate(kCublasLtWorkspaceBytes);
    CLIPCU_CUBLAS_CHECK(cublasSetWorkspace(s.cublas, s.cublas_workspace, kCublasLtWorkspaceBytes));
  }
  return s.cublas;
}

cublasLtHandle_t cublaslt_handle(int device) {
  DeviceState& s = state(device);
  std::lock_guard<std::mutex> lock(g_mu);
  if (!s.cublaslt) {
    DeviceGuard g(device);
    CLIPCU_CUBLAS_CHECK(cublasLtCreate(&s.cublaslt));
  }
  return s.cublaslt;
}

void* cublaslt_workspace(int device) {
  CachingAllocator& alloc = allocator(device);
  DeviceState& s = state(device);
  std::lock_guard<std::mutex> lock(g_mu);
  if (!s.cublaslt_workspace) s.cublaslt_workspace = alloc.allocate(kCublasLtWorkspaceBytes);
  return s.cublaslt_workspace;
}

#ifdef CLIPCU_WITH_CUDNN
cudnnHandle_t cudnn_handle(int device) {
  cudaStream_t stream = current_stream(device);
  DeviceState& s = state(device);
  std::lock_guard<std::mutex> lock(g_mu);
  if (!s.cudnn) {
    DeviceGuard g(device);
    CLIPCU_CUDNN_CHECK(cudnnCreate(&s.cudnn));
    CLIPCU_CUDNN_CHECK(cudnnSetStream(s.cudnn, stream));
  }
  return s.cudnn;
}
#endif

}  // namespace clipcu::cuda

#endif  // CLIPCU_WITH_CUDA
