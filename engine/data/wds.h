// WebDataset tar shards read through libarchive.
//
// A spec is a list of shard patterns joined by "::", each with brace expansions as WebDataset
// writes them: "shards-{000..099}.tar" (numeric ranges keep the zero padding of their ends) and
// "{train,val}.tar" (alternatives), several braces per pattern allowed.
//
// Inside a shard, members are grouped into samples by key, WebDataset's rule: the member path up
// to the first dot of its file name ("dir/000123.jpg" and "dir/000123.txt" are one sample with
// key "dir/000123"); a sample is a run of consecutive members with the same key. A sample needs
// an image (.jpg, .jpeg, .png; also .bmp, .gif) and a caption (.txt, or .json with a "caption" or
// "text" string); a .cls member gives an integer label. Samples missing either are left out,
// counted, and reported once on stderr.
//
// Opening a spec indexes every shard: captions are read into memory, images are located by their
// byte offset in the (uncompressed) tar and read later with pread, so a dataset much larger than
// memory can be shuffled sample by sample. Compressed shards (.tar.gz, ...) cannot be read at an
// offset: their images are kept in memory (fine for small data; use plain .tar for large sets).
// A missing, empty, truncated or non-tar shard is an error naming it.
#pragma once
#include <string>
#include <vector>

#include "engine/data/dataset.h"

namespace clipcu::data {

// Expands one pattern's braces: "a-{00..02}.tar" -> a-00.tar, a-01.tar, a-02.tar.
std::vector<std::string> expand_braces(const std::string& pattern);
// Splits a spec at "::" and expands each part, in order.
std::vector<std::string> expand_shard_spec(const std::string& spec);

class WdsDataset : public Dataset {
 public:
  explicit WdsDataset(const std::string& spec);
  size_t size() const override { return samples_.size(); }
  std::string name(size_t i) const override;
  std::string caption(size_t i) const override { return samples_.at(i).caption; }
  int64_t label(size_t i) const override { return samples_.at(i).label; }
  Image load_image(size_t i, JpegDecoder jpeg = JpegDecoder::Auto) const override;
  std::string describe() const override;

  const std::vector<std::string>& shards() const { return shards_; }
  // Samples left out because they had no image or no usable caption.
  size_t incomplete() const { return incomplete_; }
  // Samples whose image is held in memory (compressed shards) instead of read at an offset.
  size_t samples_in_memory() const { return blobs_.size(); }
  // The encoded image bytes of sample i (pread from the shard, or the in-memory copy).
  std::vector<uint8_t> read_image_bytes(size_t i) const;

 private:
  struct Sample {
    uint32_t shard = 0;
    std::string member;     // the image member's path in the tar
    uint64_t offset = 0;    // byte offset of its data in the shard (when not in memory)
    uint64_t size = 0;
    int64_t in_memory = -1; // index into blobs_ for compressed shards
    std::string caption;
    int64_t label = -1;
  };
  std::string spec_;
  std::vector<std::string> shards_;
  std::vector<Sample> samples_;
  std::vector<std::vector<uint8_t>> blobs_;
  size_t incomplete_ = 0;
  void index_shard(uint32_t shard);
};

}  // namespace clipcu::data
