// The BPE trainer: greedy merges on a corpus small enough to check by hand, round trip of a
// generated caption corpus through the tokenizer that loads the trained file, determinism and
// order independence, errors, and the `clipcu bpe-train` command.
#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/rng.h"
#include "engine/text/bpe_trainer.h"
#include "engine/text/tokenizer.h"
#include "engine/text/unicode.h"
#include "tests/support.h"

using namespace clipcu;
using namespace clipcu::text;

namespace {

using Merges = std::vector<std::pair<std::string, std::string>>;

// Captions like the synthetic shapes data set, plus punctuation, digits, entities and non-ASCII
// text so that every pre-tokenizer branch feeds the trainer. Deterministic (fixed seed).
std::vector<std::string> make_corpus(int n, uint64_t seed) {
  static const char* sizes[] = {"small", "large", "tiny", "big"};
  static const char* colors[] = {"red", "green", "blue", "yellow", "purple", "orange"};
  static const char* shapes[] = {"circle", "square", "triangle", "star", "hexagon"};
  static const char* places[] = {"in the top left", "in the bottom right", "near the center", "on the left edge"};
  static const char* extras[] = {"",
                                 " on a white background.",
                                 " (2 of them!)",
                                 " &amp; a dot",
                                 " \xE2\x80\x94 caf\xC3\xA9 na\xC3\xAFve",
                                 " \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E",
                                 " it's 3.14 cm wide",
                                 " \xF0\x9F\x90\xB1!!"};
  Rng rng(seed);
  auto pick = [&](int k) { return int(rng.uniform() * k) % k; };
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) {
    std::string c = std::string(pick(2) ? "A " : "a ") + sizes[pick(4)] + " " + colors[pick(6)] + " " + shapes[pick(5)] +
                     " " + places[pick(4)] + extras[pick(8)];
    if (pick(3) == 0) {  // a made-up label, so that rare words stay split into several tokens
      c += " labeled ";
      for (int k = 0, len = 3 + pick(7); k < len; ++k) c.push_back(char('a' + pick(26)));
    }
    out.push_back(c);
  }
  return out;
}

// What decode(encode(text)) must give: the pieces of the cleaned text, each followed by a space
// (the "</w>" of its last token), except the start/end markers, which are special tokens.
std::string expected_round_trip(const std::string& text) {
  const std::string cleaned = clean_text(text);
  std::string out;
  for (std::string_view p : pre_tokenize(cleaned)) {
    out += p;
    if (p != "<|startoftext|>" && p != "<|endoftext|>") out += ' ';
  }
  return out;
}

std::string without_spaces(std::string s) {
  s.erase(std::remove(s.begin(), s.end(), ' '), s.end());
  return s;
}

std::string write_lines(const std::string& path, const std::vector<std::string>& lines) {
  std::ofstream f(path, std::ios::binary);
  for (const auto& l : lines) f << l << "\n";
  return path;
}

}  // namespace

TEST_CASE("bpe-train: greedy merges by pair frequency with a deterministic tie-break") {
  // Sennrich et al.'s example: low x5, lower x2, newest x6, widest x3.
  std::vector<std::string> captions;
  for (int i = 0; i < 5; ++i) captions.push_back("low");
  for (int i = 0; i < 2; ++i) captions.push_back("lower");
  for (int i = 0; i < 6; ++i) captions.push_back("newest");
  for (int i = 0; i < 3; ++i) captions.push_back("widest");
  BpeTrainOptions opt;
  opt.vocab_size = 514 + 4;
  const BpeTrainResult r = train_bpe(captions, opt);
  // (e,s) and (s,t</w>) both occur 9 times: the smaller strings win; then es+t</w> (9); then
  // (l,o) 7; then (e,w) and (n,e) 6 each: "e" < "n".
  CHECK(r.merges == Merges{{"e", "s"}, {"es", "t</w>"}, {"l", "o"}, {"e", "w"}});
  CHECK(r.vocab_size == 518);
  CHECK(r.captions == 16);
  CHECK(r.words == 16);
  CHECK(r.unique_words == 4);

  // Pairs below min_frequency are never merged: training stops before the target.
  opt.vocab_size = 49408;
  opt.min_frequency = 5;
  const BpeTrainResult r5 = train_bpe(captions, opt);
  CHECK(r5.merges.size() < 20);
  const Tokenizer tok(r5.merges, {});
  for (const auto& m : r5.merges) CHECK(tok.id_of(m.first + m.second) >= 0);
  CHECK(tok.encode("newest") == std::vector<int64_t>{tok.id_of("newest</w>")});
}

