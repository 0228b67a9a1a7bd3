// Text cleaning and CLIP's pre-tokenization over Unicode code points (see unicode.h for the
// reference behaviour each function reproduces). Character data come from utf8proc.
#include "engine/text/unicode.h"

#include <utf8proc.h>

#include <cstdlib>
#include <memory>

#include "engine/error.h"

namespace clipcu::text {

namespace {

constexpr char32_t kReplacement = 0xFFFD;

// One UTF-8 character at s[i]: its code point, its length in bytes and whether it is valid. An
// invalid sequence is reported as its maximal subpart (the lead byte and the continuation bytes
// that were still allowed), which Python's errors="replace" turns into one U+FFFD.
struct Decoded {
  char32_t cp;
  size_t len;
  bool valid;
};

Decoded utf8_next(std::string_view s, size_t i) {
  const unsigned char b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) return {b0, 1, true};
  size_t len;
  char32_t c;
  unsigned char lo = 0x80, hi = 0xBF;  // the allowed range of the second byte (Unicode table 3-7)
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    len = 2;
    c = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    len = 3;
    c = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;  // no overlong forms
    if (b0 == 0xED) hi = 0x9F;  // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    len = 4;
    c = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;  // no overlong forms
    if (b0 == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    return {kReplacement, 1, false};  // a byte that cannot start a sequence
  }
  size_t j = 1;
  for (; j < len && i + j < s.size(); ++j) {
    const unsigned char b = static_cast<unsigned char>(s[i + j]);
    if (b < lo || b > hi) break;
    c = (c << 6) | (b & 0x3F);
    lo = 0x80;
    hi = 0xBF;
  }
  if (j == len) return {c, len, true};
  return {kReplacement, j, false};
}

// Decodes one character at s[i], valid or not; returns the bytes consumed (>= 1).
inline size_t decode_at(std::string_view s, size_t i, char32_t* cp) {
  const unsigned char b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) {
    *cp = b0;
    return 1;
  }
  const Decoded d = utf8_next(s, i);
  *cp = d.cp;
  return d.len;
}

// For text already made valid (the output of nfc() and every step after it); invalid bytes
// still advance safely, so the public functions never read out of bounds on bad input.
inline size_t decode_valid(std::string_view s, size_t i, char32_t* cp) { return decode_at(s, i, cp); }

bool ascii_only(std::string_view s) {
  for (char ch : s)
    if (static_cast<unsigned char>(ch) >= 0x80) return false;
  return true;
}

utf8proc_category_t category(char32_t c) { return utf8proc_category(static_cast<utf8proc_int32_t>(c)); }

bool is_cased(char32_t c) {
  const auto cat = category(c);
  if (cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL || cat == UTF8PROC_CATEGORY_LT) return true;
  const auto ci = static_cast<utf8proc_int32_t>(c);
  return utf8proc_tolower(ci) != ci || utf8proc_toupper(ci) != ci;
}

// Case_Ignorable: marks, format characters, modifier letters and symbols, and the characters that
// sit inside words (apostrophes, period, colon, middle dot: Word_Break MidLetter/MidNumLet/Single_Quote).
bool is_case_ignorable(char32_t c) {
  switch (c) {
    case 0x27: case 0x2E: case 0x3A: case 0xB7: case 0x387: case 0x55F: case 0x5F4: case 0x2018:
    case 0x2019: case 0x2024: case 0x2027: case 0xFE13: case 0xFE52: case 0xFE55: case 0xFF07:
    case 0xFF0E: case 0xFF1A:
      return true;
    default:
      break;
  }
  const auto cat = category(c);
  return cat == UTF8PROC_CATEGORY_MN || cat == UTF8PROC_CATEGORY_ME || cat == UTF8PROC_CATEGORY_CF ||
         cat == UTF8PROC_CATEGORY_LM || cat == UTF8PROC_CATEGORY_SK;
}

// Under the pattern's IGNORECASE flag the negated class [^\s\p{L}\p{N}] also rejects a character
// whose case variants are letters or numbers (U+0345, whose uppercase is U+0399), so such a
// character is matched by no alternative and dropped, as the reference does.
bool has_letter_case_variant(char32_t c) {
  const auto ci = static_cast<utf8proc_int32_t>(c);
  for (utf8proc_int32_t v : {utf8proc_tolower(ci), utf8proc_toupper(ci), utf8proc_totitle(ci)})
    if (v != ci && (is_letter(char32_t(v)) || is_number(char32_t(v)))) return true;
  return false;
}

