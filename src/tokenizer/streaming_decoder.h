// Decoding a generation token by token: a token may end in the middle of a UTF-8 character (BPE
// merges bytes, not characters), so its bytes are held back until the character is complete.
// The pieces returned by push() and flush() concatenate to exactly decode(all ids).
#pragma once
#include <string>

#include "tokenizer/tokenizer.h"

namespace epserve::tokenizer {

class StreamingDecoder {
 public:
  // The tokenizer must outlive the decoder.
  explicit StreamingDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = false)
      : tokenizer_(&tokenizer), skip_special_(skip_special_tokens) {}

  // Text that became final with this token (possibly empty). Unknown ids throw epserve::Error.
  std::string push(int id);
  // Whatever is still held back, with an unfinished character shown as U+FFFD; then resets.
  std::string flush();

 private:
  const Tokenizer* tokenizer_;
  bool skip_special_;
  std::string pending_;  // at most 3 bytes: the start of a character
};

}  // namespace epserve::tokenizer