TEST_CASE("bpe-train: the trained file loads and round-trips its corpus") {
  const std::string dir = test::temp_dir("bpe_train");
  const std::vector<std::string> corpus = make_corpus(400, 7);
  const std::string captions = write_lines(dir + "/captions.txt", corpus);
  BpeTrainOptions opt;
  opt.vocab_size = 700;
  int progress_calls = 0;
  int64_t last_done = -1;
  opt.progress_every = 50;
  opt.progress = [&](int64_t done, int64_t total) {
    ++progress_calls;
    CHECK(total == 700 - 514);
    CHECK(done >= last_done);
    last_done = done;
  };
  int counted_calls = 0;
  opt.counted = [&](int64_t n_captions, int64_t words, int64_t unique_words) {
    ++counted_calls;
    CHECK(n_captions == 400);
    CHECK(words > unique_words);
  };
  const BpeTrainResult r = train_bpe_file(captions, opt);
  CHECK(counted_calls == 1);
  MESSAGE("trained " << r.merges.size() << " merges from " << r.captions << " captions, " << r.words << " words ("
                     << r.unique_words << " distinct)");
  CHECK(r.captions == 400);
  CHECK(r.vocab_size == 514 + int64_t(r.merges.size()));
  CHECK(r.vocab_size <= 700);
  CHECK(r.merges.size() > 100);  // the corpus has enough repeated pairs
  CHECK(progress_calls >= 2);
  CHECK(last_done == int64_t(r.merges.size()));

  const std::string path = dir + "/merges.txt.gz";
  write_merges(path, r.merges);
  const Tokenizer tok(path);
  CHECK(tok.num_merges() == int64_t(r.merges.size()));
  CHECK(tok.vocab_size() == r.vocab_size);
  CHECK(tok.start_id() == r.vocab_size - 2);
  CHECK(tok.end_id() == r.vocab_size - 1);
  CHECK(read_merges(path) == r.merges);

  int round_trips = 0;
  size_t total_ids = 0, total_bytes = 0;
  for (const std::string& c : corpus) {
    const std::vector<int64_t> ids = tok.encode(c);
    for (int64_t id : ids) CHECK((id >= 0 && id < tok.start_id()));
    const std::string back = tok.decode(ids);
    CHECK_MESSAGE(back == expected_round_trip(c), "caption '" << c << "'");
    CHECK(without_spaces(back) == without_spaces(clean_text(c)));
    round_trips += back == expected_round_trip(c);
    total_ids += ids.size();
    total_bytes += clean_text(c).size();
  }
  MESSAGE("round trips: " << round_trips << " / " << corpus.size() << ", " << double(total_bytes) / double(total_ids)
                          << " bytes per token");
  CHECK(round_trips == int(corpus.size()));
  // Text it never saw (other scripts, emoji, markers, entities) round-trips too: bytes are always tokens.
  std::ifstream golden(test::golden_path("tokenizer_cases.jsonl"));
  int held_out = 0;
  for (std::string line; std::getline(golden, line);) {
    if (line.empty()) continue;
    const std::string text = nlohmann::json::parse(line).at("text").get<std::string>();
    CHECK_MESSAGE(tok.decode(tok.encode(text)) == expected_round_trip(text), "text '" << text << "'");
    ++held_out;
  }
  CHECK(held_out == 20);
  // Common words became single tokens.
  CHECK(tok.encode("a red circle") ==
        std::vector<int64_t>{tok.id_of("a</w>"), tok.id_of("red</w>"), tok.id_of("circle</w>")});
}

