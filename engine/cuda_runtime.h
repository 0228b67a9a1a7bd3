// The CUDA runtime layer of the engine: the current stream, a caching device allocator, pinned
// host staging for input batches, and lazily created cuBLAS / cuBLASLt / cuDNN handles.
// Everything here exists only in builds with the CUDA backend (CLIPCU_WITH_CUDA); callers guard
// their use with the same macro. Errors throw clipcu::Error (file:line and the failing call).
//
// Stream model: one "current" stream per device, created with cudaStreamCreate, so it is a
// *blocking* stream: the legacy default stream (used by engine/device.cpp's cudaMemcpy and
// cudaMemset) waits for it and it waits for them. Every kernel of a step is enqueued on the
// current stream, which is what makes the caching allocator safe: a block freed on the host
// while kernels that use it are still queued is only handed out again to work that is queued
// after them on the same stream. Code that uses another stream must synchronize it with the
// current one before freeing memory it touched.
#pragma once
#ifdef CLIPCU_WITH_CUDA

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <unordered_map>
#include <vector>

#ifdef CLIPCU_WITH_CUDNN
#include <cudnn.h>
#endif

namespace clipcu::cuda {

// ---------------------------------------------------------------- streams
// The stream every kernel of the engine is enqueued on, for `device` (created on first use).
cudaStream_t current_stream(int device = 0);
// Waits for everything queued on the current stream of `device`.
void synchronize(int device = 0);

// ---------------------------------------------------------------- caching allocator
struct AllocatorStats {
  size_t in_use_bytes = 0;      // handed out (rounded sizes)
  size_t cached_bytes = 0;      // free blocks kept for reuse
  size_t peak_in_use_bytes = 0;
  size_t requested_bytes = 0;   // what callers asked for (unrounded), currently in use
  uint64_t allocations = 0;     // allocate() calls
  uint64_t cache_hits = 0;      // served from a free list
  uint64_t device_mallocs = 0;  // cudaMalloc calls
  uint64_t device_frees = 0;    // cudaFree calls (empty_cache or out-of-memory retries)
};

// Device memory in size classes, with a free list per class: after the first step of a training
// loop every request is served from a free list, so no cudaMalloc / cudaFree runs inside a step.
// Classes: multiples of 512 bytes up to 1 MiB, then 4 classes per power of two (at most 25%
// waste), so the number of classes stays small and a slightly different size reuses a block.
// On cudaMalloc failure the cache is released and the allocation tried once more; a second
// failure throws OutOfMemory naming the size and the allocator's state. Thread-safe.
class CachingAllocator {
 public:
  explicit CachingAllocator(int device) : device_(device) {}
  ~CachingAllocator();  // frees the cached blocks (blocks still in use are the caller's leak)
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  void* allocate(size_t bytes);
  void free(void* p);          // p must come from allocate(); nullptr is ignored
  void empty_cache();          // cudaFree of every cached block (after synchronizing the device)
  AllocatorStats stats() const;
  void reset_peak();           // peak_in_use_bytes = in_use_bytes (to measure one phase's peak)
  static size_t size_class(size_t bytes);  // the rounded size a request gets

 private:
  int device_;
  mutable std::mutex mu_;
  std::unordered_map<size_t, std::vector<void*>> free_;  // class size -> free blocks
  std::unordered_map<void*, std::pair<size_t, size_t>> live_;  // block -> (class size, requested)
  AllocatorStats stats_;
  void release_cached_locked();
};

// The allocator of `device` (created on first use; lives until process exit).
CachingAllocator& allocator(int device = 0);

// ---------------------------------------------------------------- pinned host memory
// Page-locked host memory (cudaHostAlloc): what asynchronous host -> device copies need.
void* pinned_alloc(size_t bytes);
void pinned_free(void* p);

// Uploads of input batches through pinned staging buffers. upload() copies the host data into
// the next of two pinned buffers and enqueues an asynchronous copy to dst on the current stream,
// so the host can prepare batch n + 1 while batch n is still being copied. Before a staging
// buffer is refilled, the host waits (event) for its previous copy. Thread-safe.
class HostStaging {
 public:
  explicit HostStaging(int device) : device_(device) {}
  ~HostStaging();
  HostStaging(const HostStaging&) = delete;
  HostStaging& operator=(const HostStaging&) = delete;
  // dst: device memory of `bytes` bytes; src: ordinary (pageable) host memory.
  void upload(void* dst, const void* src, size_t bytes);

 private:
  struct Slot {
    void* host = nullptr;
    size_t bytes = 0;
    cudaEvent_t done = nullptr;  // recorded after the slot's last copy
  };
  int device_;
  std::mutex mu_;
  Slot slots_[2];
  int next_ = 0;
};

HostStaging& staging(int device = 0);

// ---------------------------------------------------------------- library handles
// Created on first use for `device`, bound to its current stream.
cublasHandle_t cublas_handle(int device = 0);
cublasLtHandle_t cublaslt_handle(int device = 0);
// A device workspace for cuBLASLt (kCublasLtWorkspaceBytes, from the caching allocator).
inline constexpr size_t kCublasLtWorkspaceBytes = size_t(32) << 20;
void* cublaslt_workspace(int device = 0);
#ifdef CLIPCU_WITH_CUDNN
cudnnHandle_t cudnn_handle(int device = 0);
#endif

}  // namespace clipcu::cuda

#endif  // CLIPCU_WITH_CUDA