enum class Kind : uint8_t { Space, Letter, Number, Symbol, None };

Kind kind_of(char32_t c) {
  if (c < 0x80) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return Kind::Letter;
    if (c >= '0' && c <= '9') return Kind::Number;
    if (is_white_space(c)) return Kind::Space;
    return Kind::Symbol;
  }
  if (is_letter(c)) return Kind::Letter;
  if (is_number(c)) return Kind::Number;
  if (is_white_space(c)) return Kind::Space;
  if (has_letter_case_variant(c)) return Kind::None;
  return Kind::Symbol;
}

// Case-insensitive comparison of one character with a lowercase ASCII letter of the pattern
// (simple case folding: 'S' and U+017F LONG S match 's').
bool matches_ic(char32_t c, char lower_ascii) {
  if (c == char32_t(lower_ascii)) return true;
  if (c < 0x80) return c + 32 == char32_t(lower_ascii) && c >= 'A' && c <= 'Z';
  utf8proc_int32_t buf[4];
  const utf8proc_ssize_t n =
      utf8proc_decompose_char(static_cast<utf8proc_int32_t>(c), buf, 4, UTF8PROC_CASEFOLD, nullptr);
  return n == 1 && buf[0] == lower_ascii;
}

// Whether `lit` (a lowercase ASCII literal of the pattern) matches at byte i of s; `end` receives
// the byte just after the match.
bool literal_at(std::string_view s, size_t i, std::string_view lit, size_t* end) {
  for (char want : lit) {
    if (i >= s.size()) return false;
    char32_t c;
    const size_t n = decode_valid(s, i, &c);
    const bool letter = want >= 'a' && want <= 'z';
    if (letter ? !matches_ic(c, want) : c != char32_t(static_cast<unsigned char>(want))) return false;
    i += n;
  }
  *end = i;
  return true;
}

// html.unescape's numeric references: Windows-1252 for the C1 range, U+FFFD for NUL.
char32_t windows1252_charref(char32_t n) {
  static const char32_t c1[32] = {0x20AC, 0x81,   0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021,
                                  0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0x8D,   0x017D, 0x8F,
                                  0x90,   0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014,
                                  0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x9D,   0x017E, 0x0178};
  if (n == 0) return kReplacement;
  if (n == 0x0D) return 0x0D;
  if (n >= 0x80 && n <= 0x9F) return c1[n - 0x80];
  return 0;  // not one of these
}

// Code points that a numeric reference removes: controls and noncharacters.
bool invalid_codepoint(char32_t n) {
  if ((n >= 0x1 && n <= 0x8) || n == 0xB || (n >= 0xE && n <= 0x1F) || (n >= 0x7F && n <= 0x9F)) return true;
  if (n >= 0xFDD0 && n <= 0xFDEF) return true;
  return (n & 0xFFFE) == 0xFFFE;  // U+xFFFE and U+xFFFF of every plane
}

void append_charref(std::string& out, char32_t n, bool overflow) {
  if (!overflow) {
    if (char32_t w = windows1252_charref(n); w != 0 || n == 0) {
      utf8_append(out, w);
      return;
    }
  }
  if (overflow || (n >= 0xD800 && n <= 0xDFFF) || n > 0x10FFFF) {
    utf8_append(out, kReplacement);
    return;
  }
  if (invalid_codepoint(n)) return;
  utf8_append(out, n);
}

bool excluded_from_entity_name(char32_t c) {
  return c == '\t' || c == '\n' || c == '\f' || c == ' ' || c == '<' || c == '&' || c == '#' || c == ';';
}

int hex_value(char ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  return -1;
}

std::string strip_py(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e) {
    char32_t c;
    const size_t n = decode_valid(s, b, &c);
    if (!is_py_space(c)) break;
    b += n;
  }
  while (e > b) {
    size_t p = e - 1;  // step back to the start of the last character
    while (p > b && (static_cast<unsigned char>(s[p]) & 0xC0) == 0x80) --p;
    char32_t c;
    decode_valid(s, p, &c);
    if (!is_py_space(c)) break;
    e = p;
  }
  return std::string(s.substr(b, e - b));
}

}  // namespace

