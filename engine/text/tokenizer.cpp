// CLIP's BPE tokenizer: merges-file I/O, the vocabulary, BPE with a per-instance word cache.
//
// Symbols are vocabulary ids throughout: a word starts as the ids of its bytes (the last one's
// "</w>" form) and each merge replaces an adjacent id pair by the id of the joined string. The
// reference works on strings; ids are equivalent because the string -> id map is a bijection on
// the strings that occur (a string that several merges produce gets the id of its last
// occurrence, as the reference's dict does).
#include "engine/text/tokenizer.h"

#include <zlib.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <mutex>
#include <shared_mutex>
#include <unordered_map>

#include "engine/error.h"
#include "engine/text/unicode.h"

namespace clipcu::text {

namespace {

constexpr const char* kStart = "<|startoftext|>";
constexpr const char* kEnd = "<|endoftext|>";
constexpr const char* kWordEnd = "</w>";

// The byte order of the first 256 ids: printable bytes ('!'..'~', U+00A1..U+00AC, U+00AE..U+00FF)
// first, then the others, which map to U+0100, U+0101, ...
struct ByteTables {
  uint8_t id_to_byte[256];
  int32_t byte_to_id[256];
  std::vector<std::string> byte_to_char;        // [256] UTF-8 of each byte's character
  std::unordered_map<char32_t, uint8_t> decode;  // character -> byte
  ByteTables() : byte_to_char(256) {
    auto printable = [](int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); };
    int k = 0, extra = 0;
    char32_t chars[256];
    for (int b = 0; b < 256; ++b)
      if (printable(b)) {
        id_to_byte[k++] = uint8_t(b);
        chars[b] = char32_t(b);
      }
    for (int b = 0; b < 256; ++b)
      if (!printable(b)) {
        id_to_byte[k++] = uint8_t(b);
        chars[b] = char32_t(256 + extra++);
      }
    for (int i = 0; i < 256; ++i) byte_to_id[id_to_byte[i]] = i;
    for (int b = 0; b < 256; ++b) {
      utf8_append(byte_to_char[b], chars[b]);
      decode[chars[b]] = uint8_t(b);
    }
  }
};

const ByteTables& bytes_tables() {
  static const ByteTables t;
  return t;
}

// Lets the cache and the encoder be searched with a string_view, without building a string.
struct TransparentHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
template <class V>
using StringMap = std::unordered_map<std::string, V, TransparentHash, std::equal_to<>>;

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The whole file as bytes; gzip (zlib) when the name ends in .gz.
std::string read_file_bytes(const std::string& path) {
  if (!ends_with(path, ".gz")) {
    std::ifstream f(path, std::ios::binary);
    CLIPCU_CHECK(f.good(), "cannot open merges file '" << path << "'");
    std::string data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    CLIPCU_CHECK(!f.bad(), "cannot read merges file '" << path << "'");
    return data;
  }
  {
    // gzread reads a non-gzip file as plain bytes; a .gz name promises gzip, so check the magic.
    std::ifstream f(path, std::ios::binary);
    CLIPCU_CHECK(f.good(), "cannot open merges file '" << path << "'");
    unsigned char magic[2] = {0, 0};
    f.read(reinterpret_cast<char*>(magic), 2);
    CLIPCU_CHECK(f.gcount() == 2 && magic[0] == 0x1F && magic[1] == 0x8B,
                 "merges file '" << path << "' is not gzip data (its name ends in .gz)");
  }
  gzFile gz = gzopen(path.c_str(), "rb");
  CLIPCU_CHECK(gz != nullptr, "cannot open merges file '" << path << "'");
  std::string data;
  char buf[1 << 16];
  for (;;) {
    const int n = gzread(gz, buf, sizeof buf);
    if (n < 0) {
      int err = 0;
      std::string msg = gzerror(gz, &err);
      gzclose(gz);
      CLIPCU_FAIL("merges file '" << path << "' is corrupt gzip data: " << msg);
    }
    if (n == 0) break;
    data.append(buf, size_t(n));
  }
  int err = 0;
  std::string msg = gzerror(gz, &err);
  gzclose(gz);
  // A truncated stream ends without an error from gzread but leaves Z_BUF_ERROR behind.
  CLIPCU_CHECK(err == Z_OK || err == Z_STREAM_END, "merges file '" << path << "' is corrupt gzip data: " << msg);
  return data;
}

}  // namespace

const std::vector<std::string>& byte_to_unicode() { return bytes_tables().byte_to_char; }

