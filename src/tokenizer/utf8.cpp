#include "tokenizer/utf8.h"

#include "base/error.h"

namespace epserve::tokenizer {
namespace {

// How many bytes of a character starting at s[i] are a valid prefix (1..4), and the full length
// the lead byte announces. Follows the Unicode table of well-formed byte sequences (the same one
// Rust's decoder uses), so that "maximal subpart" boundaries agree with from_utf8_lossy.
struct Prefix {
  size_t valid = 0;  // bytes that are a valid prefix (0: lead byte itself invalid)
  size_t need = 0;   // total length announced by the lead byte
};

Prefix valid_prefix(std::string_view s, size_t i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) return {1, 1};
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;  // range allowed for the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) need = 2;
  else if (b0 == 0xE0) need = 3, lo = 0xA0;
  else if (b0 >= 0xE1 && b0 <= 0xEC) need = 3;
  else if (b0 == 0xED) need = 3, hi = 0x9F;
  else if (b0 >= 0xEE && b0 <= 0xEF) need = 3;
  else if (b0 == 0xF0) need = 4, lo = 0x90;
  else if (b0 >= 0xF1 && b0 <= 0xF3) need = 4;
  else if (b0 == 0xF4) need = 4, hi = 0x8F;
  else return {0, 1};
  size_t k = 1;
  for (; k < need && i + k < s.size(); ++k) {
    const auto b = static_cast<unsigned char>(s[i + k]);
    const unsigned char l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
    if (b < l || b > h) break;
  }
  return {k, need};
}

}  // namespace

size_t utf8_char_length(std::string_view s, size_t i) {
  const auto p = valid_prefix(s, i);
  return p.valid == p.need ? p.need : 0;
}

size_t utf8_first_invalid(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    // ASCII runs dominate ordinary text: skip them eight bytes at a time.
    while (i + 8 <= s.size()) {
      uint64_t w;
      __builtin_memcpy(&w, s.data() + i, 8);
      if (w & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= s.size()) break;
    const size_t n = utf8_char_length(s, i);
    if (n == 0) return i;
    i += n;
  }
  return std::string_view::npos;
}

void require_utf8(std::string_view s, std::string_view what) {
  const size_t bad = utf8_first_invalid(s);
  if (bad != std::string_view::npos)
    throw Error(std::string(what) + ": invalid UTF-8 at byte " + std::to_string(bad));
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0;
  while (i < bytes.size()) {
    const auto p = valid_prefix(bytes, i);
    if (p.valid == p.need) {
      out.append(bytes.data() + i, p.need);
      i += p.need;
    } else {
      out += "\xEF\xBF\xBD";
      i += p.valid == 0 ? 1 : p.valid;
    }
  }
  return out;
}

size_t utf8_incomplete_suffix(std::string_view s) {
  // A character is at most 4 bytes, so only the last 3 bytes can start an incomplete one.
  for (size_t back = 1; back <= 3 && back <= s.size(); ++back) {
    const size_t i = s.size() - back;
    const auto b = static_cast<unsigned char>(s[i]);
    if ((b & 0xC0) == 0x80) continue;  // continuation byte: the lead is further back
    const auto p = valid_prefix(s, i);
    return (p.valid == back && p.need > back) ? back : 0;
  }
  return 0;
}

}  // namespace epserve::tokenizer
