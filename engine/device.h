// Devices and the memory layer under tensors. The CPU is always there; the CUDA device exists
// when the build has the CUDA backend and a driver + GPU answer (any CUDA error means "no GPU").
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace clipcu {

enum class DeviceType : uint8_t { CPU, CUDA };

struct Device {
  DeviceType type = DeviceType::CPU;
  int index = 0;
  static Device cpu() { return {DeviceType::CPU, 0}; }
  static Device cuda(int i = 0) { return {DeviceType::CUDA, i}; }
  bool is_cpu() const { return type == DeviceType::CPU; }
  bool is_cuda() const { return type == DeviceType::CUDA; }
  bool operator==(const Device& o) const { return type == o.type && index == o.index; }
  std::string str() const;  // "cpu", "cuda:0"
};

// Parses "cpu", "cuda", "cuda:N"; throws Error on anything else.
Device parse_device(const std::string& s);

// True when this build has the CUDA backend and at least one GPU answers. Cached after the first call.
bool cuda_available();
// The device a user gets by default: cuda:0 when available, else the CPU.
Device default_device();

// Raw memory on a device. CPU memory is 64-byte aligned. Throws OutOfMemory naming the size.
void* device_alloc(Device d, size_t bytes);
void device_free(Device d, void* p);
// Copies between any two devices (host <-> device, device <-> device). Synchronous.
void device_copy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes);
void device_memset_zero(Device d, void* p, size_t bytes);

}  // namespace clipcu
