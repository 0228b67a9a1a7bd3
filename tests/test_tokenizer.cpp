// CLIP's BPE tokenizer: the 20 golden cases of ../shared/golden/tokenizer_cases.jsonl exactly
// (openai/CLIP simple_tokenizer.py with ftfy replaced by NFC), the cleaning steps against values
// Python 3.11's html.unescape / str methods / the `regex` module give, the cache, the batch API,
// errors for bad merges files, and the `clipcu tokenize` command.
#include <zlib.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "engine/text/tokenizer.h"
#include "engine/text/unicode.h"
#include "tests/support.h"

using namespace clipcu;
using namespace clipcu::text;

namespace {

struct GoldenCase {
  std::string text, decoded;
  std::vector<int64_t> bpe, context77;
  bool truncated = false;
};

const std::vector<GoldenCase>& golden_cases() {
  static const std::vector<GoldenCase> cases = [] {
    std::vector<GoldenCase> out;
    std::ifstream f(test::golden_path("tokenizer_cases.jsonl"));
    std::string line;
    while (std::getline(f, line)) {
      if (line.empty()) continue;
      const auto j = nlohmann::json::parse(line);
      out.push_back({j.at("text").get<std::string>(), j.at("decoded").get<std::string>(),
                     j.at("bpe").get<std::vector<int64_t>>(), j.at("context77").get<std::vector<int64_t>>(),
                     j.at("truncated").get<bool>()});
    }
    return out;
  }();
  return cases;
}

const Tokenizer& clip_tokenizer() {
  static const Tokenizer tok(test::vocab_path());
  return tok;
}

std::string write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), std::streamsize(bytes.size()));
  return path;
}

std::string read_binary(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

std::string ids_str(const std::vector<int64_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) s += ' ';
    s += std::to_string(ids[i]);
  }
  return s;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const clipcu::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("tokenizer: CLIP vocabulary layout") {
  const Tokenizer& tok = clip_tokenizer();
  CHECK(tok.vocab_size() == 49408);
  CHECK(tok.num_merges() == 49152 - 256 - 2);
  CHECK(tok.start_id() == 49406);
  CHECK(tok.end_id() == 49407);
  CHECK(tok.token(0) == "!");            // byte 0x21 comes first
  CHECK(tok.token(256) == "!</w>");
  CHECK(tok.token(188) == "\xC4\x80");  // byte 0x00 -> U+0100, the first non-printable byte
  CHECK(tok.token(49406) == "<|startoftext|>");
  CHECK(tok.id_of("<|endoftext|>") == 49407);
  CHECK(tok.id_of("cat</w>") == 2368);
  CHECK(tok.id_of("no such token") == -1);
  const auto& b2u = byte_to_unicode();
  REQUIRE(b2u.size() == 256);
  CHECK(b2u['a'] == "a");
  CHECK(b2u[' '] == "\xC4\xA0");  // U+0120
  CHECK(b2u[0xAD] == "\xC5\x83");  // the soft hyphen byte is the last of the remapped ones: U+0143
}

TEST_CASE("tokenizer: the 20 golden cases exactly (bpe, context77, truncated, decoded)") {
  const Tokenizer& tok = clip_tokenizer();
  const auto& cases = golden_cases();
  REQUIRE(cases.size() == 20);
  int matched = 0;
  for (const GoldenCase& c : cases) {
    INFO("text: '" << c.text << "'");
    const std::vector<int64_t> bpe = tok.encode(c.text);
    CHECK_MESSAGE(bpe == c.bpe, "bpe " << ids_str(bpe) << "\n   golden " << ids_str(c.bpe));
    bool truncated = false;
    const std::vector<int64_t> ctx = tok.tokenize(c.text, 77, &truncated);
    CHECK_MESSAGE(ctx == c.context77, "context77 " << ids_str(ctx) << "\n   golden " << ids_str(c.context77));
    CHECK(truncated == c.truncated);
    const std::string decoded = tok.decode(c.bpe);
    CHECK_MESSAGE(decoded == c.decoded, "decoded '" << decoded << "' golden '" << c.decoded << "'");
    matched += bpe == c.bpe && ctx == c.context77 && truncated == c.truncated && decoded == c.decoded;
  }
  MESSAGE("golden tokenizer cases matched exactly: " << matched << " / " << cases.size());
  CHECK(matched == 20);
}