std::vector<std::pair<std::string, std::string>> read_merges(const std::string& path, int64_t max_merges) {
  const std::string data = read_file_bytes(path);
  std::vector<std::pair<std::string, std::string>> merges;
  size_t pos = 0;
  int64_t line_no = 0;
  bool saw_blank = false;
  int64_t blank_line = 0;
  while (pos <= data.size()) {
    size_t nl = data.find('\n', pos);
    if (nl == std::string::npos) nl = data.size();
    std::string_view line(data.data() + pos, nl - pos);
    pos = nl + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line_no == 1) {
      // CLIP's file starts with '"bpe_simple_vocab_16e6.txt#version: 0.2'; others with "#version".
      CLIPCU_CHECK(line.find("#version") != std::string_view::npos,
                   "merges file '" << path << "' has no '#version' header line (is it a BPE merges file?)");
      continue;
    }
    if (max_merges >= 0 && int64_t(merges.size()) >= max_merges) break;
    // Split on spaces/tabs: exactly two tokens.
    std::vector<std::string_view> fields;
    size_t i = 0;
    while (i < line.size()) {
      while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
      const size_t b = i;
      while (i < line.size() && line[i] != ' ' && line[i] != '\t') ++i;
      if (i > b) fields.push_back(line.substr(b, i - b));
    }
    if (fields.empty()) {  // blank lines are allowed only at the end of the file
      if (!saw_blank) blank_line = line_no;
      saw_blank = true;
      continue;
    }
    CLIPCU_CHECK(!saw_blank, "merges file '" << path << "': blank line " << blank_line << " before more merges");
    CLIPCU_CHECK(fields.size() == 2, "merges file '" << path << "': line " << line_no
                                                     << " is not a merge of two tokens: '" << line << "'");
    merges.emplace_back(std::string(fields[0]), std::string(fields[1]));
  }
  return merges;
}

void write_merges(const std::string& path, const std::vector<std::pair<std::string, std::string>>& merges) {
  std::string text = "#version: 0.2\n";
  for (const auto& [a, b] : merges) {
    CLIPCU_CHECK(!a.empty() && !b.empty() && a.find_first_of(" \t\n\r") == std::string::npos &&
                     b.find_first_of(" \t\n\r") == std::string::npos,
                 "write_merges: merge '" << a << "' '" << b << "' is not two non-empty tokens without spaces");
    text += a;
    text += ' ';
    text += b;
    text += '\n';
  }
  if (ends_with(path, ".gz")) {
    gzFile gz = gzopen(path.c_str(), "wb9");
    CLIPCU_CHECK(gz != nullptr, "cannot create merges file '" << path << "'");
    size_t done = 0;
    while (done < text.size()) {
      const unsigned chunk = unsigned(std::min<size_t>(text.size() - done, size_t(1) << 30));
      const int n = gzwrite(gz, text.data() + done, chunk);
      if (n <= 0) {
        int err = 0;
        std::string msg = gzerror(gz, &err);
        gzclose(gz);
        CLIPCU_FAIL("cannot write merges file '" << path << "': " << msg);
      }
      done += size_t(n);
    }
    CLIPCU_CHECK(gzclose(gz) == Z_OK, "cannot finish merges file '" << path << "'");
    return;
  }
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  CLIPCU_CHECK(f.good(), "cannot create merges file '" << path << "'");
  f.write(text.data(), std::streamsize(text.size()));
  f.close();
  CLIPCU_CHECK(f.good(), "cannot write merges file '" << path << "'");
}

std::string resolve_vocab_path(const std::string& flag) {
  if (!flag.empty()) return flag;
  const char* env = std::getenv("CLIPCU_VOCAB");
  CLIPCU_CHECK(env && *env, "no BPE vocabulary: neither --vocab nor the CLIPCU_VOCAB environment variable names a "
                            "merges file (CLIP's is bpe_simple_vocab_16e6.txt.gz; `clipcu bpe-train` makes one)");
  return env;
}

// ---------------------------------------------------------------- Tokenizer

struct Tokenizer::Impl {
  std::string name;
  std::vector<std::string> vocab;        // [V] token strings (byte characters)
  std::vector<std::string> token_bytes;  // [V] the raw bytes each token stands for ("</w>" literal)
  StringMap<int32_t> encoder;
  struct Merge {
    int32_t rank;
    int32_t merged;  // id of the joined string
  };
  std::unordered_map<uint64_t, Merge> ranks;  // (left id << 32 | right id) -> merge
  int32_t byte_id[256];
  int32_t byte_end_id[256];  // the "</w>" forms
  int32_t start = 0, end = 0;
  int64_t n_merges = 0;

  size_t cache_capacity = 0;
  mutable std::shared_mutex cache_mu;
  mutable StringMap<std::vector<int32_t>> cache;

  static uint64_t key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

