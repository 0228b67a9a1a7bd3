#include "engine/train/checkpoint.h"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace clipcu::train {

namespace fs = std::filesystem;

uint32_t file_crc32(const std::string& path, uint64_t* size_out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot read '" + path + "': " + std::strerror(errno));
  uLong crc = crc32(0L, Z_NULL, 0);
  std::vector<char> buf(1 << 20);
  uint64_t total = 0;
  while (in) {
    in.read(buf.data(), std::streamsize(buf.size()));
    std::streamsize n = in.gcount();
    if (n <= 0) break;
    crc = crc32(crc, reinterpret_cast<const Bytef*>(buf.data()), uInt(n));
    total += uint64_t(n);
  }
  if (size_out) *size_out = total;
  return uint32_t(crc);
}

CheckpointManager::CheckpointManager(std::string dir, int keep_last) : dir_(std::move(dir)), keep_last_(keep_last) {
  CLIPCU_CHECK(keep_last_ >= 1, "checkpoints: keep_last must be at least 1, got " << keep_last_);
  std::error_code ec;
  fs::create_directories(dir_, ec);
  CLIPCU_CHECK(!ec, "cannot create checkpoint folder '" << dir_ << "': " << ec.message());
}

std::string CheckpointManager::save(int64_t step, const st::NamedTensors& tensors, const nlohmann::json& meta) {
  char stem[32];
  std::snprintf(stem, sizeof stem, "ckpt-%08lld", static_cast<long long>(step));
  std::string weights = dir_ + "/" + stem + ".safetensors";
  std::string sidecar = dir_ + "/" + stem + ".json";
  st::save(weights, tensors, {{"step", std::to_string(step)}});
  uint64_t size = 0;
  uint32_t crc = file_crc32(weights, &size);
  nlohmann::json j;
  j["format"] = "clipcu-checkpoint-1";
  j["step"] = step;
  j["tensors"] = std::string(stem) + ".safetensors";
  j["tensors_bytes"] = size;
  j["tensors_crc32"] = crc;
  j["meta"] = meta;
  write_file_atomic(sidecar, j.dump(1) + "\n");
  // prune: keep the newest keep_last_
  std::vector<std::string> all = list();
  for (size_t i = 0; i + size_t(keep_last_) < all.size(); ++i) {
    std::string w = all[i].substr(0, all[i].size() - 5) + ".safetensors";
    std::error_code ec;
    fs::remove(all[i], ec);  // the sidecar first: a half-pruned checkpoint is never listed
    fs::remove(w, ec);
  }
  return sidecar;
}

std::vector<std::string> CheckpointManager::list() const {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir_, ec)) {
    std::string name = e.path().filename().string();
    if (name.rfind("ckpt-", 0) == 0 && name.size() > 10 && name.substr(name.size() - 5) == ".json")
      out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

LoadedCheckpoint CheckpointManager::load(const std::string& path_in) {
  std::string path = path_in;
  const std::string ext = ".safetensors";
  if (path.size() > ext.size() && path.compare(path.size() - ext.size(), ext.size(), ext) == 0)
    path = path.substr(0, path.size() - ext.size()) + ".json";
  std::ifstream in(path);
  if (!in) throw Error("cannot open checkpoint '" + path + "': " + std::strerror(errno));
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, false);
  if (j.is_discarded() || !j.is_object() || j.value("format", "") != "clipcu-checkpoint-1" || !j.contains("step") ||
      !j.contains("tensors") || !j.contains("tensors_crc32") || !j.contains("tensors_bytes"))
    throw Error("checkpoint '" + path + "' is corrupt: its JSON sidecar is malformed or incomplete");
  std::string weights = (fs::path(path).parent_path() / j["tensors"].get<std::string>()).string();
  uint64_t size = 0;
  uint32_t crc;
  try {
    crc = file_crc32(weights, &size);
  } catch (const Error& e) {
    throw Error("checkpoint '" + path + "': its tensor file is missing: " + e.what());
  }
  if (size != j["tensors_bytes"].get<uint64_t>())
    throw Error("checkpoint '" + path + "' is corrupt: '" + weights + "' has " + std::to_string(size) +
                " bytes, the sidecar says " + std::to_string(j["tensors_bytes"].get<uint64_t>()) + " (truncated?)");
  if (crc != j["tensors_crc32"].get<uint32_t>())
    throw Error("checkpoint '" + path + "' is corrupt: CRC-32 of '" + weights + "' does not match the sidecar");
  LoadedCheckpoint c{path, j["step"].get<int64_t>(), j.value("meta", nlohmann::json::object()), st::File::open(weights)};
  return c;
}

std::optional<LoadedCheckpoint> CheckpointManager::load_latest(const std::string& dir) {
  if (!fs::is_directory(dir)) return std::nullopt;
  CheckpointManager m(dir, 1);
  std::vector<std::string> all = m.list();
  for (size_t i = all.size(); i-- > 0;) {
    try {
      return load(all[i]);
    } catch (const Error& e) {
      std::fprintf(stderr, "clipcu: warning: skipping unusable checkpoint: %s\n", e.what());
    }
  }
  return std::nullopt;
}

}  // namespace clipcu::train
