#include "tokenizer/bpe.h"

#include <algorithm>
#include <queue>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "tokenizer/byte_level.h"

namespace epserve::tokenizer {
namespace {

inline uint64_t pair_key(int a, int b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }

inline uint64_t mix(uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdull;
  k ^= k >> 33;
  return k;
}

// Words longer than this are encoded but not cached: they are rare and would bloat the cache.
constexpr size_t kMaxCachedWord = 256;
// The cache is emptied when it grows past this many words (bounded memory for a server).
constexpr size_t kMaxCachedWords = 1 << 18;

}  // namespace

void Bpe::MergeTable::build(const std::vector<std::pair<uint64_t, std::pair<int, int>>>& entries) {
  size_t cap = 16;
  while (cap < entries.size() * 2) cap <<= 1;
  slots.assign(cap, Slot{});
  mask = cap - 1;
  for (const auto& [key, value] : entries) {
    uint64_t h = mix(key) & mask;
    while (slots[h].key != ~0ull && slots[h].key != key) h = (h + 1) & mask;
    // A pair listed twice keeps its last rank, as HF's merge map (built by insertion) does.
    slots[h] = Slot{key, value.first, value.second};
  }
}

const Bpe::MergeTable::Slot* Bpe::MergeTable::find(int a, int b) const {
  const uint64_t key = pair_key(a, b);
  uint64_t h = mix(key) & mask;
  while (true) {
    const Slot& s = slots[h];
    if (s.key == key) return &s;
    if (s.key == ~0ull) return nullptr;
    h = (h + 1) & mask;
  }
}

Bpe Bpe::from_json(const nlohmann::json& m, const std::string& where) {
  if (!m.is_object()) throw Error(where + ": \"model\" must be an object");
  if (m.value("type", std::string("BPE")) != "BPE")
    throw Error(where + ": model type \"" + m["type"].get<std::string>() + "\" is not supported (only BPE)");
  for (const char* field : {"dropout", "continuing_subword_prefix", "end_of_word_suffix", "unk_token"})
    if (m.contains(field) && !m[field].is_null())
      throw Error(where + ": model." + field + " is set; only plain byte-level BPE is supported");
  if (m.value("byte_fallback", false)) throw Error(where + ": model.byte_fallback is not supported");

  Bpe bpe;
  bpe.ignore_merges_ = m.value("ignore_merges", false);
  if (!m.contains("vocab") || !m["vocab"].is_object()) throw Error(where + ": model.vocab missing or not an object");
  int max_id = -1;
  for (const auto& [token, id] : m["vocab"].items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > (1 << 30))
      throw Error(where + ": model.vocab[\"" + token + "\"] is not a valid id");
    bpe.vocab_.emplace(token, id.get<int>());
    max_id = std::max(max_id, id.get<int>());
  }
  bpe.tokens_.resize(max_id + 1);
  for (const auto& [token, id] : bpe.vocab_) bpe.tokens_[id] = token;

  bpe.byte_id_.assign(256, -1);
  for (int b = 0; b < 256; ++b)
    if (auto it = bpe.vocab_.find(byte_symbol(uint8_t(b))); it != bpe.vocab_.end()) bpe.byte_id_[b] = it->second;

  if (!m.contains("merges") || !m["merges"].is_array()) throw Error(where + ": model.merges missing or not an array");
  const auto& merges = m["merges"];
  std::vector<std::pair<uint64_t, std::pair<int, int>>> entries;
  entries.reserve(merges.size());
  std::string a, b;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& e = merges[rank];
    // Two formats: "a b" (older files) and ["a", "b"].
    if (e.is_string()) {
      const std::string& s = e.get_ref<const std::string&>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
        throw Error(where + ": model.merges[" + std::to_string(rank) + "] is not \"a b\"");
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      a = e[0].get<std::string>();
      b = e[1].get<std::string>();
    } else {
      throw Error(where + ": model.merges[" + std::to_string(rank) + "] is neither \"a b\" nor [a, b]");
    }
    const auto ia = bpe.vocab_.find(a), ib = bpe.vocab_.find(b), iab = bpe.vocab_.find(a + b);
    if (ia == bpe.vocab_.end() || ib == bpe.vocab_.end() || iab == bpe.vocab_.end())
      throw Error(where + ": model.merges[" + std::to_string(rank) + "] uses a token missing from the vocab");
    entries.push_back({pair_key(ia->second, ib->second), {int(rank), iab->second}});
  }
  bpe.merges_.build(entries);
  return bpe;
}

