// Learns BPE merges from captions, so that a model can be trained with no downloaded vocabulary.
//
// Each caption goes through the tokenizer's own cleaning and pre-tokenization (unicode.h); the
// pieces are counted as words of byte tokens (the last one in its "</w>" form). Merges are then
// learned greedily: the adjacent pair with the highest count over all words (weighted by word
// frequency) becomes the next merge; ties go to the pair whose (left, right) token strings are
// smallest in byte order, so a corpus always gives the same merges. Training stops at the target
// vocabulary size (256 bytes x 2 for the "</w>" forms + merges + 2 specials) or when no pair is
// seen at least `min_frequency` times.
//
// Counting is incremental: a pair -> count table, a pair -> words index and a max-heap with lazy
// deletion (an entry whose count is stale is re-pushed with the current count), so each merge
// costs time in the words that contain the pair rather than in the corpus.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace clipcu::text {

struct BpeTrainOptions {
  int64_t vocab_size = 49408;  // 514 (no merges) .. 49408 (CLIP's size, the most a Tokenizer loads by default)
  int64_t min_frequency = 2;   // a pair seen fewer times is not merged
  // Called once the words are counted: (captions, words, distinct words).
  std::function<void(int64_t captions, int64_t words, int64_t unique_words)> counted;
  // Called every `progress_every` merges and at the end: (merges learned, merges wanted).
  std::function<void(int64_t done, int64_t total)> progress;
  int64_t progress_every = 1000;
};

struct BpeTrainResult {
  std::vector<std::pair<std::string, std::string>> merges;  // in rank order, as a merges file lists them
  int64_t vocab_size = 0;     // 512 + merges + 2
  int64_t captions = 0;       // lines read
  int64_t words = 0;          // pre-tokenized pieces counted
  int64_t unique_words = 0;
};

// Trains on captions in memory.
BpeTrainResult train_bpe(const std::vector<std::string>& captions, const BpeTrainOptions& options);
// Trains on a file of one caption a line (blank lines skipped). Throws clipcu::Error naming the
// file when it is missing, unreadable or has no caption.
BpeTrainResult train_bpe_file(const std::string& captions_path, const BpeTrainOptions& options);

}  // namespace clipcu::text
