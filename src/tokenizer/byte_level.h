// GPT-2's byte-level alphabet: every byte is shown as a printable code point so that a BPE
// vocabulary of strings can cover arbitrary bytes. Printable Latin-1 bytes map to themselves,
// the other 68 bytes to U+0100 onwards in byte order.
#pragma once
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace epserve::tokenizer {

// The code point standing for byte b.
uint32_t byte_to_codepoint(uint8_t b);

// The byte a code point stands for, if it is one of the 256 in the alphabet.
std::optional<uint8_t> codepoint_to_byte(uint32_t cp);

// The UTF-8 of byte_to_codepoint(b), e.g. "Ġ" for a space.
const std::string& byte_symbol(uint8_t b);

// Maps a vocabulary token (byte-level string) back to bytes, as HF's ByteLevel decoder does:
// when any of its characters is outside the alphabet (added tokens such as "<｜User｜>"), the
// token stands for its own UTF-8 bytes.
std::string byte_level_decode_token(std::string_view token);

}  // namespace epserve::tokenizer