// ---------------------------------------------------------------- UTF-8

std::u32string utf8_decode(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    char32_t c;
    i += decode_at(s, i, &c);
    out.push_back(c);
  }
  return out;
}

void utf8_append(std::string& out, char32_t c) {
  if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (c >> 18)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

std::string utf8_encode(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) utf8_append(out, c);
  return out;
}

std::string utf8_sanitize(std::string_view s) {
  bool valid = true;
  for (size_t i = 0; i < s.size() && valid;) {
    const Decoded d = utf8_next(s, i);
    valid = d.valid;
    i += d.len;
  }
  if (valid) return std::string(s);
  return utf8_encode(utf8_decode(s));
}

// ---------------------------------------------------------------- character classes

bool is_letter(char32_t c) {
  if (c < 0x80) return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  switch (category(c)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO:
      return true;
    default:
      return false;
  }
}

bool is_number(char32_t c) {
  if (c < 0x80) return c >= '0' && c <= '9';
  const auto cat = category(c);
  return cat == UTF8PROC_CATEGORY_ND || cat == UTF8PROC_CATEGORY_NL || cat == UTF8PROC_CATEGORY_NO;
}

bool is_white_space(char32_t c) {
  if (c < 0x80) return c == ' ' || (c >= 0x09 && c <= 0x0D);
  if (c == 0x85) return true;
  const auto cat = category(c);
  return cat == UTF8PROC_CATEGORY_ZS || cat == UTF8PROC_CATEGORY_ZL || cat == UTF8PROC_CATEGORY_ZP;
}

bool is_py_space(char32_t c) { return (c >= 0x1C && c <= 0x1F) || is_white_space(c); }

// ---------------------------------------------------------------- cleaning

std::string nfc(std::string_view utf8) {
  std::string valid = utf8_sanitize(utf8);
  if (ascii_only(valid)) return valid;  // NFC leaves ASCII as it is
  utf8proc_uint8_t* dst = nullptr;
  const utf8proc_ssize_t n =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(valid.data()), utf8proc_ssize_t(valid.size()), &dst,
                   utf8proc_option_t(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  std::unique_ptr<utf8proc_uint8_t, decltype(&std::free)> owned(dst, &std::free);
  CLIPCU_CHECK(n >= 0, "NFC normalization failed: " << utf8proc_errmsg(n));
  return std::string(reinterpret_cast<const char*>(dst), size_t(n));
}

std::string html_unescape(std::string_view s) {
  if (s.find('&') == std::string_view::npos) return std::string(s);
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    if (s[i] != '&') {
      out.push_back(s[i++]);
      continue;
    }
    const size_t j = i + 1;
    if (j < s.size() && s[j] == '#') {
      // &#123; or &#x7B; (the semicolon is optional); values past U+10FFFF saturate.
      size_t k = j + 1;
      const bool hex = k < s.size() && (s[k] == 'x' || s[k] == 'X');
      if (hex) ++k;
      const size_t digits_begin = k;
      uint64_t n = 0;
      bool overflow = false;
      while (k < s.size() && (hex ? hex_value(s[k]) >= 0 : (s[k] >= '0' && s[k] <= '9'))) {
        n = n * (hex ? 16 : 10) + uint64_t(hex ? hex_value(s[k]) : s[k] - '0');
        if (n > 0x10FFFF) {
          overflow = true;
          n = 0x110000;
        }
        ++k;
      }
      if (k == digits_begin) {  // "&#" or "&#x" with no digits: not a reference
        out.push_back('&');
        ++i;
        continue;
      }
      if (k < s.size() && s[k] == ';') ++k;
      append_charref(out, char32_t(n), overflow);
      i = k;
      continue;
    }
    // A named reference: up to 32 characters outside [\t\n\f <&#;], then an optional ';'.
    std::vector<size_t> bounds;  // byte offsets where each character of the name ends
    size_t k = j;
    while (k < s.size() && bounds.size() < 32) {
      char32_t c;
      const size_t n = decode_valid(s, k, &c);
      if (excluded_from_entity_name(c)) break;
      k += n;
      bounds.push_back(k);
    }
    if (bounds.empty()) {
      out.push_back('&');
      ++i;
      continue;
    }
    if (k < s.size() && s[k] == ';') {
      ++k;
      bounds.push_back(k);
    }
    const std::string_view name = s.substr(j, k - j);
    if (const char* v = html_entity(name)) {
      out += v;
    } else {
      // The longest prefix (at least 2 characters) that is an entity, the rest kept as it is.
      bool found = false;
      for (size_t x = bounds.size() - 1; x >= 2 && !found; --x) {
        const size_t len = bounds[x - 1] - j;
        if (const char* v2 = html_entity(name.substr(0, len))) {
          out += v2;
          out += name.substr(len);
          found = true;
        }
      }
      if (!found) {
        out.push_back('&');
        out += name;
      }
    }
    i = k;
  }
  return out;
}

