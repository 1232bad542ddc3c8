// The RAM prefix cache: full KV blocks in the pool, found by their chained hash (block_hash.h). The
// index holds one reference to each block it names; a sequence that hits adds its own. Blocks that
// only the index still holds are evicted least recently used first when the pool needs room.
#pragma once
#include <list>
#include <span>
#include <unordered_map>
#include <vector>

#include "kvcache/block_hash.h"
#include "model/kv_cache.h"

namespace epserve::kvcache {

class PrefixIndex {
 public:
  explicit PrefixIndex(model::KvBlockPool& pool) : pool_(&pool) {}
  ~PrefixIndex();
  PrefixIndex(const PrefixIndex&) = delete;
  PrefixIndex& operator=(const PrefixIndex&) = delete;

  // Blocks for the longest run of `hashes` from the first that the index holds (marked used).
  std::vector<int> match(std::span<const BlockHash> hashes);
  bool contains(BlockHash h) const { return map_.count(h) > 0; }
  // Names `block` by `h` (the index takes a reference). False when h is already named.
  bool insert(BlockHash h, int block);
  // Frees up to n blocks that nobody but the index holds, least recently used first.
  int evict(int n);
  // Blocks held by the index alone (what evict could free now).
  int evictable() const;
  int size() const { return int(map_.size()); }

 private:
  struct Entry {
    int block;
    std::list<BlockHash>::iterator lru;  // front: most recently used
  };
  model::KvBlockPool* pool_;
  std::list<BlockHash> lru_;
  std::unordered_map<BlockHash, Entry> map_;
};

}  // namespace epserve::kvcache
