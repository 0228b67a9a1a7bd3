// safetensors reading and writing (https://github.com/huggingface/safetensors format):
// 8-byte little-endian header length N, N bytes of JSON header, then the raw data.
//
// Reading memory-maps the file and validates it the way the format's reference parser does:
// header length within the file and below 100 MB, valid JSON object whose entries are
// {dtype, shape, data_offsets} (plus an optional "__metadata__" object of strings), known
// dtypes, offsets that tile the data section in order with no gap, overlap or trailing bytes,
// byte sizes equal to shape x element size, no integer overflow. Every rejection throws
// clipcu::Error naming the file and the reason.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace clipcu::st {

struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  size_t begin = 0;  // byte offsets within the data section
  size_t end = 0;
};

class File {
 public:
  // Memory-maps and validates `path`.
  static File open(const std::string& path);
  // Validates a buffer already in memory (copied); `origin` names it in errors.
  static File parse(const void* data, size_t size, const std::string& origin);

  const std::string& path() const { return origin_; }
  const std::vector<Entry>& entries() const { return entries_; }  // in data-offset order
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  const Entry& entry(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // The tensor as stored: zero-copy (it keeps the mapping alive) when the data is aligned for
  // its type, else a copy. Throws naming the file when the name is absent.
  Tensor get(const std::string& name) const;
  // A copy converted to dtype (F16/BF16 weights to F32, ...).
  Tensor get(const std::string& name, DType dtype) const;

 private:
  std::string origin_;
  std::shared_ptr<void> mapping_;  // owns the bytes (mmap or heap copy)
  const unsigned char* data_ = nullptr;  // start of the data section
  size_t data_size_ = 0;
  std::vector<Entry> entries_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
  void validate(const unsigned char* bytes, size_t size);
};

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

// Writes tensors (any device; stored in their own dtype) in the given order, atomically:
// a temporary file beside `path`, fsync, rename. Names must be unique and non-empty.
void save(const std::string& path, const NamedTensors& tensors,
          const std::map<std::string, std::string>& metadata = {});
// The same bytes in memory (for tests and the fuzzer's seeds).
std::string serialize(const NamedTensors& tensors, const std::map<std::string, std::string>& metadata = {});

}  // namespace clipcu::st
