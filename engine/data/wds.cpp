// WebDataset shards: brace expansion, indexing through libarchive, reads by offset (see wds.h).
#include "engine/data/wds.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>

#include "engine/error.h"

namespace clipcu::data {

// ---------------------------------------------------------------- brace expansion

namespace {

// The index of the '}' closing the '{' at `open` (nesting counted), or npos.
size_t matching_brace(const std::string& s, size_t open) {
  int depth = 0;
  for (size_t i = open; i < s.size(); ++i) {
    if (s[i] == '{') ++depth;
    if (s[i] == '}' && --depth == 0) return i;
  }
  return std::string::npos;
}

bool parse_int(const std::string& s, int64_t* v) {
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *v);
  return ec == std::errc() && p == s.data() + s.size();
}

// "{lo..hi}" or "{lo..hi..step}": the numbers, zero padded to the longer end when an end has a
// leading zero (as the braceexpand package that WebDataset uses). False when not a range.
bool expand_range(const std::string& body, std::vector<std::string>* out) {
  size_t d1 = body.find("..");
  if (d1 == std::string::npos) return false;
  std::string lo_s = body.substr(0, d1), rest = body.substr(d1 + 2), hi_s = rest, step_s;
  size_t d2 = rest.find("..");
  if (d2 != std::string::npos) {
    hi_s = rest.substr(0, d2);
    step_s = rest.substr(d2 + 2);
  }
  int64_t lo = 0, hi = 0, step = 1;
  if (!parse_int(lo_s, &lo) || !parse_int(hi_s, &hi)) return false;
  if (!step_s.empty() && (!parse_int(step_s, &step) || step == 0)) return false;
  step = std::abs(step);
  auto padded = [](const std::string& s) { return s.size() > 1 && (s[0] == '0' || (s[0] == '-' && s[1] == '0')); };
  size_t width = (padded(lo_s) || padded(hi_s)) ? std::max(lo_s.size(), hi_s.size()) : 0;
  if ((hi >= lo ? hi - lo : lo - hi) / step > 10'000'000) return false;
  for (int64_t v = lo; hi >= lo ? v <= hi : v >= hi; v += hi >= lo ? step : -step) {
    std::string s = std::to_string(std::abs(v));
    size_t w = width > 0 && v < 0 ? width - 1 : width;
    if (s.size() < w) s.insert(0, w - s.size(), '0');
    out->push_back(v < 0 ? "-" + s : s);
  }
  return true;
}

// Top-level comma split of a brace body.
std::vector<std::string> split_alternatives(const std::string& body) {
  std::vector<std::string> parts;
  int depth = 0;
  std::string cur;
  for (char c : body) {
    if (c == '{') ++depth;
    if (c == '}') --depth;
    if (c == ',' && depth == 0) {
      parts.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(c);
    }
  }
  parts.push_back(cur);
  return parts;
}

}  // namespace

std::vector<std::string> expand_braces(const std::string& pattern) {
  size_t open = pattern.find('{');
  if (open == std::string::npos) {
    if (pattern.find('}') != std::string::npos) throw Error("shard pattern '" + pattern + "': '}' without '{'");
    return {pattern};
  }
  size_t close = matching_brace(pattern, open);
  if (close == std::string::npos) throw Error("shard pattern '" + pattern + "': '{' is never closed");
  const std::string prefix = pattern.substr(0, open), body = pattern.substr(open + 1, close - open - 1);
  const std::vector<std::string> suffixes = expand_braces(pattern.substr(close + 1));
  std::vector<std::string> middles;
  if (!expand_range(body, &middles)) {
    std::vector<std::string> alts = split_alternatives(body);
    if (alts.size() < 2 && body.find("..") != std::string::npos) {
      throw Error("shard pattern '" + pattern + "': bad range '{" + body + "}' (expected {first..last} with integers)");
    }
    for (const auto& a : alts)
      for (auto& e : expand_braces(a)) middles.push_back(e);
  }
  std::vector<std::string> out;
  out.reserve(middles.size() * suffixes.size());
  for (const auto& m : middles)
    for (const auto& s : suffixes) out.push_back(prefix + m + s);
  return out;
}

