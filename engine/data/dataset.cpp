// CSV/TSV datasets (open_clip's CsvDataset, with paths relative to the file) and the dispatcher
// between CSV and WebDataset specs.
#include "engine/data/dataset.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <filesystem>
#include <sstream>

#include "engine/data/wds.h"
#include "engine/error.h"

namespace clipcu::data {

namespace fs = std::filesystem;

std::vector<CsvRecord> parse_delimited(const std::string& text, char sep, const std::string& origin) {
  std::vector<CsvRecord> out;
  size_t i = 0;
  const size_t n = text.size();
  int64_t line = 1;
  // A UTF-8 byte order mark is not part of the first column's name.
  if (n >= 3 && text.compare(0, 3, "\xEF\xBB\xBF") == 0) i = 3;
  while (i < n) {
    // One record.
    CsvRecord rec;
    rec.line = line;
    bool blank = true;  // a line with nothing on it at all
    while (true) {
      std::string field;
      if (i < n && text[i] == '"') {
        blank = false;
        const int64_t open_line = line;
        ++i;
        while (true) {
          if (i >= n) {
            throw Error("malformed CSV '" + origin + "': line " + std::to_string(open_line) + ": quoted field is never closed");
          }
          char c = text[i++];
          if (c == '"') {
            if (i < n && text[i] == '"') {
              field.push_back('"');
              ++i;
            } else {
              break;
            }
          } else {
            if (c == '\n') ++line;
            field.push_back(c);
          }
        }
        if (i < n && text[i] != sep && text[i] != '\n' && text[i] != '\r') {
          throw Error("malformed CSV '" + origin + "': line " + std::to_string(line) +
                      ": unexpected text after a closing quote (a quote inside a quoted field must be doubled)");
        }
      } else {
        while (i < n && text[i] != sep && text[i] != '\n' && text[i] != '\r') field.push_back(text[i++]);
        if (!field.empty()) blank = false;
      }
      rec.fields.push_back(std::move(field));
      if (i < n && text[i] == sep) {
        blank = false;
        ++i;
        continue;
      }
      // end of record: \n, \r\n, a lone \r, or the end of the text
      if (i < n && text[i] == '\r') ++i;
      if (i < n && text[i] == '\n') ++i;
      ++line;
      break;
    }
    if (!blank) out.push_back(std::move(rec));
  }
  return out;
}

namespace {

char separator_char(const std::string& s, const std::string& origin) {
  if (s == "\\t" || s == "\t" || s == "tab") return '\t';
  if (s.size() != 1) throw Error("CSV '" + origin + "': separator must be one character, got '" + s + "'");
  if (s[0] == '"' || s[0] == '\n' || s[0] == '\r') throw Error("CSV '" + origin + "': invalid separator '" + s + "'");
  return s[0];
}

std::string read_text(const std::string& path) {
  std::vector<uint8_t> b = read_file_bytes(path);
  return std::string(b.begin(), b.end());
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", '" : "'") + v[i] + "'";
  return s;
}

}  // namespace

CsvDataset::CsvDataset(const std::string& path, const CsvOptions& opts) : path_(path) {
  const char sep = separator_char(opts.separator, path);
  std::string text = read_text(path);
  std::vector<CsvRecord> recs = parse_delimited(text, sep, path);
  if (recs.empty()) throw Error("empty CSV '" + path + "': no header and no rows");
  const std::vector<std::string>& header = recs[0].fields;
  auto col = [&](const std::string& key) -> int {
    auto it = std::find(header.begin(), header.end(), key);
    return it == header.end() ? -1 : int(it - header.begin());
  };
  const int ci = col(opts.image_key), cc = col(opts.caption_key), cl = opts.label_key.empty() ? -1 : col(opts.label_key);
  if (ci < 0 || cc < 0) {
    std::string sep_name = sep == '\t' ? "tab" : std::string("'") + sep + "'";
    std::string hint;
    if (header.size() == 1) hint = " (only one column: is the separator right? it is " + sep_name + ")";
    throw Error("malformed CSV '" + path + "': header has no " + (ci < 0 ? "'" + opts.image_key + "'" : "") +
                (ci < 0 && cc < 0 ? " and no " : "") + (cc < 0 ? "'" + opts.caption_key + "'" : "") +
                " column; its columns are " + join(header) + hint);
  }
  if (recs.size() < 2) throw Error("empty CSV '" + path + "': a header and no rows");
  const fs::path folder = fs::path(path).parent_path();
  paths_.reserve(recs.size() - 1);
  captions_.reserve(recs.size() - 1);
  for (size_t r = 1; r < recs.size(); ++r) {
    const CsvRecord& rec = recs[r];
    if (rec.fields.size() != header.size()) {
      throw Error("malformed CSV '" + path + "': line " + std::to_string(rec.line) + " has " + std::to_string(rec.fields.size()) +
                  " fields, the header has " + std::to_string(header.size()));
    }
    const std::string& p = rec.fields[size_t(ci)];
    if (p.empty()) throw Error("malformed CSV '" + path + "': line " + std::to_string(rec.line) + " has an empty image path");
    fs::path fp(p);
    paths_.push_back(fp.is_absolute() ? fp.string() : (folder / fp).lexically_normal().string());
    captions_.push_back(rec.fields[size_t(cc)]);
    if (cl >= 0) {
      const std::string& s = rec.fields[size_t(cl)];
      int64_t v = 0;
      auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
      if (ec != std::errc() || ptr != s.data() + s.size()) {
        throw Error("malformed CSV '" + path + "': line " + std::to_string(rec.line) + ": label '" + s + "' is not an integer");
      }
      labels_.push_back(v);
    }
  }
}

Image CsvDataset::load_image(size_t i, JpegDecoder jpeg) const { return decode_image_file(paths_.at(i), jpeg); }

std::string CsvDataset::describe() const {
  return "CSV '" + path_ + "' (" + std::to_string(paths_.size()) + " samples)";
}

std::shared_ptr<Dataset> open_dataset(const std::string& spec, const CsvOptions& csv) {
  auto ends_with = [&](const char* suf) {
    std::string s(suf);
    return spec.size() >= s.size() && spec.compare(spec.size() - s.size(), s.size(), s) == 0;
  };
  bool wds = spec.find("::") != std::string::npos || spec.find('{') != std::string::npos || ends_with(".tar") ||
             ends_with(".tar.gz") || ends_with(".tgz") || ends_with(".tar.zst") || ends_with(".tar.xz");
  if (wds) return std::make_shared<WdsDataset>(spec);
  return std::make_shared<CsvDataset>(spec, csv);
}

}  // namespace clipcu::data