TEST_CASE("tokenizer: batch tensor equals the golden rows, and the cache never changes ids") {
  const auto& cases = golden_cases();
  std::vector<std::string> texts;
  for (const auto& c : cases) texts.push_back(c.text);
  // Enough rows (>= 4096) for the threaded path, in a repeating order.
  std::vector<std::string> many;
  for (int r = 0; r < 205; ++r)
    for (const auto& t : texts) many.push_back(t);
  const Tensor batch = clip_tokenizer().tokenize_batch(many, 77);
  REQUIRE(batch.dtype() == DType::I64);
  REQUIRE(batch.shape() == Shape{int64_t(many.size()), 77});
  const std::vector<int64_t> v = batch.to_i64_vector();
  for (size_t n = 0; n < many.size(); ++n) {
    const auto& want = cases[n % cases.size()].context77;
    CHECK(std::equal(want.begin(), want.end(), v.begin() + std::ptrdiff_t(n * 77)));
  }
  CHECK(clip_tokenizer().tokenize_batch({}, 77).shape() == Shape{0, 77});

  TokenizerOptions no_cache;
  no_cache.cache_capacity = 0;
  const Tokenizer cold(test::vocab_path(), no_cache);
  TokenizerOptions tiny_cache;
  tiny_cache.cache_capacity = 3;
  const Tokenizer tiny(test::vocab_path(), tiny_cache);
  for (const auto& c : cases) {
    CHECK(cold.encode(c.text) == c.bpe);
    CHECK(tiny.encode(c.text) == c.bpe);
  }
  CHECK(cold.cache_size() == 0);
  CHECK(tiny.cache_size() == 3);  // bounded
  tiny.clear_cache();
  CHECK(tiny.cache_size() == 0);
  // A shorter context: cut, ending with the end id.
  const auto ctx5 = clip_tokenizer().tokenize("two red circles above a blue square", 5);
  CHECK(ctx5 == std::vector<int64_t>{49406, 1237, 736, 19411, 49407});
  CHECK(clip_tokenizer().tokenize("", 2) == std::vector<int64_t>{49406, 49407});
  CHECK(clip_tokenizer().tokenize("a dog", 4) == std::vector<int64_t>{49406, 320, 1929, 49407});  // exactly fits
}

TEST_CASE("tokenizer: concurrent encodes share the cache safely") {
  const Tokenizer tok(test::vocab_path());
  const auto& cases = golden_cases();
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int r = 0; r < 20; ++r)
        for (size_t i = 0; i < cases.size(); ++i) {
          const auto& c = cases[(i + size_t(t) * 5) % cases.size()];
          if (tok.encode(c.text) != c.bpe) ++wrong;
        }
    });
  for (auto& th : threads) th.join();
  CHECK(wrong.load() == 0);
  CHECK(tok.cache_size() > 0);
}

