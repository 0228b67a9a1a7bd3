// clipcu tokenize [--vocab V] [--context 77] TEXT...: CLIP's BPE ids of each text, one line per
// text: the whole context (start, ids, end, zero padding; a long text is cut keeping the end id).
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "engine/text/tokenizer.h"
#include "tools/command.h"

namespace clipcu::tools {
namespace {

struct TokenizeArgs {
  std::string vocab;
  int64_t context = 77;
  std::vector<std::string> texts;
};

int run_tokenize(const TokenizeArgs& a) {
  const text::Tokenizer tok(text::resolve_vocab_path(a.vocab));
  std::string line;
  for (const std::string& t : a.texts) {
    const std::vector<int64_t> ids = tok.tokenize(t, a.context);
    line.clear();
    for (size_t i = 0; i < ids.size(); ++i) {
      if (i) line.push_back(' ');
      line += std::to_string(ids[i]);
    }
    std::printf("%s\n", line.c_str());
  }
  return 0;
}

Command tokenize_cmd("tokenize", "Print CLIP BPE token ids of each text (one line per text, the whole context)",
                     [](CLI::App& app) {
                       auto a = std::make_shared<TokenizeArgs>();
                       app.add_option("--vocab", a->vocab, "BPE merges file (.txt or .txt.gz); default $CLIPCU_VOCAB");
                       app.add_option("--context", a->context, "context length (start + ids + end + padding)")
                           ->default_val(77)
                           ->check(CLI::Range(int64_t(2), int64_t(1) << 20));
                       app.add_option("text", a->texts, "texts to tokenize")->required();
                       return [a]() { return run_tokenize(*a); };
                     });

}  // namespace
}  // namespace clipcu::tools
