#include "tokenizer/added_tokens.h"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "tokenizer/utf8.h"

namespace epserve::tokenizer {

void AddedTokens::Trie::add(std::string_view s, int id) {
  int n = 0;
  for (unsigned char c : s) {
    auto& ch = nodes[n].children;
    auto it = std::lower_bound(ch.begin(), ch.end(), std::make_pair(c, 0),
                               [](const auto& x, const auto& y) { return x.first < y.first; });
    if (it != ch.end() && it->first == c) {
      n = it->second;
    } else {
      const int child = int(nodes.size());
      ch.insert(it, {c, child});  // `ch` stays valid: nodes grows only below
      nodes.push_back(Node{});
      n = child;
    }
  }
  nodes[n].token = id;
  first_byte[static_cast<unsigned char>(s[0])] = true;
}

size_t AddedTokens::Trie::longest(std::string_view text, size_t pos, int& id) const {
  size_t best = 0;
  int n = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    const auto& ch = nodes[n].children;
    const unsigned char c = static_cast<unsigned char>(text[i]);
    auto it = std::lower_bound(ch.begin(), ch.end(), std::make_pair(c, 0),
                               [](const auto& x, const auto& y) { return x.first < y.first; });
    if (it == ch.end() || it->first != c) break;
    n = it->second;
    if (nodes[n].token >= 0) {
      best = i + 1 - pos;
      id = nodes[n].token;
    }
  }
  return best;
}

void AddedTokens::Trie::split(std::string_view text, uint32_t base, std::vector<Segment>& out) const {
  size_t start = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    if (!first_byte[static_cast<unsigned char>(text[i])]) continue;
    int id = -1;
    const size_t len = longest(text, i, id);
    if (len == 0) continue;
    if (i > start) out.push_back({uint32_t(base + start), uint32_t(base + i), -1});
    out.push_back({uint32_t(base + i), uint32_t(base + i + len), id});
    start = i + len;
    i = start - 1;
  }
  if (start < text.size()) out.push_back({uint32_t(base + start), uint32_t(base + text.size()), -1});
}

AddedTokens AddedTokens::from_json(const nlohmann::json& j, const std::string& where) {
  AddedTokens at;
  if (j.is_null()) return at;
  if (!j.is_array()) throw Error(where + ": \"added_tokens\" must be an array");
  for (size_t k = 0; k < j.size(); ++k) {
    const auto& t = j[k];
    const std::string field = where + ": added_tokens[" + std::to_string(k) + "]";
    if (!t.is_object() || !t.contains("id") || !t["id"].is_number_integer() || !t.contains("content") ||
        !t["content"].is_string())
      throw Error(field + ": needs an integer \"id\" and a string \"content\"");
    AddedToken a;
    a.id = t["id"].get<int>();
    a.content = t["content"].get<std::string>();
    a.special = t.value("special", false);
    a.normalized = t.value("normalized", !a.special);
    if (a.id < 0) throw Error(field + ": negative id");
    if (a.content.empty()) throw Error(field + ": empty content");
    require_utf8(a.content, field + ".content");
    // These change how a match extends into the surrounding text; DeepSeek's tokens use none.
    for (const char* flag : {"lstrip", "rstrip", "single_word"})
      if (t.value(flag, false)) throw Error(field + ": \"" + flag + "\" is not supported");
    (a.normalized ? at.normalized_ : at.raw_).add(a.content, a.id);
    at.tokens_.push_back(std::move(a));
  }
  return at;
}

void AddedTokens::split(std::string_view text, std::vector<Segment>& out) const {
  out.clear();
  if (raw_.empty() && normalized_.empty()) {
    if (!text.empty()) out.push_back({0, uint32_t(text.size()), -1});
    return;
  }
  std::vector<Segment> first;
  raw_.split(text, 0, first);
  for (const Segment& s : first) {
    if (s.id >= 0) out.push_back(s);
    else normalized_.split(text.substr(s.begin, s.end - s.begin), s.begin, out);
  }
}

}  // namespace epserve::tokenizer
