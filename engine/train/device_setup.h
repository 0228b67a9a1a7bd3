// Where a command runs its model: the --device and --precision flags shared by train, demo,
// eval, embed, search, inspect and profile, the GPU's name, and its memory counters.
//
//   --device auto     cuda:0 when this build has the CUDA backend and a GPU answers, else the CPU
//   --device cpu      the CPU engine (float32; F64 only in the tests' gradient checks)
//   --device cuda[:N] a GPU; an error naming the reason when there is none or the build has no
//                     CUDA backend
//   --precision fp32  float32 parameters and activations everywhere
//   --precision bf16  GPU only: bf16 parameters and activations (float32 accumulation and loss
//                     math in the kernels), float32 master weights kept by AdamW
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/device.h"
#include "engine/dtype.h"

namespace clipcu::models {
class CLIP;
}

namespace clipcu::train {

struct ComputeTarget {
  Device device;
  DType dtype = DType::F32;    // F32 (fp32) or BF16 (bf16)
  std::string precision = "fp32";
  std::string describe() const;  // "cuda:0 (NVIDIA H200), bf16" / "cpu, fp32"
};

// Resolves the two flags; throws clipcu::Error with a clear reason (unknown device, no GPU,
// no CUDA backend in this build, bf16 on the CPU, unknown precision).
ComputeTarget resolve_target(const std::string& device, const std::string& precision = "fp32");

// Moves a model to the target (parameters and buffers; nothing happens for the CPU in fp32) and
// renames its tensors after their state-dict paths.
void move_model(models::CLIP& model, const ComputeTarget& target);

// The GPU's name ("NVIDIA H200"); "cpu" for the CPU.
std::string device_name(Device d);

// The caching allocator's counters for a GPU (all zero for the CPU).
struct MemoryStats {
  size_t in_use_bytes = 0;
  size_t peak_bytes = 0;        // the most ever handed out at once
  uint64_t device_mallocs = 0;  // cudaMalloc calls so far (flat after warm-up)
};
MemoryStats memory_stats(Device d);
// Starts a new high-water mark at what is in use now (a benchmark's own peak).
void reset_peak_memory(Device d);
std::string format_bytes(size_t bytes);  // "1.23 GiB", "45.6 MiB"

}  // namespace clipcu::train
