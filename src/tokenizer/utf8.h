// UTF-8 checks shared by the tokenizer: input must be valid (HF tokenizers only ever sees Rust
// strings), and byte sequences produced by decoding are repaired exactly as Rust's
// String::from_utf8_lossy does, so that our decode matches HF's byte for byte.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace epserve::tokenizer {

// Length of the valid UTF-8 character starting at s[i], or 0 when the bytes there are not one
// (truncated, overlong, surrogate, beyond U+10FFFF, stray continuation byte).
size_t utf8_char_length(std::string_view s, size_t i);

// Offset of the first byte that does not begin a valid character, or npos when all is valid.
size_t utf8_first_invalid(std::string_view s);

// Throws epserve::Error naming `what` and the byte offset when s is not valid UTF-8.
void require_utf8(std::string_view s, std::string_view what);

// Appends the code point cp as UTF-8.
void append_utf8(std::string& out, uint32_t cp);

// Rust's from_utf8_lossy: each maximal invalid subpart becomes one U+FFFD.
std::string utf8_lossy(std::string_view bytes);

// Length of the longest suffix of s that is an incomplete (but so far valid) character prefix:
// bytes a streaming decoder must hold back because later bytes may complete them.
size_t utf8_incomplete_suffix(std::string_view s);

}  // namespace epserve::tokenizer
