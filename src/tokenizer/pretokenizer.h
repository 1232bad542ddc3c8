// HF tokenizers' pre-tokenizers (Sequence, Split, Digits, ByteLevel): cut normalized text into the
// words that BPE then encodes one by one. Regexes are Oniguruma syntax in tokenizer.json; we run
// them with PCRE2 (JIT) after regex_from_onig has made up for the two engines' differences.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace epserve::tokenizer {

// A word: a byte range of the text, possibly with a space put in front of it (ByteLevel's
// add_prefix_space), which BPE must see but the text does not contain.
struct Piece {
  uint32_t begin = 0, end = 0;
  bool prefix_space = false;
};

// How a Split keeps the matches of its pattern (HF's SplitDelimiterBehavior).
enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

class Regex;  // a compiled PCRE2 pattern (pretokenizer.cpp)

class PreTokenizer {
 public:
  // From the "pre_tokenizer" object of tokenizer.json (null: the whole text is one word).
  // `where` names the file for error messages.
  static PreTokenizer from_json(const nlohmann::json& j, const std::string& where);

  PreTokenizer();
  ~PreTokenizer();
  PreTokenizer(PreTokenizer&&) noexcept;
  PreTokenizer& operator=(PreTokenizer&&) noexcept;

  // Appends the words of text (valid UTF-8) to out, in order; empty words are dropped.
  void split(std::string_view text, std::vector<Piece>& out) const;

 private:
  struct Step {
    std::shared_ptr<const Regex> regex;  // null for a ByteLevel step without its regex
    SplitBehavior behavior = SplitBehavior::Isolated;
    bool invert = false;
    bool add_prefix_space = false;  // ByteLevel only
  };
  void add_steps(const nlohmann::json& j, const std::string& where);
  std::vector<Step> steps_;
};

// Rewrites an Oniguruma pattern into a PCRE2 one with the same meaning on the constructs these
// files use: Oniguruma's \s also matches U+0085 (NEL), PCRE2's (with UCP) does not; and HF's
// Oniguruma has a newer Unicode, whose extra characters are added to \p{X} (unicode_extra.h).
std::string regex_from_onig(std::string_view pattern);

}  // namespace epserve::tokenizer
