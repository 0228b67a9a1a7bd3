// CLIP's byte-level BPE tokenizer (openai/CLIP simple_tokenizer.py, re-implemented).
//
// Vocabulary, from a merges file ("#version..." header line, then one merge "a b" a line):
//   ids [0, 256)          the 256 byte characters of byte_to_unicode(), in its order
//   ids [256, 512)        the same characters + "</w>" (a byte that ends a word)
//   ids [512, 512 + M)    one token per merge, the two parts joined
//   512 + M, 512 + M + 1  <|startoftext|>, <|endoftext|>
// CLIP's file holds 262,144 merges of which CLIP uses the first M = 49152 - 256 - 2 = 48,894
// (vocabulary 49,408, start 49406, end 49407); a file with fewer merges (one that bpe_trainer.h
// wrote) uses them all, so its vocabulary size and special ids follow from the file.
//
// encode(): clean_text() (unicode.h), pre_tokenize(), each piece's UTF-8 bytes as byte tokens
// with "</w>" on the last, then the merges applied in rank order (lowest rank first, every
// non-overlapping occurrence left to right) until none applies.
//
// Thread safety: every const member may be called from many threads at once. The word cache
// (piece -> ids) is per instance, guarded by a reader/writer lock, and bounded: once it holds
// `cache_capacity` words it stops growing (frequent words are met early, so they are in it).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace clipcu::text {

// The 256 bytes as printable characters (UTF-8), GPT-2's mapping: printable Latin-1 bytes map to
// themselves, the others to U+0100 and up.
const std::vector<std::string>& byte_to_unicode();

// A merges file's lines as pairs. `path` ends in .gz (gzip, via zlib) or is plain text. At most
// `max_merges` merges are read (-1: all). Throws clipcu::Error naming the file when it is missing,
// unreadable, not gzip despite the name, truncated, or has no "#version" header or a line that
// is not two tokens.
std::vector<std::pair<std::string, std::string>> read_merges(const std::string& path, int64_t max_merges = -1);
// Writes the same format ("#version: 0.2" then "a b" lines); gzip when `path` ends in .gz.
void write_merges(const std::string& path, const std::vector<std::pair<std::string, std::string>>& merges);

// The vocabulary a command should use: `flag` (a --vocab option) when not empty, else the
// CLIPCU_VOCAB environment variable; throws clipcu::Error saying so when neither names a file.
std::string resolve_vocab_path(const std::string& flag);

struct TokenizerOptions {
  // CLIP's rule: only the first 49152 - 256 - 2 merges of a file are used. -1: all of them.
  int64_t max_merges = 49152 - 256 - 2;
  // Words kept in the BPE cache (0 disables it).
  size_t cache_capacity = size_t(1) << 20;
};

class Tokenizer {
 public:
  // Loads a merges file (see read_merges for the errors).
  explicit Tokenizer(const std::string& merges_path, TokenizerOptions options = {});
  // From merges already in memory (a trainer's output); `name` is used in error messages.
  Tokenizer(const std::vector<std::pair<std::string, std::string>>& merges, TokenizerOptions options,
            const std::string& name = "<merges in memory>");
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  int64_t vocab_size() const;
  int64_t num_merges() const;
  int64_t start_id() const;  // <|startoftext|>
  int64_t end_id() const;    // <|endoftext|>
  const std::string& name() const;  // the merges file it came from

  // Ids of the cleaned text, no start/end markers (simple_tokenizer.encode).
  std::vector<int64_t> encode(std::string_view text) const;
  // start + ids + end in exactly `context_length` slots, zero padded; a longer text is cut and its
  // last slot holds the end id (clip.tokenize(truncate=True)). Sets *truncated when given.
  std::vector<int64_t> tokenize(std::string_view text, int64_t context_length = 77, bool* truncated = nullptr) const;
  // Many texts at once: I64 [N, context_length] on the CPU (OpenMP threads from 4096 texts on).
  Tensor tokenize_batch(const std::vector<std::string>& texts, int64_t context_length = 77) const;
  // The tokens' bytes joined, read as UTF-8 (invalid bytes -> U+FFFD), "</w>" -> " ", as the
  // reference decode does (so padding zeros decode to "!"; drop them first). Throws on an id
  // outside the vocabulary.
  std::string decode(const std::vector<int64_t>& ids) const;

  // The token string of an id (byte characters, "</w>", or a special); the id of a token string
  // (the last one when a string occurs twice, as the reference's dict does), -1 when absent.
  const std::string& token(int64_t id) const;
  int64_t id_of(std::string_view token) const;
  // The BPE of one pre-tokenized piece (raw UTF-8 bytes, not yet byte-mapped).
  std::vector<int64_t> bpe(std::string_view piece) const;

  size_t cache_size() const;
  void clear_cache() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace clipcu::text
