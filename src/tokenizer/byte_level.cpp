#include "tokenizer/byte_level.h"

#include "tokenizer/utf8.h"

namespace epserve::tokenizer {
namespace {

struct Tables {
  std::array<uint32_t, 256> to_cp{};
  std::array<std::string, 256> symbol;
  Tables() {
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      to_cp[b] = printable ? b : next++;
      append_utf8(symbol[b], to_cp[b]);
    }
  }
};

const Tables& tables() {
  static const Tables t;
  return t;
}

}  // namespace

uint32_t byte_to_codepoint(uint8_t b) { return tables().to_cp[b]; }

std::optional<uint8_t> codepoint_to_byte(uint32_t cp) {
  // The alphabet is the identity on printable Latin-1 and then 256.. in order of the others.
  static const auto inverse = [] {
    std::array<int, 324> inv;
    inv.fill(-1);
    for (int b = 0; b < 256; ++b) inv[tables().to_cp[b]] = b;
    return inv;
  }();
  if (cp >= inverse.size() || inverse[cp] < 0) return std::nullopt;
  return static_cast<uint8_t>(inverse[cp]);
}

const std::string& byte_symbol(uint8_t b) { return tables().symbol[b]; }

std::string byte_level_decode_token(std::string_view token) {
  std::string out;
  size_t i = 0;
  while (i < token.size()) {
    const size_t n = utf8_char_length(token, i);
    if (n == 0) return std::string(token);
    uint32_t cp = static_cast<unsigned char>(token[i]);
    if (n > 1) {
      cp &= 0xFF >> (n + 1);
      for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(token[i + k]) & 0x3F);
    }
    const auto b = codepoint_to_byte(cp);
    if (!b) return std::string(token);
    out += static_cast<char>(*b);
    i += n;
  }
  return out;
}

}  // namespace epserve::tokenizer