  void build(const std::vector<std::pair<std::string, std::string>>& merges) {
    const ByteTables& bt = bytes_tables();
    n_merges = int64_t(merges.size());
    vocab.reserve(512 + merges.size() + 2);
    for (int i = 0; i < 256; ++i) vocab.push_back(bt.byte_to_char[bt.id_to_byte[i]]);
    for (int i = 0; i < 256; ++i) vocab.push_back(bt.byte_to_char[bt.id_to_byte[i]] + kWordEnd);
    // Each part of a merge must be a token that exists before it.
    std::unordered_map<std::string, int32_t> seen;
    for (int32_t i = 0; i < 512; ++i) seen.emplace(vocab[size_t(i)], i);
    for (size_t m = 0; m < merges.size(); ++m) {
      const auto& [a, b] = merges[m];
      for (const std::string* part : {&a, &b})
        CLIPCU_CHECK(seen.count(*part), "merges '" << name << "': merge " << m + 1 << " ('" << a << " " << b << "'): '" << *part
                                             << "' is not a token defined before it");
      vocab.push_back(a + b);
      seen.emplace(vocab.back(), int32_t(vocab.size() - 1));
    }
    start = int32_t(vocab.size());
    vocab.push_back(kStart);
    end = int32_t(vocab.size());
    vocab.push_back(kEnd);
    CLIPCU_CHECK(vocab.size() < size_t(INT32_MAX), "merges '" << name << "': too many merges");

    for (int32_t i = 0; i < int32_t(vocab.size()); ++i) encoder.insert_or_assign(vocab[size_t(i)], i);  // last wins
    for (size_t m = 0; m < merges.size(); ++m) {
      const auto& [a, b] = merges[m];
      ranks.insert_or_assign(key(encoder.at(a), encoder.at(b)), Merge{int32_t(m), encoder.at(a + b)});  // last wins
    }
    for (int b = 0; b < 256; ++b) {
      byte_id[b] = bt.byte_to_id[b];
      byte_end_id[b] = bt.byte_to_id[b] + 256;
    }
    // The bytes behind each token, for decode(). Every character must be a byte character.
    token_bytes.resize(vocab.size());
    for (size_t i = 0; i < vocab.size(); ++i) {
      for (char32_t c : utf8_decode(vocab[i])) {
        auto it = bt.decode.find(c);
        CLIPCU_CHECK(it != bt.decode.end(),
                     "merges '" << name << "': token '" << vocab[i] << "' has a character that is not one of the 256 byte characters");
        token_bytes[i].push_back(char(it->second));
      }
    }
  }

  // BPE of one piece (its raw bytes), uncached.
  void bpe_uncached(std::string_view piece, std::vector<int32_t>& word) const {
    word.clear();
    for (size_t i = 0; i < piece.size(); ++i) {
      const auto b = static_cast<unsigned char>(piece[i]);
      word.push_back(i + 1 == piece.size() ? byte_end_id[b] : byte_id[b]);
    }
    while (word.size() > 1) {
      int32_t best_rank = INT32_MAX, left = -1, right = -1, merged = -1;
      for (size_t k = 0; k + 1 < word.size(); ++k) {
        auto it = ranks.find(key(word[k], word[k + 1]));
        if (it != ranks.end() && it->second.rank < best_rank) {
          best_rank = it->second.rank;
          left = word[k];
          right = word[k + 1];
          merged = it->second.merged;
        }
      }
      if (merged < 0) break;
      // Every non-overlapping occurrence, left to right.
      size_t w = 0;
      for (size_t k = 0; k < word.size();) {
        if (word[k] == left && k + 1 < word.size() && word[k + 1] == right) {
          word[w++] = merged;
          k += 2;
        } else {
          word[w++] = word[k++];
        }
      }
      word.resize(w);
    }
  }

