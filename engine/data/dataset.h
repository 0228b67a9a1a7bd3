// Datasets of (image, caption) pairs: the interface the loader reads, and the CSV/TSV reader with
// open_clip's options (--csv-separator, --csv-img-key, --csv-caption-key).
//
// A dataset is opened once (the index: paths and captions, or tar member offsets, is built and
// validated then: an empty or malformed file is an error naming it) and then read by index from
// several threads at once. Reading one image may fail (missing, unreadable or corrupt file): that
// is a clipcu::Error for that sample only; the loader skips and counts it.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/data/image.h"

namespace clipcu::data {

class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual size_t size() const = 0;
  // Names sample i in messages: the image path, or "shard.tar:key.jpg".
  virtual std::string name(size_t i) const = 0;
  virtual std::string caption(size_t i) const = 0;
  // A class index when the data has one (a `label` column, a `.cls` member, the shapes class), else -1.
  virtual int64_t label(size_t) const { return -1; }
  // Reads and decodes sample i's image. Throws clipcu::Error naming the sample. Thread-safe.
  virtual Image load_image(size_t i, JpegDecoder jpeg = JpegDecoder::Auto) const = 0;
  // "CSV 'data/train.csv' (1000 samples)"
  virtual std::string describe() const = 0;
};

// open_clip's CSV options. The separator is one character; "\t" (the default, as open_clip's) or
// the two characters backslash-t both mean a tab.
struct CsvOptions {
  std::string separator = "\t";
  std::string image_key = "filepath";
  std::string caption_key = "title";
  std::string label_key = "label";  // optional column: used when the header has it
};

// Parses delimited text (RFC 4180 quoting: a field that starts with '"' runs to the closing quote,
// "" inside it is one quote, separators and newlines inside it are data; \n and \r\n end records;
// blank lines are skipped). Returns the records with the line each one starts on (1-based).
// Throws naming `origin` and the line for an unterminated quote or text after a closing quote.
struct CsvRecord {
  int64_t line = 0;
  std::vector<std::string> fields;
};
std::vector<CsvRecord> parse_delimited(const std::string& text, char sep, const std::string& origin);

class CsvDataset : public Dataset {
 public:
  // Reads and validates the whole file: a header with the image and caption keys, every row with
  // as many fields as the header, at least one row. Image paths are relative to the file's folder.
  CsvDataset(const std::string& path, const CsvOptions& opts = {});
  size_t size() const override { return paths_.size(); }
  std::string name(size_t i) const override { return paths_.at(i); }
  std::string caption(size_t i) const override { return captions_.at(i); }
  int64_t label(size_t i) const override { return labels_.empty() ? -1 : labels_.at(i); }
  Image load_image(size_t i, JpegDecoder jpeg = JpegDecoder::Auto) const override;
  std::string describe() const override;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::vector<std::string> paths_, captions_;
  std::vector<int64_t> labels_;
};

// A CSV/TSV file, or WebDataset tar shards when the spec ends in ".tar"/".tar.gz"/..., holds a
// brace pattern or a "::" list (see wds.h).
std::shared_ptr<Dataset> open_dataset(const std::string& spec, const CsvOptions& csv = {});

}  // namespace clipcu::data
