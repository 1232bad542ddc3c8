#include "tokenizer/streaming_decoder.h"

#include "tokenizer/utf8.h"

namespace epserve::tokenizer {

std::string StreamingDecoder::push(int id) {
  const std::string& bytes = tokenizer_->token_bytes(id);
  if (skip_special_ && tokenizer_->is_special(id)) return {};
  pending_ += bytes;
  // Everything but an unfinished character at the end is final: invalid bytes before it can
  // never become valid, and from_utf8_lossy treats them the same whatever follows.
  const size_t hold = utf8_incomplete_suffix(pending_);
  std::string out = utf8_lossy(std::string_view(pending_).substr(0, pending_.size() - hold));
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string StreamingDecoder::flush() {
  std::string out = utf8_lossy(pending_);
  pending_.clear();
  return out;
}

}  // namespace epserve::tokenizer
