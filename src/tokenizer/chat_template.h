// A checkpoint's chat template (tokenizer_config.json's "chat_template"), rendered as transformers'
// apply_chat_template renders it: messages as dicts with role and content, the special tokens
// (bos_token, eos_token, ...) as strings, and add_generation_prompt.
#pragma once
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "tokenizer/jinja.h"

namespace epserve::tokenizer {

struct ChatMessage {
  std::string role, content;
};

class ChatTemplate {
 public:
  // Reads dir/tokenizer_config.json; throws epserve::Error naming the file and field.
  static ChatTemplate load(const std::filesystem::path& dir);
  // From a template string and the special tokens it may refer to (e.g. {"bos_token", "<s>"}).
  static ChatTemplate from_string(const std::string& source, std::map<std::string, std::string> special_tokens,
                                  const std::string& where = "chat template");

  std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;

  // The special tokens passed to the template (bos_token, eos_token, pad_token, unk_token).
  const std::map<std::string, std::string>& special_tokens() const { return special_; }

 private:
  jinja::Template template_;
  std::map<std::string, std::string> special_;
};

// Reads a messages list: a JSON array of {"role": ..., "content": ...}, or an object with such an
// array under "messages". Throws epserve::Error naming `where` and the bad element.
std::vector<ChatMessage> parse_chat_messages(const std::string& json_text, const std::string& where);

}  // namespace epserve::tokenizer
