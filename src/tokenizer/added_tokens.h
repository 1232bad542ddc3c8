// Added tokens (HF's AddedVocabulary): special tokens such as "<｜begin▁of▁sentence｜>" and a few
// others are cut out of the text before pre-tokenization, so they are recognised wherever they
// appear and BPE never builds them from ordinary text. HF matches leftmost-longest, first the
// tokens marked normalized=false on the raw text, then the normalized=true ones in what is left.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace epserve::tokenizer {

struct AddedToken {
  int id = 0;
  std::string content;
  bool special = false;
  bool normalized = false;
};

// A run of text: either an added token (id >= 0) or ordinary text to pre-tokenize (id == -1).
struct Segment {
  uint32_t begin = 0, end = 0;
  int id = -1;
};

class AddedTokens {
 public:
  // From the "added_tokens" array of tokenizer.json (null: none).
  static AddedTokens from_json(const nlohmann::json& j, const std::string& where);

  // Cuts text into segments, in order, covering it exactly; `out` is cleared first.
  void split(std::string_view text, std::vector<Segment>& out) const;

  const std::vector<AddedToken>& tokens() const { return tokens_; }

 private:
  // A byte trie of one set of tokens, for leftmost-longest matching.
  struct Trie {
    struct Node {
      std::vector<std::pair<unsigned char, int>> children;  // sorted by byte
      int token = -1;
    };
    std::vector<Node> nodes{Node{}};
    bool first_byte[256] = {};
    void add(std::string_view s, int id);
    // Longest token starting at text[pos]: its length (0 if none) and id.
    size_t longest(std::string_view text, size_t pos, int& id) const;
    void split(std::string_view text, uint32_t base, std::vector<Segment>& out) const;
    bool empty() const { return nodes.size() == 1; }
  };
  std::vector<AddedToken> tokens_;
  Trie raw_, normalized_;
};

}  // namespace epserve::tokenizer