std::vector<std::string> expand_shard_spec(const std::string& spec) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    size_t sep = spec.find("::", start);
    std::string part = spec.substr(start, sep == std::string::npos ? std::string::npos : sep - start);
    if (!part.empty())
      for (auto& s : expand_braces(part)) out.push_back(s);
    if (sep == std::string::npos) break;
    start = sep + 2;
  }
  if (out.empty()) throw Error("empty shard spec '" + spec + "'");
  return out;
}

// ---------------------------------------------------------------- indexing

namespace {

struct ArchiveCloser {
  void operator()(struct archive* a) const { archive_read_free(a); }
};

bool is_image_ext(const std::string& e) { return e == "jpg" || e == "jpeg" || e == "png" || e == "bmp" || e == "gif"; }

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

// Reads the current member's data fully (throws naming the shard and member on a short read).
std::vector<uint8_t> read_member(struct archive* a, const std::string& shard, const std::string& member, int64_t size) {
  std::vector<uint8_t> buf(size_t(std::max<int64_t>(size, 0)));
  size_t got = 0;
  while (got < buf.size()) {
    la_ssize_t r = archive_read_data(a, buf.data() + got, buf.size() - got);
    if (r < 0) {
      const char* why = archive_error_string(a);
      throw Error("malformed tar shard '" + shard + "': member '" + member + "': " + (why ? why : "read error"));
    }
    if (r == 0) break;
    got += size_t(r);
  }
  if (got != buf.size()) {
    throw Error("malformed tar shard '" + shard + "': member '" + member + "' is truncated (" + std::to_string(got) + " of " +
                std::to_string(buf.size()) + " bytes)");
  }
  return buf;
}

std::vector<uint8_t> pread_bytes(const std::string& path, uint64_t offset, uint64_t size) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error("cannot open tar shard '" + path + "': " + std::strerror(errno));
  std::vector<uint8_t> buf(static_cast<size_t>(size));
  size_t got = 0;
  int err = 0;
  while (got < buf.size()) {
    ssize_t r = ::pread(fd, buf.data() + got, buf.size() - got, off_t(offset + got));
    if (r < 0) {
      if (errno == EINTR) continue;
      err = errno;
      break;
    }
    if (r == 0) break;
    got += size_t(r);
  }
  ::close(fd);
  if (err) throw Error("cannot read tar shard '" + path + "': " + std::strerror(err));
  if (got != buf.size()) throw Error("tar shard '" + path + "' is shorter than its index (it changed after opening?)");
  return buf;
}

}  // namespace

WdsDataset::WdsDataset(const std::string& spec) : spec_(spec) {
  shards_ = expand_shard_spec(spec);
  for (uint32_t s = 0; s < shards_.size(); ++s) index_shard(s);
  if (samples_.empty()) {
    throw Error("no samples (an image and a caption under one key) in the tar shards '" + spec + "' (" +
                std::to_string(shards_.size()) + " shards, " + std::to_string(incomplete_) + " incomplete samples)");
  }
}