TEST_CASE("bpe-train: deterministic and independent of caption order") {
  std::vector<std::string> corpus = make_corpus(300, 11);
  BpeTrainOptions opt;
  opt.vocab_size = 650;
  const BpeTrainResult a = train_bpe(corpus, opt);
  const BpeTrainResult b = train_bpe(corpus, opt);
  std::reverse(corpus.begin(), corpus.end());
  std::rotate(corpus.begin(), corpus.begin() + 37, corpus.end());
  const BpeTrainResult c = train_bpe(corpus, opt);
  CHECK(a.merges == b.merges);
  CHECK(a.merges == c.merges);
  // A prefix of a longer training run: greedy merges do not depend on the target.
  opt.vocab_size = 600;
  const BpeTrainResult d = train_bpe(corpus, opt);
  REQUIRE(d.merges.size() <= a.merges.size());
  CHECK(std::equal(d.merges.begin(), d.merges.end(), a.merges.begin()));
}

TEST_CASE("bpe-train: errors") {
  const std::string dir = test::temp_dir("bpe_train_errors");
  BpeTrainOptions opt;
  opt.vocab_size = 513;
  auto message = [](const std::function<void()>& f) -> std::string {
    try {
      f();
    } catch (const clipcu::Error& e) {
      return e.what();
    }
    return "";
  };
  CHECK(message([&] { train_bpe({"a b"}, opt); }).find("vocab size 513") != std::string::npos);
  opt.vocab_size = 49409;
  CHECK(message([&] { train_bpe({"a b"}, opt); }).find("vocab size 49409") != std::string::npos);
  opt.vocab_size = 600;
  CHECK(message([&] { train_bpe_file(dir + "/missing.txt", opt); }).find(dir + "/missing.txt") != std::string::npos);
  const std::string blank = write_lines(dir + "/blank.txt", {"", "   ", ""});
  CHECK(message([&] { train_bpe_file(blank, opt); }).find("has no caption") != std::string::npos);
  // Nothing to merge is not an error: a vocabulary of bytes only.
  const BpeTrainResult r = train_bpe({"a", "b c"}, opt);
  CHECK(r.merges.empty());
  CHECK(r.vocab_size == 514);
}

TEST_CASE("clipcu bpe-train writes a vocabulary that clipcu tokenize reads") {
  const std::string dir = test::temp_dir("bpe_train_cli");
  const std::string captions = write_lines(dir + "/captions.txt", make_corpus(200, 3));
  const std::string out_path = dir + "/merges.txt.gz";
  std::string out;
  int rc = test::run_command(test::clipcu_binary() + " bpe-train --captions '" + captions +
                                 "' --vocab-size 600 --out '" + out_path + "'",
                             &out);
  INFO("output:\n" << out);
  REQUIRE(rc == 0);
  CHECK(out.find("wrote " + out_path) != std::string::npos);
  const Tokenizer tok(out_path);
  CHECK(tok.vocab_size() <= 600);
  rc = test::run_command(test::clipcu_binary() + " tokenize --context 6 --vocab '" + out_path + "' 'a red star'", &out);
  CHECK(rc == 0);
  const std::vector<int64_t> want = tok.tokenize("a red star", 6);
  std::string want_line;
  for (size_t i = 0; i < want.size(); ++i) {
    if (i) want_line += ' ';
    want_line += std::to_string(want[i]);
  }
  CHECK(out == want_line + "\n");
  rc = test::run_command(test::clipcu_binary() + " bpe-train --captions '" + dir + "/none.txt' --vocab-size 600 --out '" +
                             dir + "/x.txt'",
                         &out);
  CHECK(rc != 0);
  CHECK(out.find("none.txt") != std::string::npos);
}