std::optional<int> Bpe::token_id(std::string_view token) const {
  const auto it = vocab_.find(std::string(token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

void Bpe::merge(std::string_view bytes, std::vector<int>& out) const {
  // HF's Word::merge_all, step for step: a heap of candidate merges ordered by (rank, position),
  // symbols in a linked list, stale heap entries recognised when popped.
  struct Symbol {
    int id;
    int prev, next;
    bool alive;
  };
  std::vector<Symbol> sym;
  sym.reserve(bytes.size());
  for (unsigned char c : bytes) {
    const int id = byte_id_[c];
    if (id < 0) continue;  // HF drops characters missing from the vocab when there is no unk
    const int k = int(sym.size());
    sym.push_back({id, k - 1, k + 1, true});
  }
  if (sym.empty()) return;
  sym.back().next = -1;

  if (ignore_merges_) {
    std::string chars;
    for (unsigned char c : bytes) chars += byte_symbol(c);
    if (auto it = vocab_.find(chars); it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }

  struct Cand {
    int rank, pos, id;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::vector<Cand> storage;
  storage.reserve(sym.size());
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap(std::greater<Cand>{}, std::move(storage));
  for (size_t i = 0; i + 1 < sym.size(); ++i)
    if (const auto* m = merges_.find(sym[i].id, sym[i + 1].id)) heap.push({m->rank, int(i), m->id});

  while (!heap.empty()) {
    const Cand top = heap.top();
    heap.pop();
    Symbol& left = sym[top.pos];
    if (!left.alive || left.next < 0) continue;
    const int right_pos = left.next;
    const auto* m = merges_.find(left.id, sym[right_pos].id);
    if (!m || m->id != top.id) continue;  // stale: one side has merged since
    left.id = top.id;
    left.next = sym[right_pos].next;
    sym[right_pos].alive = false;
    if (left.next >= 0) sym[left.next].prev = top.pos;
    if (left.prev >= 0)
      if (const auto* p = merges_.find(sym[left.prev].id, left.id)) heap.push({p->rank, left.prev, p->id});
    if (left.next >= 0)
      if (const auto* n = merges_.find(left.id, sym[left.next].id)) heap.push({n->rank, top.pos, n->id});
  }
  for (const auto& s : sym)
    if (s.alive) out.push_back(s.id);
}

void Bpe::encode_word(std::string_view word, bool prefix_space, std::vector<int>& out) const {
  std::string spaced;
  if (prefix_space) {
    spaced.reserve(word.size() + 1);
    spaced += ' ';
    spaced += word;
    word = spaced;
  }
  if (word.size() == 1 && byte_id_[static_cast<unsigned char>(word[0])] >= 0) {
    out.push_back(byte_id_[static_cast<unsigned char>(word[0])]);  // one byte: nothing to merge
    return;
  }
  const bool cacheable = word.size() <= kMaxCachedWord;
  std::string key;
  if (cacheable) {
    key.assign(word);
    std::lock_guard lock(cache_->mutex);
    if (auto it = cache_->words.find(key); it != cache_->words.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t start = out.size();
  merge(word, out);
  if (cacheable) {
    std::vector<int> ids(out.begin() + start, out.end());
    std::lock_guard lock(cache_->mutex);
    if (cache_->words.size() >= kMaxCachedWords) cache_->words.clear();
    cache_->words.emplace(std::move(key), std::move(ids));
  }
}

}  // namespace epserve::tokenizer
