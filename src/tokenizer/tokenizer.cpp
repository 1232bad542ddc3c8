#include "tokenizer/tokenizer.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "base/json_file.h"
#include "base/error.h"
#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/utf8.h"

namespace epserve::tokenizer {

std::filesystem::path default_tokenizer_dir() {
  std::filesystem::path cache;
  if (const char* c = std::getenv("EPSERVE_CACHE"); c && *c) {
    cache = c;
  } else {
    const char* home = std::getenv("HOME");
    cache = std::filesystem::path(home && *home ? home : ".") / ".cache" / "epserve";
  }
  return cache / "tokenizer" / "deepseek-v3";
}

struct Tokenizer::Impl {
  AddedTokens added;
  PreTokenizer pre;
  Bpe bpe;
  std::vector<std::string> bytes;  // by id: what the token decodes to
  std::vector<char> kind;          // by id: 0 unknown, 1 vocabulary, 2 added, 3 special
};

namespace {

// HF's normalizers other than "do nothing" are not implemented: DeepSeek-V3 has an empty Sequence.
void check_normalizer(const nlohmann::json& j, const std::string& where) {
  if (j.is_null()) return;
  if (j.is_object() && j.value("type", std::string()) == "Sequence" && j.contains("normalizers") &&
      j["normalizers"].is_array()) {
    for (const auto& sub : j["normalizers"]) check_normalizer(sub, where);
    return;
  }
  throw Error(where + ": normalizer " + j.dump().substr(0, 80) + " is not supported");
}

bool has_byte_level(const nlohmann::json& j) {
  if (!j.is_object()) return false;
  if (j.value("type", std::string()) == "ByteLevel") return true;
  if (j.contains("pretokenizers") && j["pretokenizers"].is_array())
    for (const auto& sub : j["pretokenizers"])
      if (has_byte_level(sub)) return true;
  return false;
}

}  // namespace

Tokenizer Tokenizer::load(const std::filesystem::path& model_dir) { return from_file(model_dir / "tokenizer.json"); }

Tokenizer Tokenizer::from_file(const std::filesystem::path& path) {
  const std::string where = path.string();
  const nlohmann::json j = read_json_file(path, "no tokenizer.json there?");
  try {
    auto impl = std::make_shared<Impl>();
    check_normalizer(j.value("normalizer", nlohmann::json()), where);
    const auto& pre = j.value("pre_tokenizer", nlohmann::json());
    // The BPE below works on bytes; that is only right when a ByteLevel step maps text to bytes.
    if (!has_byte_level(pre)) throw Error(where + ": pre_tokenizer has no ByteLevel step (only byte-level BPE is supported)");
    impl->pre = PreTokenizer::from_json(pre, where);
    if (!j.contains("model")) throw Error(where + ": no \"model\"");
    impl->bpe = Bpe::from_json(j["model"], where);
    impl->added = AddedTokens::from_json(j.value("added_tokens", nlohmann::json()), where);
    const auto& dec = j.value("decoder", nlohmann::json());
    if (!dec.is_object() || dec.value("type", std::string()) != "ByteLevel")
      throw Error(where + ": decoder " + dec.dump().substr(0, 80) + " is not supported (only ByteLevel)");

    size_t n = impl->bpe.tokens().size();
    for (const auto& a : impl->added.tokens()) n = std::max(n, size_t(a.id) + 1);
    impl->bytes.resize(n);
    impl->kind.assign(n, 0);
    for (size_t id = 0; id < impl->bpe.tokens().size(); ++id) {
      const auto& t = impl->bpe.tokens()[id];
      if (t.empty()) continue;
      impl->bytes[id] = byte_level_decode_token(t);
      impl->kind[id] = 1;
    }
    // An added token decodes from its content (HF looks ids up in the added vocabulary first).
    for (const auto& a : impl->added.tokens()) {
      impl->bytes[a.id] = byte_level_decode_token(a.content);
      impl->kind[a.id] = a.special ? 3 : 2;
    }
    Tokenizer t;
    t.impl_ = std::move(impl);
    return t;
  } catch (const nlohmann::json::exception& e) {
    throw Error(where + ": unexpected structure: " + e.what());
  }
}

void Tokenizer::encode_append(std::string_view text, std::vector<int>& out) const {
  require_utf8(text, "text to encode");
  std::vector<Segment> segments;
  std::vector<Piece> pieces;
  impl_->added.split(text, segments);
  for (const Segment& s : segments) {
    if (s.id >= 0) {
      out.push_back(s.id);
      continue;
    }
    const std::string_view part = text.substr(s.begin, s.end - s.begin);
    pieces.clear();
    impl_->pre.split(part, pieces);
    for (const Piece& p : pieces) impl_->bpe.encode_word(part.substr(p.begin, p.end - p.begin), p.prefix_space, out);
  }
}

std::vector<int> Tokenizer::encode(std::string_view text) const {
  std::vector<int> out;
  out.reserve(text.size() / 3 + 4);
  encode_append(text, out);
  return out;
}

bool Tokenizer::is_known(int id) const { return id >= 0 && size_t(id) < impl_->kind.size() && impl_->kind[id] != 0; }

bool Tokenizer::is_special(int id) const { return is_known(id) && impl_->kind[id] == 3; }

const std::string& Tokenizer::token_bytes(int id) const {
  if (!is_known(id)) throw Error("unknown token id " + std::to_string(id) + " (vocabulary has " +
                                 std::to_string(vocab_size()) + " ids)");
  return impl_->bytes[id];
}

std::string Tokenizer::decode(std::span<const int> ids, bool skip_special_tokens) const {
  std::string bytes;
  for (int id : ids) {
    const std::string& b = token_bytes(id);
    if (skip_special_tokens && impl_->kind[id] == 3) continue;
    bytes += b;
  }
  return utf8_lossy(bytes);
}

int Tokenizer::vocab_size() const { return int(impl_->kind.size()); }

std::optional<int> Tokenizer::token_id(std::string_view token) const {
  for (const auto& a : impl_->added.tokens())
    if (a.content == token) return a.id;
  return impl_->bpe.token_id(token);
}

}  // namespace epserve::tokenizer