std::string lower_full(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  if (ascii_only(s)) {
    for (char ch : s) out.push_back(ch >= 'A' && ch <= 'Z' ? char(ch + 32) : ch);
    return out;
  }
  const std::u32string cps = utf8_decode(s);
  for (size_t i = 0; i < cps.size(); ++i) {
    const char32_t c = cps[i];
    if (c == 0x130) {  // LATIN CAPITAL LETTER I WITH DOT ABOVE: the one unconditional full mapping
      out += "i\xCC\x87";
    } else if (c == 0x3A3) {
      // Final sigma: preceded by a cased letter and not followed by one (case-ignorables skipped).
      size_t p = i;
      while (p > 0 && is_case_ignorable(cps[p - 1])) --p;
      bool final_sigma = p > 0 && is_cased(cps[p - 1]);
      if (final_sigma) {
        size_t q = i + 1;
        while (q < cps.size() && is_case_ignorable(cps[q])) ++q;
        final_sigma = q == cps.size() || !is_cased(cps[q]);
      }
      utf8_append(out, final_sigma ? 0x3C2 : 0x3C3);
    } else {
      utf8_append(out, char32_t(utf8proc_tolower(static_cast<utf8proc_int32_t>(c))));
    }
  }
  return out;
}

std::string clean_text(std::string_view text) {
  std::string t = nfc(text);
  t = html_unescape(html_unescape(t));
  t = strip_py(t);
  // Runs of White_Space become one space.
  std::string collapsed;
  collapsed.reserve(t.size());
  bool in_space = false;
  for (size_t i = 0; i < t.size();) {
    char32_t c;
    const size_t n = decode_valid(t, i, &c);
    if (is_white_space(c)) {
      if (!in_space) collapsed.push_back(' ');
      in_space = true;
    } else {
      collapsed.append(t, i, n);
      in_space = false;
    }
    i += n;
  }
  return lower_full(strip_py(collapsed));
}

// ---------------------------------------------------------------- pre-tokenization

std::vector<std::string_view> pre_tokenize(std::string_view s) {
  static constexpr std::string_view kMarkers[] = {"<|startoftext|>", "<|endoftext|>"};
  // The contractions, in the pattern's order.
  static constexpr std::string_view kContractions[] = {"s", "t", "re", "ve", "m", "ll", "d"};
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < s.size()) {
    char32_t c;
    size_t n = decode_valid(s, i, &c);
    size_t end = 0;
    bool matched = false;
    if (c == '<') {
      for (std::string_view m : kMarkers)
        if (!matched && literal_at(s, i, m, &end)) matched = true;
    } else if (c == '\'') {
      for (std::string_view m : kContractions)
        if (!matched && literal_at(s, i + 1, m, &end)) matched = true;
    }
    if (matched) {
      out.push_back(s.substr(i, end - i));
      i = end;
      continue;
    }
    const Kind k = kind_of(c);
    if (k == Kind::Space || k == Kind::None) {
      i += n;
      continue;
    }
    if (k == Kind::Number) {
      out.push_back(s.substr(i, n));
      i += n;
      continue;
    }
    // A run of letters, or a run of symbols (the symbol class stops at space, letter, number).
    size_t j = i + n;
    while (j < s.size()) {
      char32_t d;
      const size_t m = decode_valid(s, j, &d);
      if (kind_of(d) != k) break;
      j += m;
    }
    out.push_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

}  // namespace clipcu::text