  void append_bpe(std::string_view piece, std::vector<int64_t>& out) const {
    if (piece == kStart) {
      out.push_back(start);
      return;
    }
    if (piece == kEnd) {
      out.push_back(end);
      return;
    }
    if (cache_capacity > 0) {
      std::shared_lock lock(cache_mu);
      auto it = cache.find(piece);
      if (it != cache.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<int32_t> word;
    bpe_uncached(piece, word);
    out.insert(out.end(), word.begin(), word.end());
    if (cache_capacity > 0) {
      std::unique_lock lock(cache_mu);
      if (cache.size() < cache_capacity) cache.emplace(std::string(piece), std::move(word));
    }
  }
};

Tokenizer::Tokenizer(const std::string& merges_path, TokenizerOptions options)
    : Tokenizer(read_merges(merges_path, options.max_merges), options, merges_path) {}

Tokenizer::Tokenizer(const std::vector<std::pair<std::string, std::string>>& merges, TokenizerOptions options,
                     const std::string& name)
    : impl_(std::make_unique<Impl>()) {
  impl_->name = name;
  impl_->cache_capacity = options.cache_capacity;
  if (options.max_merges >= 0 && int64_t(merges.size()) > options.max_merges) {
    impl_->build({merges.begin(), merges.begin() + options.max_merges});
  } else {
    impl_->build(merges);
  }
}

Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

int64_t Tokenizer::vocab_size() const { return int64_t(impl_->vocab.size()); }
int64_t Tokenizer::num_merges() const { return impl_->n_merges; }
int64_t Tokenizer::start_id() const { return impl_->start; }
int64_t Tokenizer::end_id() const { return impl_->end; }
const std::string& Tokenizer::name() const { return impl_->name; }

std::vector<int64_t> Tokenizer::encode(std::string_view text) const {
  const std::string cleaned = clean_text(text);
  std::vector<int64_t> ids;
  for (std::string_view piece : pre_tokenize(cleaned)) impl_->append_bpe(piece, ids);
  return ids;
}

std::vector<int64_t> Tokenizer::tokenize(std::string_view text, int64_t context_length, bool* truncated) const {
  CLIPCU_CHECK(context_length >= 2, "tokenize: context_length " << context_length
                                                                << " leaves no room for the start and end tokens");
  std::vector<int64_t> ids = encode(text);
  std::vector<int64_t> out(size_t(context_length), 0);
  out[0] = impl_->start;
  const size_t n = std::min(ids.size(), size_t(context_length - 1));
  std::copy(ids.begin(), ids.begin() + std::ptrdiff_t(n), out.begin() + 1);
  const bool cut = ids.size() + 2 > size_t(context_length);
  if (cut) {
    out[size_t(context_length - 1)] = impl_->end;  // clip.tokenize(truncate=True) keeps the end token
  } else {
    out[ids.size() + 1] = impl_->end;
  }
  if (truncated) *truncated = cut;
  return out;
}

Tensor Tokenizer::tokenize_batch(const std::vector<std::string>& texts, int64_t context_length) const {
  CLIPCU_CHECK(context_length >= 2, "tokenize_batch: context_length " << context_length
                                                                      << " leaves no room for the start and end tokens");
  const int64_t N = int64_t(texts.size());
  Tensor out = Tensor::zeros({N, context_length}, DType::I64);
  int64_t* dst = out.data<int64_t>();  // [N, context_length]
  std::exception_ptr failure;
  std::mutex failure_mu;
  // Threads only pay off for thousands of texts (zero-shot prompt sets, whole caption files): a
  // training batch takes well under a millisecond, and the data loader already runs in threads.
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 64) if (N >= 4096)
#endif
  for (int64_t n = 0; n < N; ++n) {
    try {
      const std::vector<int64_t> row = tokenize(texts[size_t(n)], context_length);
      std::copy(row.begin(), row.end(), dst + n * context_length);
    } catch (...) {
      std::lock_guard<std::mutex> lock(failure_mu);
      if (!failure) failure = std::current_exception();
    }
  }
  if (failure) std::rethrow_exception(failure);
  return out;
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string bytes;
  for (int64_t id : ids) {
    CLIPCU_CHECK(id >= 0 && id < vocab_size(), "decode: id " << id << " is outside the vocabulary [0, "
                                                             << vocab_size() << ") of " << impl_->name);
    bytes += impl_->token_bytes[size_t(id)];
  }
  const std::string text = utf8_sanitize(bytes);
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    if (text.compare(i, 4, kWordEnd) == 0) {
      out.push_back(' ');
      i += 4;
    } else {
      out.push_back(text[i++]);
    }
  }
  return out;
}

const std::string& Tokenizer::token(int64_t id) const {
  CLIPCU_CHECK(id >= 0 && id < vocab_size(), "token: id " << id << " is outside the vocabulary [0, " << vocab_size()
                                                          << ") of " << impl_->name);
  return impl_->vocab[size_t(id)];
}

int64_t Tokenizer::id_of(std::string_view token) const {
  auto it = impl_->encoder.find(token);
  return it == impl_->encoder.end() ? -1 : it->second;
}

std::vector<int64_t> Tokenizer::bpe(std::string_view piece) const {
  std::vector<int64_t> out;
  if (!piece.empty()) impl_->append_bpe(piece, out);
  return out;
}

size_t Tokenizer::cache_size() const {
  std::shared_lock lock(impl_->cache_mu);
  return impl_->cache.size();
}

void Tokenizer::clear_cache() const {
  std::unique_lock lock(impl_->cache_mu);
  impl_->cache.clear();
}

}  // namespace clipcu::text
