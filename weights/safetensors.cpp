#include "weights/safetensors.h"

#include "engine/file_util.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>

namespace clipcu::st {

namespace {
constexpr size_t kMaxHeader = 100'000'000;  // the reference parser's limit

[[noreturn]] void reject(const std::string& origin, const std::string& why) {
  throw Error("safetensors file '" + origin + "' rejected: " + why);
}

bool mul_overflows(size_t a, size_t b, size_t* out) { return __builtin_mul_overflow(a, b, out); }
}  // namespace

File File::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error("cannot open safetensors file '" + path + "': " + std::strerror(errno));
  struct stat sb {};
  if (fstat(fd, &sb) != 0) {
    int e = errno;
    ::close(fd);
    throw Error("cannot stat safetensors file '" + path + "': " + std::strerror(e));
  }
  if (!S_ISREG(sb.st_mode)) {
    ::close(fd);
    reject(path, "not a regular file");
  }
  size_t size = size_t(sb.st_size);
  if (size < 8) {
    ::close(fd);
    reject(path, "file is " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
  }
  void* p = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  int e = errno;
  ::close(fd);
  if (p == MAP_FAILED) throw Error("cannot memory-map safetensors file '" + path + "': " + std::strerror(e));
  File f;
  f.origin_ = path;
  f.mapping_ = std::shared_ptr<void>(p, [size](void* q) { munmap(q, size); });
  f.validate(static_cast<const unsigned char*>(p), size);
  return f;
}

File File::parse(const void* data, size_t size, const std::string& origin) {
  File f;
  f.origin_ = origin;
  // 64-byte aligned copy so that zero-copy tensors are aligned when their offsets are
  void* buf = std::aligned_alloc(64, (std::max<size_t>(size, 1) + 63) / 64 * 64);
  if (!buf) throw OutOfMemory("out of memory copying safetensors buffer '" + origin + "'", size);
  if (size) std::memcpy(buf, data, size);
  f.mapping_ = std::shared_ptr<void>(buf, [](void* q) { std::free(q); });
  if (size < 8) reject(origin, "buffer is " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
  f.validate(static_cast<const unsigned char*>(buf), size);
  return f;
}

void File::validate(const unsigned char* bytes, size_t size) {
  const std::string& o = origin_;
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];  // little-endian
  if (n > kMaxHeader) reject(o, "header length " + std::to_string(n) + " exceeds the 100 MB limit");
  if (n > size - 8)
    reject(o, "header length " + std::to_string(n) + " runs past the end of the file (" + std::to_string(size) +
                  " bytes)");
  if (n < 2) reject(o, "header of " + std::to_string(n) + " bytes cannot hold a JSON object");
  if (bytes[8] != '{') reject(o, "header does not start with '{'");
  std::string_view header(reinterpret_cast<const char*>(bytes + 8), size_t(n));
  nlohmann::json j = nlohmann::json::parse(header, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) reject(o, "header is not valid JSON");
  if (!j.is_object()) reject(o, "header is not a JSON object");

  data_ = bytes + 8 + n;
  data_size_ = size - 8 - size_t(n);
  entries_.clear();
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) reject(o, "__metadata__ is not an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) reject(o, "__metadata__ value '" + m.key() + "' is not a string");
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!v.is_object()) reject(o, "entry '" + name + "' is not an object");
    for (auto k = v.begin(); k != v.end(); ++k)
      if (k.key() != "dtype" && k.key() != "shape" && k.key() != "data_offsets")
        reject(o, "entry '" + name + "' has an unknown field '" + k.key() + "'");
    if (!v.contains("dtype") || !v["dtype"].is_string()) reject(o, "entry '" + name + "' has no dtype string");
    if (!v.contains("shape") || !v["shape"].is_array()) reject(o, "entry '" + name + "' has no shape array");
    if (!v.contains("data_offsets") || !v["data_offsets"].is_array() || v["data_offsets"].size() != 2)
      reject(o, "entry '" + name + "' has no data_offsets pair");
    Entry e;
    e.name = name;
    std::string dt = v["dtype"].get<std::string>();
    if (!dtype_from_name(dt, &e.dtype)) reject(o, "entry '" + name + "' has unsupported dtype '" + dt + "'");
    size_t numel = 1;
    for (const auto& d : v["shape"]) {
      if (!d.is_number_unsigned()) reject(o, "entry '" + name + "' has a shape value that is not a non-negative integer");
      uint64_t dv = d.get<uint64_t>();
      if (dv > uint64_t(std::numeric_limits<int64_t>::max()) || mul_overflows(numel, size_t(dv), &numel))
        reject(o, "entry '" + name + "' shape overflows");
      e.shape.push_back(int64_t(dv));
    }
    size_t nbytes;
    if (mul_overflows(numel, dtype_size(e.dtype), &nbytes)) reject(o, "entry '" + name + "' byte size overflows");
    for (const auto& d : v["data_offsets"])
      if (!d.is_number_unsigned()) reject(o, "entry '" + name + "' has a data offset that is not a non-negative integer");
    e.begin = v["data_offsets"][0].get<uint64_t>();
    e.end = v["data_offsets"][1].get<uint64_t>();
    if (e.end < e.begin) reject(o, "entry '" + name + "' ends before it begins");
    if (e.end - e.begin != nbytes)
      reject(o, "entry '" + name + "' holds " + std::to_string(e.end - e.begin) + " bytes but its shape and dtype need " +
                    std::to_string(nbytes));
    entries_.push_back(std::move(e));
  }
  std::sort(entries_.begin(), entries_.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  size_t pos = 0;
  for (const Entry& e : entries_) {
    if (e.begin < pos) reject(o, "entry '" + e.name + "' overlaps the previous tensor");
    if (e.begin > pos) reject(o, "gap in the data before entry '" + e.name + "'");
    pos = e.end;
  }
  if (pos > data_size_)
    reject(o, "tensors need " + std::to_string(pos) + " data bytes but the file holds " + std::to_string(data_size_) +
                  " (truncated?)");
  if (pos < data_size_)
    reject(o, std::to_string(data_size_ - pos) + " trailing bytes after the last tensor");
  for (size_t i = 0; i < entries_.size(); ++i) index_[entries_[i].name] = i;
}