TEST_CASE("tokenizer: text cleaning as the reference does it") {
  // html.unescape applied twice (values from Python 3.11's html module).
  CHECK(html_unescape("&amp;amp;") == "&amp;");
  CHECK(clean_text("&amp;amp;") == "&");
  CHECK(html_unescape("&#39;&#x27;&#X27") == "'''");
  CHECK(html_unescape("&#0;|&#128;|&#xD800;|&#1;|&#99999999999;|&#x110000;|&#65;&#65a") ==
        "\xEF\xBF\xBD|\xE2\x82\xAC|\xEF\xBF\xBD||\xEF\xBF\xBD|\xEF\xBF\xBD|AAa");
  CHECK(html_unescape("&ampfoo &notit; &unknown; &#; &#x; &eacute &Eacute; &AMP &hellip; &apos;") ==
        "&foo \xC2\xACit; &unknown; &#; &#x; \xC3\xA9 \xC3\x89 & \xE2\x80\xA6 '");
  CHECK(html_unescape("&amp &lt&gt") == "& <>");
  const std::string long_name = "&" + std::string(40, 'a') + ";";
  CHECK(html_unescape(long_name) == long_name);
  CHECK(html_entity("amp;") != nullptr);
  CHECK(html_entity("zwnj;") != nullptr);
  CHECK(html_entity("nosuch;") == nullptr);
  // NFC, whitespace (NBSP, em space, U+3000, U+0085 are \s; U+200B is not), strip, lowercase.
  CHECK(clean_text("Cafe\xCC\x81") == "caf\xC3\xA9");
  CHECK(clean_text(" \xC2\xA0" "a\xE2\x80\x83" "b\xE3\x80\x80" "c\xC2\x85" "d\xE2\x80\x8B" "e&nbsp;f \x1C") ==
        "a b c d\xE2\x80\x8B" "e f");
  CHECK(clean_text("\x1Cx\x1Cy\x1C") == "x\x1Cy");  // str.strip() removes U+001C, \s does not match it
  // str.lower(): U+0130 -> "i\u0307", final sigma.
  CHECK(clean_text("\xC4\xB0stanbul") == "i\xCC\x87stanbul");
  CHECK(clean_text("\xCE\x9F\xCE\x94\xCE\x9F\xCE\xA3 \xCE\xA3") == "\xCE\xBF\xCE\xB4\xCE\xBF\xCF\x82 \xCF\x83");
  CHECK(lower_full("\xC3\x84\xC3\x96\xC3\x9C") == "\xC3\xA4\xC3\xB6\xC3\xBC");
}

TEST_CASE("tokenizer: pre-tokenization follows the pattern's alternation order") {
  auto pieces = [](const std::string& s) {
    std::vector<std::string> out;
    for (auto p : pre_tokenize(s)) out.emplace_back(p);
    return out;
  };
  using V = std::vector<std::string>;
  CHECK(pieces("don't 'single' !!!'s") == V{"don", "'t", "'s", "ingle", "'", "!!!'", "s"});
  CHECK(pieces("<|startoftext|>hi<|endoftext|><|x") == V{"<|startoftext|>", "hi", "<|endoftext|>", "<|", "x"});
  CHECK(pieces("abc123 4.5") == V{"abc", "1", "2", "3", "4", ".", "5"});
  // Case-insensitive contractions: U+017F LONG S folds to 's'.
  CHECK(pieces("'\xC5\xBF") == V{"'\xC5\xBF"});
  // Letters of any script; Nl/No are numbers; emoji are symbols.
  CHECK(pieces("\xE6\x97\xA5\xE6\x9C\xAC\xE2\x85\xAB\xC2\xBD\xF0\x9F\x90\xB1\xF0\x9F\x90\xB6") ==
        V{"\xE6\x97\xA5\xE6\x9C\xAC", "\xE2\x85\xAB", "\xC2\xBD", "\xF0\x9F\x90\xB1\xF0\x9F\x90\xB6"});
  // U+0345 (uppercase U+0399 is a letter) is matched by no alternative under IGNORECASE: dropped.
  CHECK(pieces("x\xCD\x85y") == V{"x", "y"});
  CHECK(pieces("") == V{});
}

