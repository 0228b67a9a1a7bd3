// Training checkpoints: tensors (model parameters, buffers, optimizer moments) in a safetensors
// file plus a JSON sidecar (step, RNG states, loader position, settings, the CRC-32 and size of
// the tensor file). Both are written atomically (temporary file, fsync, rename), tensors first:
// the sidecar is the commit record, so a crash mid-save leaves the previous checkpoint intact.
// Loading checks the size and CRC, so a truncated or corrupted checkpoint is a clear error.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "engine/file_util.h"
#include "weights/safetensors.h"

namespace clipcu::train {

struct LoadedCheckpoint {
  std::string path;  // the sidecar's path
  int64_t step = 0;
  nlohmann::json meta;  // the sidecar's "meta" object, as saved
  st::File tensors;
};

class CheckpointManager {
 public:
  // dir is created when missing; keep_last >= 1 checkpoints are kept (older ones deleted after a
  // successful save).
  CheckpointManager(std::string dir, int keep_last);
  // Writes <dir>/ckpt-<step, 8 digits>.{safetensors,json}; returns the sidecar's path.
  std::string save(int64_t step, const st::NamedTensors& tensors, const nlohmann::json& meta);
  // Sidecar paths of the checkpoints present, oldest first.
  std::vector<std::string> list() const;
  const std::string& dir() const { return dir_; }

  // Loads one checkpoint (a sidecar path, or its .safetensors path). Throws naming the file and
  // the reason when it is missing, truncated, corrupt or inconsistent.
  static LoadedCheckpoint load(const std::string& path);
  // The newest checkpoint in dir that loads; a newer one that fails is reported on stderr and
  // skipped. nullopt when none exists.
  static std::optional<LoadedCheckpoint> load_latest(const std::string& dir);

 private:
  std::string dir_;
  int keep_last_;
};

using clipcu::write_file_atomic;  // engine/file_util.h
// CRC-32 (zlib's) of a whole file; throws naming the file when unreadable.
uint32_t file_crc32(const std::string& path, uint64_t* size_out = nullptr);

}  // namespace clipcu::train
