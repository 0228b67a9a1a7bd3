// clipcu bpe-train --captions FILE --vocab-size N --out merges.txt.gz: learns BPE merges from
// captions (one a line) with CLIP's cleaning and pre-tokenization, and writes a merges file that
// `clipcu tokenize --vocab` and the trainer read like CLIP's own.
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include "engine/text/bpe_trainer.h"
#include "engine/text/tokenizer.h"
#include "tools/command.h"

namespace clipcu::tools {
namespace {

struct BpeTrainArgs {
  std::string captions, out;
  int64_t vocab_size = 49408;
  int64_t min_frequency = 2;
};

int run_bpe_train(const BpeTrainArgs& a) {
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  auto seconds = [&] { return std::chrono::duration<double>(Clock::now() - t0).count(); };
  text::BpeTrainOptions opt;
  opt.vocab_size = a.vocab_size;
  opt.min_frequency = a.min_frequency;
  opt.progress_every = 1000;
  opt.progress = [&](int64_t done, int64_t total) {
    std::fprintf(stderr, "bpe-train: %lld / %lld merges (%.1f s)\n", static_cast<long long>(done),
                 static_cast<long long>(total), seconds());
  };
  opt.counted = [&](int64_t captions, int64_t words, int64_t unique_words) {
    std::fprintf(stderr, "bpe-train: %lld captions, %lld words (%lld distinct) counted (%.1f s)\n",
                 static_cast<long long>(captions), static_cast<long long>(words), static_cast<long long>(unique_words),
                 seconds());
  };
  std::fprintf(stderr, "bpe-train: counting words in %s\n", a.captions.c_str());
  const text::BpeTrainResult r = text::train_bpe_file(a.captions, opt);
  text::write_merges(a.out, r.merges);
  // Read it back as a tokenizer would, so a file that does not load is never reported as written.
  const text::Tokenizer tok(a.out);
  std::printf("wrote %s: %lld merges, vocab size %lld (start %lld, end %lld)%s\n", a.out.c_str(),
              static_cast<long long>(tok.num_merges()), static_cast<long long>(tok.vocab_size()),
              static_cast<long long>(tok.start_id()), static_cast<long long>(tok.end_id()),
              tok.vocab_size() < a.vocab_size ? " (fewer than asked: no pair left that is frequent enough)" : "");
  return 0;
}

Command bpe_train_cmd("bpe-train", "Learn BPE merges from a captions file (one caption a line)", [](CLI::App& app) {
  auto a = std::make_shared<BpeTrainArgs>();
  app.add_option("--captions", a->captions, "text file, one caption a line")->required();
  app.add_option("--vocab-size", a->vocab_size, "target vocabulary: 512 byte tokens + merges + 2 specials")
      ->default_val(49408);
  app.add_option("--min-frequency", a->min_frequency, "merge only pairs seen at least this often")->default_val(2);
  app.add_option("--out", a->out, "merges file to write (.txt, or gzip when it ends in .gz)")->required();
  return [a]() { return run_bpe_train(*a); };
});

}  // namespace
}  // namespace clipcu::tools