TEST_CASE("tokenizer: invalid UTF-8 reads as U+FFFD per maximal subpart (Python's errors='replace')") {
  CHECK(utf8_sanitize("\xFF") == "\xEF\xBF\xBD");
  CHECK(utf8_decode("\xE2\x82" "a") == std::u32string{0xFFFD, 'a'});
  CHECK(utf8_decode("\xF0\x90\x80") == std::u32string{0xFFFD});
  CHECK(utf8_decode("\xED\xA0\x80") == std::u32string{0xFFFD, 0xFFFD, 0xFFFD});
  CHECK(utf8_decode("\xC0\xAF") == std::u32string{0xFFFD, 0xFFFD});
  CHECK(utf8_decode("\xF4\x90\x80\x80") == std::u32string(4, 0xFFFD));
  CHECK(utf8_decode("a\xE0\x80" "b") == std::u32string{'a', 0xFFFD, 0xFFFD, 'b'});
  CHECK(utf8_decode("\xF0\x9F\x90\xB1x\x80") == std::u32string{0x1F431, 'x', 0xFFFD});
  const Tokenizer& tok = clip_tokenizer();
  CHECK(tok.encode("\xFF\xFE cat") == tok.encode("\xEF\xBF\xBD\xEF\xBF\xBD cat"));
  // decode of a lone continuation byte token gives U+FFFD, not invalid output.
  const int64_t byte80 = tok.id_of(byte_to_unicode()[0x80]);
  REQUIRE(byte80 >= 0);
  CHECK(tok.decode({byte80, 320}) == "\xEF\xBF\xBD" "a ");
}

TEST_CASE("tokenizer: a small merges file of its own size") {
  const std::string dir = test::temp_dir("tokenizer_small");
  const std::string path = write_file(dir + "/merges.txt", "#version: 0.2\nc a\nca t</w>\nd o\ndo g</w>\r\n\n");
  const Tokenizer tok(path);
  CHECK(tok.num_merges() == 4);
  CHECK(tok.vocab_size() == 512 + 4 + 2);
  CHECK(tok.start_id() == 516);
  CHECK(tok.end_id() == 517);
  CHECK(tok.encode("Cat DOG cats") == std::vector<int64_t>{tok.id_of("cat</w>"), tok.id_of("dog</w>"),
                                                          tok.id_of("ca"), tok.id_of("t"), tok.id_of("s</w>")});
  CHECK(tok.tokenize("cat", 4) == std::vector<int64_t>{516, 513, 517, 0});
  CHECK(tok.decode(tok.encode("a cat, a dog")) == "a cat , a dog ");
  // max_merges caps what is read (CLIP's rule); -1 reads all.
  TokenizerOptions two;
  two.max_merges = 2;
  CHECK(Tokenizer(path, two).vocab_size() == 512 + 2 + 2);
  // The same file gzipped reads the same.
  const std::string gz = dir + "/merges.txt.gz";
  write_merges(gz, read_merges(path));
  CHECK(Tokenizer(gz).encode("cat dog") == tok.encode("cat dog"));
  CHECK(read_binary(gz).substr(0, 2) == "\x1F\x8B");
}

