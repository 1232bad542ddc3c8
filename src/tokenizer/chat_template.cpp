#include "tokenizer/chat_template.h"

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "base/json_file.h"
#include "base/error.h"
#include "tokenizer/utf8.h"

namespace epserve::tokenizer {

ChatTemplate ChatTemplate::from_string(const std::string& source, std::map<std::string, std::string> special_tokens,
                                       const std::string& where) {
  ChatTemplate t;
  t.template_ = jinja::Template::parse(source, where);
  t.special_ = std::move(special_tokens);
  return t;
}

ChatTemplate ChatTemplate::load(const std::filesystem::path& dir) {
  const auto path = dir / "tokenizer_config.json";
  const std::string where = path.string();
  const nlohmann::json j = read_json_file(path, "no tokenizer_config.json there?");
  if (!j.contains("chat_template") || !j["chat_template"].is_string())
    throw Error(where + ": \"chat_template\" missing or not a string");
  // Special tokens are either plain strings or AddedToken objects with a "content".
  std::map<std::string, std::string> special;
  for (const char* key : {"bos_token", "eos_token", "pad_token", "unk_token"}) {
    if (!j.contains(key) || j[key].is_null()) continue;
    const auto& v = j[key];
    if (v.is_string()) special[key] = v.get<std::string>();
    else if (v.is_object() && v.contains("content") && v["content"].is_string()) special[key] = v["content"].get<std::string>();
    else throw Error(where + ": \"" + key + "\" is neither a string nor an object with \"content\"");
  }
  return from_string(j["chat_template"].get<std::string>(), std::move(special), where + ": chat_template");
}

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const {
  jinja::List list;
  for (const auto& m : messages) list.emplace_back(jinja::Dict{{"role", jinja::Value(m.role)}, {"content", jinja::Value(m.content)}});
  jinja::Dict context;
  context["messages"] = jinja::Value(std::move(list));
  context["add_generation_prompt"] = jinja::Value(add_generation_prompt);
  for (const auto& [k, v] : special_) context[k] = jinja::Value(v);
  return template_.render(context);
}

std::vector<ChatMessage> parse_chat_messages(const std::string& json_text, const std::string& where) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json_text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(where + ": not valid JSON: " + e.what());
  }
  if (j.is_object() && j.contains("messages")) j = j["messages"];
  if (!j.is_array()) throw Error(where + ": expected an array of messages (or {\"messages\": [...]})");
  std::vector<ChatMessage> out;
  for (size_t k = 0; k < j.size(); ++k) {
    const auto& m = j[k];
    const std::string at = where + ": messages[" + std::to_string(k) + "]";
    if (!m.is_object()) throw Error(at + ": not an object");
    if (!m.contains("role") || !m["role"].is_string()) throw Error(at + ": \"role\" missing or not a string");
    if (!m.contains("content") || !m["content"].is_string()) throw Error(at + ": \"content\" missing or not a string");
    out.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  }
  return out;
}

}  // namespace epserve::tokenizer
