// DeepSeek-V3's tokenizer as HF tokenizers runs it from a checkpoint's tokenizer.json: added
// tokens cut out first, then the pre-tokenizer's words, each encoded by byte-level BPE; decoding
// maps tokens back to bytes and repairs invalid UTF-8 as HF does. Same ids, byte for byte.
#pragma once
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace epserve::tokenizer {

// Where scripts/fetch-node-deps.sh puts DeepSeek-V3's tokenizer.json and tokenizer_config.json:
// ${EPSERVE_CACHE:-$HOME/.cache/epserve}/tokenizer/deepseek-v3.
std::filesystem::path default_tokenizer_dir();

class Tokenizer {
 public:
  // Reads model_dir/tokenizer.json. Throws epserve::Error naming the file and field when it is
  // missing, malformed or uses a feature this implementation does not have.
  static Tokenizer load(const std::filesystem::path& model_dir);
  static Tokenizer from_file(const std::filesystem::path& tokenizer_json);

  // Ids of text (which must be valid UTF-8, else epserve::Error). Adds no BOS: the tokenizer.json
  // post-processor adds none, and chat templates write the BOS token into the text.
  std::vector<int> encode(std::string_view text) const;
  void encode_append(std::string_view text, std::vector<int>& out) const;

  // Text of ids; an unknown id is an epserve::Error. Special tokens are written out unless
  // skip_special_tokens. Bytes that do not form UTF-8 become U+FFFD (as HF does).
  std::string decode(std::span<const int> ids, bool skip_special_tokens = false) const;

  // The raw bytes a token stands for (before any UTF-8 repair); throws for unknown ids.
  const std::string& token_bytes(int id) const;

  // One more than the largest id (vocabulary and added tokens together).
  int vocab_size() const;
  // Id of a token given as it is written in tokenizer.json (added tokens first, then the vocab).
  std::optional<int> token_id(std::string_view token) const;
  bool is_special(int id) const;
  bool is_known(int id) const;

 private:
  struct Impl;
  std::shared_ptr<const Impl> impl_;
};

}  // namespace epserve::tokenizer