TEST_CASE("tokenizer: bad merges files are clear errors naming the file") {
  const std::string dir = test::temp_dir("tokenizer_errors");
  auto check_error = [](const std::string& path, const std::string& reason) {
    const std::string msg = error_of([&] { Tokenizer tok(path); });
    INFO("error: " << msg);
    CHECK(msg.find(path) != std::string::npos);
    CHECK(msg.find(reason) != std::string::npos);
  };
  check_error(dir + "/missing.txt.gz", "cannot open");
  check_error(write_file(dir + "/notgzip.txt.gz", "#version: 0.2\na b\n"), "not gzip");
  // Corrupt: a real gzip stream with bytes in the middle damaged, and one cut short.
  const std::string clip_gz = read_binary(test::vocab_path());
  REQUIRE(clip_gz.size() > 100000);
  std::string damaged = clip_gz;
  for (size_t i = 1000; i < 1400; ++i) damaged[i] = char(damaged[i] ^ 0x5A);
  check_error(write_file(dir + "/damaged.txt.gz", damaged), "corrupt gzip");
  check_error(write_file(dir + "/truncated.txt.gz", clip_gz.substr(0, clip_gz.size() / 2)), "corrupt gzip");
  check_error(write_file(dir + "/noheader.txt", "a b\nc d\n"), "#version");
  check_error(write_file(dir + "/threefields.txt", "#version: 0.2\na b\nc d e\n"), "line 3");
  check_error(write_file(dir + "/onefield.txt", "#version: 0.2\nab\n"), "line 2");
  check_error(write_file(dir + "/blank.txt", "#version: 0.2\na b\n\nc d\n"), "blank line 3");
  check_error(write_file(dir + "/undefined.txt", "#version: 0.2\na b\nab cd\n"), "'cd' is not a token defined before it");
  check_error(write_file(dir + "/notbytes.txt", "#version: 0.2\na \xC8\x80\n"), "not a token");  // U+0200
  check_error(write_file(dir + "/empty.txt", ""), "#version");

  const Tokenizer& tok = clip_tokenizer();
  CHECK(error_of([&] { tok.decode({49408}); }).find("outside the vocabulary") != std::string::npos);
  CHECK(error_of([&] { tok.decode({-1}); }).find("outside the vocabulary") != std::string::npos);
  CHECK(error_of([&] { tok.tokenize("a", 1); }).find("context_length 1") != std::string::npos);
  CHECK(error_of([&] { write_merges(dir + "/bad_out.txt", {{"a b", "c"}}); }).find("without spaces") !=
        std::string::npos);
}

TEST_CASE("tokenizer: vocabulary path from --vocab or CLIPCU_VOCAB") {
  CHECK(resolve_vocab_path("/some/file.txt.gz") == "/some/file.txt.gz");
  const char* old = std::getenv("CLIPCU_VOCAB");
  const std::string saved = old ? old : "";
  ::setenv("CLIPCU_VOCAB", "/from/env.txt.gz", 1);
  CHECK(resolve_vocab_path("") == "/from/env.txt.gz");
  ::unsetenv("CLIPCU_VOCAB");
  const std::string msg = error_of([] { resolve_vocab_path(""); });
  CHECK(msg.find("--vocab") != std::string::npos);
  CHECK(msg.find("CLIPCU_VOCAB") != std::string::npos);
  if (old) ::setenv("CLIPCU_VOCAB", saved.c_str(), 1);
}

TEST_CASE("clipcu tokenize prints the golden context ids") {
  const auto& cases = golden_cases();
  const std::string vocab = test::vocab_path();
  std::string out;
  int rc = test::run_command(test::clipcu_binary() + " tokenize --vocab '" + vocab + "' 'a photo of a cat' 'a dog'", &out);
  INFO("output:\n" << out);
  REQUIRE(rc == 0);
  std::istringstream lines(out);
  std::string l1, l2;
  std::getline(lines, l1);
  std::getline(lines, l2);
  CHECK(l1 == ids_str(cases[0].context77));
  CHECK(l2 == ids_str(cases[3].context77));

  // CLIPCU_VOCAB names the file when --vocab is absent; --context sets the row length.
  rc = test::run_command("CLIPCU_VOCAB='" + vocab + "' " + test::clipcu_binary() + " tokenize --context 8 'a dog'", &out);
  CHECK(rc == 0);
  CHECK(out == "49406 320 1929 49407 0 0 0 0\n");

  // Neither: a clear error and a failing exit status.
  rc = test::run_command("env -u CLIPCU_VOCAB " + test::clipcu_binary() + " tokenize 'a dog'", &out);
  CHECK(rc != 0);
  CHECK(out.find("CLIPCU_VOCAB") != std::string::npos);
  rc = test::run_command(test::clipcu_binary() + " tokenize --vocab /no/such/vocab.txt.gz 'a dog'", &out);
  CHECK(rc != 0);
  CHECK(out.find("/no/such/vocab.txt.gz") != std::string::npos);
}
