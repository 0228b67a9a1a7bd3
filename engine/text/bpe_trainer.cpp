// BPE training: word counting with the tokenizer's cleaning, then greedy merges with incremental
// pair counts (see bpe_trainer.h).
#include "engine/text/bpe_trainer.h"

#include <algorithm>
#include <fstream>
#include <queue>
#include <string_view>
#include <unordered_map>

#include "engine/error.h"
#include "engine/text/tokenizer.h"
#include "engine/text/unicode.h"

namespace clipcu::text {

namespace {

constexpr int64_t kMaxVocab = 49408;  // what a Tokenizer loads with its default options
constexpr int64_t kBaseVocab = 512 + 2;

// Counts pre-tokenized pieces (raw UTF-8 bytes) over captions.
struct WordCounter {
  std::unordered_map<std::string, int64_t> counts;
  int64_t captions = 0, words = 0;
  void add(std::string_view caption) {
    ++captions;
    const std::string cleaned = clean_text(caption);
    for (std::string_view piece : pre_tokenize(cleaned)) {
      if (piece == "<|startoftext|>" || piece == "<|endoftext|>") continue;  // specials, not words
      ++counts[std::string(piece)];
      ++words;
    }
  }
};

void check_options(const BpeTrainOptions& options) {
  CLIPCU_CHECK(options.vocab_size >= kBaseVocab && options.vocab_size <= kMaxVocab,
               "bpe-train: vocab size " << options.vocab_size << " must be in [" << kBaseVocab << ", " << kMaxVocab
                                        << "] (512 byte tokens + merges + 2 specials; a tokenizer reads at most "
                                        << kMaxVocab - kBaseVocab << " merges, as CLIP does)");
  CLIPCU_CHECK(options.min_frequency >= 1, "bpe-train: min frequency " << options.min_frequency << " must be >= 1");
}

uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
int32_t pair_left(uint64_t p) { return int32_t(p >> 32); }
int32_t pair_right(uint64_t p) { return int32_t(p & 0xFFFFFFFFu); }

BpeTrainResult train_from_counts(WordCounter& counter, const BpeTrainOptions& options) {
  check_options(options);
  if (options.counted) options.counted(counter.captions, counter.words, int64_t(counter.counts.size()));
  const int64_t target = options.vocab_size - kBaseVocab;

  // Symbols: the 256 byte characters and their "</w>" forms, then each merge's joined string.
  std::vector<std::string> sym_str;
  std::unordered_map<std::string, int32_t> sym_id;
  auto symbol = [&](const std::string& s) {
    auto [it, inserted] = sym_id.emplace(s, int32_t(sym_str.size()));
    if (inserted) sym_str.push_back(s);
    return it->second;
  };
  const std::vector<std::string>& b2u = byte_to_unicode();
  int32_t byte_sym[256], byte_end_sym[256];
  for (int b = 0; b < 256; ++b) byte_sym[b] = symbol(b2u[size_t(b)]);
  for (int b = 0; b < 256; ++b) byte_end_sym[b] = symbol(b2u[size_t(b)] + "</w>");

  // Words in a fixed order (by piece), each a sequence of symbols with its frequency.
  std::vector<std::pair<std::string, int64_t>> sorted(counter.counts.begin(), counter.counts.end());
  counter.counts.clear();
  std::sort(sorted.begin(), sorted.end());
  struct Word {
    std::vector<int32_t> syms;
    int64_t freq;
  };
  std::vector<Word> words;
  words.reserve(sorted.size());
  for (const auto& [piece, freq] : sorted) {
    Word w{{}, freq};
    for (size_t i = 0; i < piece.size(); ++i) {
      const auto b = static_cast<unsigned char>(piece[i]);
      w.syms.push_back(i + 1 == piece.size() ? byte_end_sym[b] : byte_sym[b]);
    }
    words.push_back(std::move(w));
  }

  std::unordered_map<uint64_t, int64_t> pair_count;
  std::unordered_map<uint64_t, std::vector<int32_t>> where;  // pair -> words that contain (or contained) it
  for (int32_t w = 0; w < int32_t(words.size()); ++w) {
    const auto& s = words[size_t(w)].syms;
    for (size_t k = 0; k + 1 < s.size(); ++k) {
      const uint64_t p = pair_key(s[k], s[k + 1]);
      pair_count[p] += words[size_t(w)].freq;
      auto& list = where[p];
      if (list.empty() || list.back() != w) list.push_back(w);
    }
  }

  struct Entry {
    int64_t count;
    uint64_t pair;
  };
  // Max-heap: the highest count first; among equal counts the smallest (left, right) strings.
  auto lower_priority = [&](const Entry& x, const Entry& y) {
    if (x.count != y.count) return x.count < y.count;
    const std::string& xl = sym_str[size_t(pair_left(x.pair))];
    const std::string& yl = sym_str[size_t(pair_left(y.pair))];
    if (xl != yl) return xl > yl;
    return sym_str[size_t(pair_right(x.pair))] > sym_str[size_t(pair_right(y.pair))];
  };
  std::priority_queue<Entry, std::vector<Entry>, decltype(lower_priority)> heap(lower_priority);
  for (const auto& [p, c] : pair_count) heap.push({c, p});

  BpeTrainResult result;
  result.captions = counter.captions;
  result.words = counter.words;
  result.unique_words = int64_t(words.size());
  std::unordered_map<uint64_t, int64_t> delta;
  std::vector<int32_t> merged_syms;
  while (int64_t(result.merges.size()) < target && !heap.empty()) {
    const Entry top = heap.top();
    heap.pop();
    auto cit = pair_count.find(top.pair);
    const int64_t cur = cit == pair_count.end() ? 0 : cit->second;
    if (cur != top.count) {  // stale: counts went down since this entry was pushed
      if (cur > 0) heap.push({cur, top.pair});
      continue;
    }
    if (cur < options.min_frequency) break;  // the best pair is too rare: nothing more to learn

    const int32_t a = pair_left(top.pair), b = pair_right(top.pair);
    result.merges.emplace_back(sym_str[size_t(a)], sym_str[size_t(b)]);
    const int32_t m = symbol(sym_str[size_t(a)] + sym_str[size_t(b)]);

    std::vector<int32_t> list = std::move(where[top.pair]);
    where.erase(top.pair);
    std::sort(list.begin(), list.end());
    list.erase(std::unique(list.begin(), list.end()), list.end());
    delta.clear();
    for (int32_t w : list) {
      Word& word = words[size_t(w)];
      auto& s = word.syms;
      bool has = false;
      for (size_t k = 0; k + 1 < s.size() && !has; ++k) has = s[k] == a && s[k + 1] == b;
      if (!has) continue;  // an index entry left from before an earlier merge changed the word
      for (size_t k = 0; k + 1 < s.size(); ++k) delta[pair_key(s[k], s[k + 1])] -= word.freq;
      merged_syms.clear();
      for (size_t k = 0; k < s.size();) {
        if (s[k] == a && k + 1 < s.size() && s[k + 1] == b) {
          merged_syms.push_back(m);
          k += 2;
        } else {
          merged_syms.push_back(s[k++]);
        }
      }
      s.swap(merged_syms);
      for (size_t k = 0; k + 1 < s.size(); ++k) {
        const uint64_t p = pair_key(s[k], s[k + 1]);
        delta[p] += word.freq;
        if (s[k] == m || s[k + 1] == m) {
          auto& l = where[p];
          if (l.empty() || l.back() != w) l.push_back(w);
        }
      }
    }
    for (const auto& [p, d] : delta) {
      if (d == 0) continue;
      int64_t& c = pair_count[p];
      c += d;
      if (d > 0) heap.push({c, p});
      if (c == 0) pair_count.erase(p);
    }
    if (options.progress && options.progress_every > 0 &&
        int64_t(result.merges.size()) % options.progress_every == 0)
      options.progress(int64_t(result.merges.size()), target);
  }
  result.vocab_size = kBaseVocab + int64_t(result.merges.size());
  if (options.progress) options.progress(int64_t(result.merges.size()), target);
  return result;
}

}  // namespace

BpeTrainResult train_bpe(const std::vector<std::string>& captions, const BpeTrainOptions& options) {
  check_options(options);  // before the counting, which can take a while
  WordCounter counter;
  for (const std::string& c : captions) counter.add(c);
  return train_from_counts(counter, options);
}

BpeTrainResult train_bpe_file(const std::string& captions_path, const BpeTrainOptions& options) {
  check_options(options);
  std::ifstream f(captions_path, std::ios::binary);
  CLIPCU_CHECK(f.good(), "cannot open captions file '" << captions_path << "'");
  WordCounter counter;
  std::string line;
  while (std::getline(f, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t\v\f") == std::string::npos) continue;
    counter.add(line);
  }
  CLIPCU_CHECK(!f.bad(), "cannot read captions file '" << captions_path << "'");
  CLIPCU_CHECK(counter.captions > 0, "captions file '" << captions_path << "' has no caption (one caption a line)");
  return train_from_counts(counter, options);
}

}  // namespace clipcu::text
