// Byte-level BPE (HF tokenizers' BPE model under a ByteLevel pre-tokenizer): a word's bytes start
// as one symbol each, and adjacent pairs are merged lowest merge rank first, leftmost first on
// ties, until no pair has a rank. Words repeat a lot in real text, so results are cached per word.
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace epserve::tokenizer {

class Bpe {
 public:
  // From the "model" object of tokenizer.json; `where` names the file in error messages.
  static Bpe from_json(const nlohmann::json& model, const std::string& where);

  // Appends the ids of one word: its bytes, with a space in front when prefix_space is set.
  // Thread-safe (the cache is shared under a mutex).
  void encode_word(std::string_view word, bool prefix_space, std::vector<int>& out) const;

  // The vocabulary (byte-level strings), indexed by id; ids missing from it are empty.
  const std::vector<std::string>& tokens() const { return tokens_; }
  std::optional<int> token_id(std::string_view token) const;

 private:
  // Open-addressing table from a pair of ids to (rank, merged id): the hot lookup of encoding.
  struct MergeTable {
    struct Slot {
      uint64_t key = ~0ull;
      int32_t rank = 0, id = 0;
    };
    std::vector<Slot> slots;
    uint64_t mask = 0;
    void build(const std::vector<std::pair<uint64_t, std::pair<int, int>>>& entries);
    const Slot* find(int a, int b) const;
  };
  void merge(std::string_view bytes, std::vector<int>& out) const;

  std::unordered_map<std::string, int> vocab_;
  std::vector<std::string> tokens_;
  std::vector<int> byte_id_;  // id of each byte's one-character token, or -1
  MergeTable merges_;
  bool ignore_merges_ = false;

  struct Cache {
    std::mutex mutex;
    std::unordered_map<std::string, std::vector<int>> words;
  };
  std::shared_ptr<Cache> cache_ = std::make_shared<Cache>();
};

}  // namespace epserve::tokenizer
