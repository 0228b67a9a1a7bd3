// Captions per second through CLIP's BPE tokenizer: with the word cache warm (the steady state of
// a training run, where caption words repeat), with no cache (every word goes through BPE), the
// batch API that fills an I64 [N, 77] tensor, and the cleaning / pre-tokenization steps alone.
// Vocabulary: $CLIPCU_VOCAB, else ../shared/vocab/bpe_simple_vocab_16e6.txt.gz beside the source tree.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "engine/rng.h"
#include "engine/text/tokenizer.h"
#include "engine/text/unicode.h"

namespace {

using clipcu::text::Tokenizer;
using clipcu::text::TokenizerOptions;

std::string vocab_path() {
  const char* env = std::getenv("CLIPCU_VOCAB");
  if (env && *env) return env;
  return std::string(CLIPCU_SOURCE_DIR) + "/../shared/vocab/bpe_simple_vocab_16e6.txt.gz";
}

// Short captions (8-14 words) in the style of web alt-text and COCO: a fixed seed, 2,000 of them.
const std::vector<std::string>& captions() {
  static const std::vector<std::string> c = [] {
    static const char* subj[] = {"a photo of a", "an image of the", "A close-up of a", "two", "a group of",
                                 "a black and white picture of a", "an old", "the"};
    static const char* adj[] = {"small", "large", "fluffy", "red", "wooden", "vintage", "bright", "smiling",
                                "crowded", "snowy", "colorful", "tiny", "majestic", "broken", "shiny"};
    static const char* noun[] = {"cat", "dog", "bicycle", "mountain", "kitchen", "skateboarder", "pizza", "giraffe",
                                 "train station", "birthday cake", "laptop", "sailboat", "bowl of fruit", "lighthouse",
                                 "motorcycle", "umbrella"};
    static const char* rest[] = {"sitting on a bench", "next to the window", "in the park at sunset",
                                 "on a wooden table.", "under a cloudy sky", "with a blue background",
                                 "parked near the road,", "covered in snow!", "at night (long exposure)",
                                 "in São Paulo", "&amp; friends", "#nofilter 2019"};
    clipcu::Rng rng(2024);
    auto pick = [&](int n) { return int(rng.uniform() * n) % n; };
    std::vector<std::string> out;
    for (int i = 0; i < 2000; ++i)
      out.push_back(std::string(subj[pick(8)]) + " " + adj[pick(15)] + " " + noun[pick(16)] + " " + rest[pick(12)]);
    return out;
  }();
  return c;
}

const Tokenizer& warm_tokenizer() {
  static const Tokenizer tok = [] {
    Tokenizer t(vocab_path());
    for (const auto& c : captions()) t.encode(c);  // warm the cache
    return t;
  }();
  return tok;
}

const Tokenizer& cold_tokenizer() {
  static const Tokenizer tok = [] {
    TokenizerOptions o;
    o.cache_capacity = 0;
    return Tokenizer(vocab_path(), o);
  }();
  return tok;
}

void report(benchmark::State& state, int64_t per_iteration) {
  state.SetItemsProcessed(state.iterations() * per_iteration);
  state.counters["captions/s"] =
      benchmark::Counter(double(state.iterations() * per_iteration), benchmark::Counter::kIsRate);
}

void BM_TokenizeWarmCache(benchmark::State& state) {
  const Tokenizer& tok = warm_tokenizer();
  const auto& caps = captions();
  for (auto _ : state)
    for (const auto& c : caps) benchmark::DoNotOptimize(tok.tokenize(c, 77));
  report(state, int64_t(caps.size()));
}

void BM_TokenizeNoCache(benchmark::State& state) {
  const Tokenizer& tok = cold_tokenizer();
  const auto& caps = captions();
  for (auto _ : state)
    for (const auto& c : caps) benchmark::DoNotOptimize(tok.tokenize(c, 77));
  report(state, int64_t(caps.size()));
}

void BM_TokenizeBatchWarm(benchmark::State& state) {
  const Tokenizer& tok = warm_tokenizer();
  const auto& caps = captions();
  for (auto _ : state) benchmark::DoNotOptimize(tok.tokenize_batch(caps, 77));
  report(state, int64_t(caps.size()));
}

void BM_CleanText(benchmark::State& state) {
  const auto& caps = captions();
  for (auto _ : state)
    for (const auto& c : caps) benchmark::DoNotOptimize(clipcu::text::clean_text(c));
  report(state, int64_t(caps.size()));
}

void BM_CleanAndPreTokenize(benchmark::State& state) {
  const auto& caps = captions();
  for (auto _ : state)
    for (const auto& c : caps) {
      const std::string cleaned = clipcu::text::clean_text(c);
      benchmark::DoNotOptimize(clipcu::text::pre_tokenize(cleaned));
    }
  report(state, int64_t(caps.size()));
}

void BM_LoadVocabulary(benchmark::State& state) {
  for (auto _ : state) {
    Tokenizer t(vocab_path());
    benchmark::DoNotOptimize(t.vocab_size());
  }
}

BENCHMARK(BM_TokenizeWarmCache)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_TokenizeNoCache)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_TokenizeBatchWarm)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_CleanText)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_CleanAndPreTokenize)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_LoadVocabulary)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