void WdsDataset::index_shard(uint32_t shard) {
  const std::string& path = shards_[shard];
  struct stat sb {};
  if (::stat(path.c_str(), &sb) != 0) throw Error("cannot open tar shard '" + path + "': " + std::strerror(errno));
  if (!S_ISREG(sb.st_mode)) throw Error("tar shard '" + path + "' is not a regular file");
  if (sb.st_size == 0) throw Error("empty tar shard '" + path + "' (0 bytes)");

  std::unique_ptr<struct archive, ArchiveCloser> a(archive_read_new());
  if (!a) throw Error("cannot create a libarchive reader for '" + path + "'");
  archive_read_support_format_tar(a.get());
  archive_read_support_filter_all(a.get());
  if (archive_read_open_filename(a.get(), path.c_str(), 1 << 16) != ARCHIVE_OK) {
    const char* why = archive_error_string(a.get());
    throw Error("malformed tar shard '" + path + "': " + (why ? why : "cannot open"));
  }

  // Images are read later at their offset, which only works in an uncompressed tar. The first
  // image's bytes are checked against a read at its offset, so an archive layout that libarchive
  // counts differently falls back to keeping images in memory instead of reading wrong bytes.
  bool in_memory = archive_filter_code(a.get(), 0) != ARCHIVE_FILTER_NONE;
  bool verified = false;

  struct Pending {
    std::string key;
    bool has_image = false, has_caption = false;
    Sample s;
  } cur;
  size_t members = 0, shard_incomplete = 0;
  auto flush = [&]() {
    if (cur.key.empty() && !cur.has_image && !cur.has_caption) return;
    if (cur.has_image && cur.has_caption) {
      samples_.push_back(std::move(cur.s));
    } else {
      ++shard_incomplete;
    }
    cur = Pending{};
  };

  while (true) {
    struct archive_entry* e = nullptr;
    int r = archive_read_next_header(a.get(), &e);
    if (r == ARCHIVE_EOF) break;
    if (r == ARCHIVE_RETRY) continue;
    if (r < ARCHIVE_WARN) {
      const char* why = archive_error_string(a.get());
      throw Error("malformed tar shard '" + path + "': " + (why ? why : "cannot read a header") + " (after " +
                  std::to_string(members) + " members)");
    }
    if (archive_entry_filetype(e) != AE_IFREG) continue;
    const char* pn = archive_entry_pathname(e);
    if (!pn) continue;
    ++members;
    const std::string member = pn;
    // WebDataset's key: the path up to the first dot of the file name; the rest is the extension.
    size_t slash = member.rfind('/');
    size_t dot = member.find('.', slash == std::string::npos ? 0 : slash + 1);
    if (dot == std::string::npos) continue;
    std::string key = member.substr(0, dot), ext = member.substr(dot + 1);
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return char(std::tolower(c)); });
    if (key != cur.key) {
      flush();
      cur.key = key;
      cur.s.shard = shard;
    }
    const int64_t size = archive_entry_size(e);
    if (is_image_ext(ext)) {
      if (cur.has_image) continue;  // one image per sample: the first
      cur.has_image = true;
      cur.s.member = member;
      cur.s.size = uint64_t(std::max<int64_t>(size, 0));
      if (!in_memory) {
        cur.s.offset = uint64_t(archive_filter_bytes(a.get(), 0));
        if (!verified) {
          std::vector<uint8_t> via_archive = read_member(a.get(), path, member, size);
          if (pread_bytes(path, cur.s.offset, cur.s.size) == via_archive) {
            verified = true;
          } else {
            in_memory = true;
            cur.s.in_memory = int64_t(blobs_.size());
            blobs_.push_back(std::move(via_archive));
          }
        }
      } else {
        cur.s.in_memory = int64_t(blobs_.size());
        blobs_.push_back(read_member(a.get(), path, member, size));
      }
    } else if (ext == "txt" || ext == "json") {
      if (cur.has_caption) continue;
      std::vector<uint8_t> b = read_member(a.get(), path, member, size);
      std::string text(b.begin(), b.end());
      if (ext == "txt") {
        cur.s.caption = trim(text);
        cur.has_caption = true;
      } else {
        nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
        if (!j.is_discarded() && j.is_object()) {
          for (const char* field : {"caption", "text"}) {
            if (j.contains(field) && j[field].is_string()) {
              cur.s.caption = trim(j[field].get<std::string>());
              cur.has_caption = true;
              break;
            }
          }
        }
      }
    } else if (ext == "cls") {
      std::vector<uint8_t> b = read_member(a.get(), path, member, size);
      std::string t = trim(std::string(b.begin(), b.end()));
      int64_t v = 0;
      if (parse_int(t, &v)) cur.s.label = v;
    }
  }
  flush();
  if (members == 0) throw Error("empty tar shard '" + path + "': no files in it");
  if (shard_incomplete > 0) {
    std::fprintf(stderr, "clipcu: warning: tar shard '%s': %zu samples without an image or a caption were left out\n",
                 path.c_str(), shard_incomplete);
  }
  incomplete_ += shard_incomplete;
}

std::string WdsDataset::name(size_t i) const {
  const Sample& s = samples_.at(i);
  return shards_[s.shard] + ":" + s.member;
}

std::vector<uint8_t> WdsDataset::read_image_bytes(size_t i) const {
  const Sample& s = samples_.at(i);
  if (s.in_memory >= 0) return blobs_[size_t(s.in_memory)];
  return pread_bytes(shards_[s.shard], s.offset, s.size);
}

Image WdsDataset::load_image(size_t i, JpegDecoder jpeg) const {
  std::vector<uint8_t> b = read_image_bytes(i);
  return decode_image(b.data(), b.size(), name(i), jpeg);
}

std::string WdsDataset::describe() const {
  return "WebDataset '" + spec_ + "' (" + std::to_string(shards_.size()) + " shards, " + std::to_string(samples_.size()) +
         " samples)";
}

}  // namespace clipcu::data
