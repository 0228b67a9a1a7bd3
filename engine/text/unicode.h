// Text cleaning and pre-tokenization for CLIP's BPE tokenizer, over Unicode code points.
//
// The reference (openai/CLIP simple_tokenizer.py) runs, per text:
//   ftfy.fix_text          -> here Unicode NFC (utf8proc), as the golden files do (ftfy is not packaged)
//   html.unescape twice    -> html_unescape(), Python's rules: named entities (a table of the HTML 4
//                             names, their legacy no-semicolon forms and common HTML5 punctuation
//                             names), numeric &#NN; / &#xHH; with the same invalid-code-point rules
//   str.strip()            -> Python's str.isspace() set
//   regex \s+ -> ' ', strip
//   str.lower()            -> full lowercase: utf8proc's simple mapping plus U+0130 -> "i\u0307" and
//                             the final-sigma rule that Python applies
// and then splits the text with the pattern
//   <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
// (case-insensitive), implemented by hand: at each position the first alternative that matches
// wins, as in a backtracking regex engine's findall. Character categories come from utf8proc.
//
// Input bytes that are not valid UTF-8 are decoded with Python's errors="replace" rule (each
// maximal invalid subpart becomes one U+FFFD), so any byte string can be tokenized.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace clipcu::text {

// ---- UTF-8
// Decodes `s` into code points; invalid sequences become U+FFFD (one per maximal subpart).
std::u32string utf8_decode(std::string_view s);
// Appends the UTF-8 encoding of code point `c` (must be a valid scalar value) to `out`.
void utf8_append(std::string& out, char32_t c);
std::string utf8_encode(std::u32string_view s);
// `s` with invalid sequences replaced by U+FFFD; returns `s` unchanged when already valid.
std::string utf8_sanitize(std::string_view s);

// ---- character classes (as Python's `regex` module and str methods see them)
bool is_letter(char32_t c);       // \p{L}: Lu Ll Lt Lm Lo
bool is_number(char32_t c);       // \p{N}: Nd Nl No
bool is_white_space(char32_t c);  // regex \s: the White_Space property (Zs Zl Zp, U+0009-000D, U+0085)
bool is_py_space(char32_t c);     // str.isspace(): White_Space plus U+001C-001F

// ---- cleaning steps
std::string nfc(std::string_view utf8);              // Unicode NFC (utf8proc); input sanitized first
std::string html_unescape(std::string_view utf8);    // Python's html.unescape, once
std::string lower_full(std::string_view utf8);       // Python's str.lower()
// The whole cleaning of simple_tokenizer.encode: NFC, unescape twice, strip, collapse whitespace to
// single spaces, strip, lowercase. The result is valid UTF-8.
std::string clean_text(std::string_view text);

// Splits cleaned text with CLIP's pattern. The views point into `cleaned`.
std::vector<std::string_view> pre_tokenize(std::string_view cleaned);

// The HTML entity table: the replacement of `name` ("amp;", "amp", "eacute;", ...), or nullptr.
const char* html_entity(std::string_view name);

}  // namespace clipcu::text