std::vector<std::string> File::names() const {
  std::vector<std::string> v;
  for (const Entry& e : entries_) v.push_back(e.name);
  return v;
}

const Entry& File::entry(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) throw Error("safetensors file '" + origin_ + "' has no tensor '" + name + "'");
  return entries_[it->second];
}

Tensor File::get(const std::string& name) const {
  const Entry& e = entry(name);
  const unsigned char* p = data_ + e.begin;
  if (reinterpret_cast<uintptr_t>(p) % dtype_size(e.dtype) == 0) {
    return Tensor::borrow(const_cast<unsigned char*>(p), e.shape, e.dtype, Device::cpu(), mapping_);
  }
  Tensor t = Tensor::empty(e.shape, e.dtype);
  std::memcpy(t.raw(), p, e.end - e.begin);
  return t;
}

Tensor File::get(const std::string& name, DType dtype) const { return get(name).to(dtype).clone(); }

std::string serialize(const NamedTensors& tensors, const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json h = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json m = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    h["__metadata__"] = m;
  }
  size_t off = 0;
  std::vector<Tensor> host;
  for (const auto& [name, t] : tensors) {
    CLIPCU_CHECK(!name.empty(), "safetensors: empty tensor name");
    CLIPCU_CHECK(!h.contains(name), "safetensors: tensor name '" << name << "' appears twice");
    CLIPCU_CHECK(t.defined(), "safetensors: tensor '" << name << "' is undefined");
    nlohmann::ordered_json e;
    e["dtype"] = std::string(dtype_name(t.dtype()));
    e["shape"] = t.shape();
    e["data_offsets"] = {off, off + t.nbytes()};
    h[name] = e;
    off += t.nbytes();
    host.push_back(t.to(Device::cpu()));
  }
  std::string header = h.dump();
  header.append((8 - header.size() % 8) % 8, ' ');
  std::string out;
  out.reserve(8 + header.size() + off);
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out.push_back(char((n >> (8 * i)) & 0xff));
  out += header;
  for (const Tensor& t : host) out.append(static_cast<const char*>(t.raw()), t.nbytes());
  return out;
}

void save(const std::string& path, const NamedTensors& tensors, const std::map<std::string, std::string>& metadata) {
  write_file_atomic(path, serialize(tensors, metadata));
}

}  // namespace clipcu::st
