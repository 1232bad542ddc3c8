// Generated tokens to text for a response: streaming detokenization (never half a UTF-8 character),
// stop sequences matched across token boundaries (text that may be the start of a stop sequence is
// held back until it is known not to be), and reasoning output (<think>…</think>) split off as
// reasoning_content the way DeepSeek's API does.
#pragma once
#include <string>
#include <vector>

#include "tokenizer/streaming_decoder.h"

namespace epserve::serve {

struct TextPiece {
  std::string content, reasoning;
  bool stopped = false;  // a stop sequence matched: nothing more is to be emitted
};

class TextAssembler {
 public:
  // starts_in_reasoning: the prompt ended inside <think> (R1's template opens it); with
  // split_reasoning, output that opens with <think> is reasoning until </think>.
  TextAssembler(const tokenizer::Tokenizer& tok, std::vector<std::string> stops, bool split_reasoning,
                bool starts_in_reasoning = false);
  TextPiece push(int token);
  TextPiece finish();  // the held-back text, at the end of generation (not after a stop)
  bool stopped() const { return stopped_; }

 private:
  TextPiece take(bool final);
  void route(const std::string& text, bool final, TextPiece& out);

  tokenizer::StreamingDecoder decoder_;
  std::vector<std::string> stops_;
  std::string held_;        // decoded, not yet checked against the stop sequences
  std::string route_held_;  // checked, waiting for the reasoning split to decide
  enum class Mode { kDetect, kReasoning, kAfterReasoning, kContent } mode_;
  bool stopped_ = false;
};

}  // namespace epserve::serve
