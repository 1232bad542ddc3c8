#include "serve/text_stream.h"

#include <algorithm>

namespace epserve::serve {
namespace {

constexpr const char* kOpen = "<think>";
constexpr const char* kClose = "</think>";

// The length of the longest suffix of `text` that is a proper prefix of `word`.
size_t partial_suffix(const std::string& text, const std::string& word) {
  for (size_t n = std::min(text.size(), word.size() - 1); n > 0; --n)
    if (text.compare(text.size() - n, n, word, 0, n) == 0) return n;
  return 0;
}

}  // namespace

TextAssembler::TextAssembler(const tokenizer::Tokenizer& tok, std::vector<std::string> stops, bool split_reasoning,
                             bool starts_in_reasoning)
    : decoder_(tok, /*skip_special_tokens=*/true), stops_(std::move(stops)),
      mode_(starts_in_reasoning ? Mode::kReasoning : split_reasoning ? Mode::kDetect : Mode::kContent) {}

TextPiece TextAssembler::push(int token) {
  if (stopped_) return {};
  held_ += decoder_.push(token);
  return take(false);
}

TextPiece TextAssembler::finish() {
  if (stopped_) return {};
  held_ += decoder_.flush();
  return take(true);
}

TextPiece TextAssembler::take(bool final) {
  TextPiece out;
  size_t first = std::string::npos, keep = 0;
  for (const auto& s : stops_) {
    const size_t at = held_.find(s);
    if (at != std::string::npos) first = std::min(first, at);
    keep = std::max(keep, partial_suffix(held_, s));
  }
  if (first != std::string::npos) {
    route(held_.substr(0, first), true, out);
    held_.clear();
    stopped_ = out.stopped = true;
    return out;
  }
  if (final) keep = 0;
  const std::string ready = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  route(ready, final, out);
  return out;
}

void TextAssembler::route(const std::string& text, bool final, TextPiece& out) {
  route_held_ += text;
  for (;;) {
    if (mode_ == Mode::kContent) {
      out.content += route_held_;
      route_held_.clear();
      return;
    }
    if (mode_ == Mode::kDetect) {
      const size_t lead = route_held_.find_first_not_of(" \t\r\n");
      if (lead == std::string::npos) {
        if (final) mode_ = Mode::kContent;
        else return;
        continue;
      }
      const std::string rest = route_held_.substr(lead);
      const std::string open = kOpen;
      if (rest.compare(0, open.size(), open) == 0) {
        route_held_ = rest.substr(open.size());
        mode_ = Mode::kReasoning;
        continue;
      }
      if (!final && rest.size() < open.size() && open.compare(0, rest.size(), rest) == 0) return;  // may still open
      mode_ = Mode::kContent;
      continue;
    }
    if (mode_ == Mode::kAfterReasoning) {
      // DeepSeek's answers put a blank line after </think>; the content starts after it (the
      // newlines may come in later tokens than the tag).
      const size_t lead = route_held_.find_first_not_of("\n");
      route_held_.erase(0, lead == std::string::npos ? route_held_.size() : lead);
      if (route_held_.empty() && !final) return;
      mode_ = Mode::kContent;
      continue;
    }
    // kReasoning
    const std::string close = kClose;
    const size_t at = route_held_.find(close);
    if (at != std::string::npos) {
      out.reasoning += route_held_.substr(0, at);
      route_held_.erase(0, at + close.size());
      mode_ = Mode::kAfterReasoning;
      continue;
    }
    const size_t keep = final ? 0 : partial_suffix(route_held_, close);
    out.reasoning += route_held_.substr(0, route_held_.size() - keep);
    route_held_.erase(0, route_held_.size() - keep);
    return;
  }
}

}  // namespace epserve::serve
