#include "kvcache/prefix_index.h"

namespace epserve::kvcache {

PrefixIndex::~PrefixIndex() {
  for (auto& [h, e] : map_) pool_->release(e.block);
}

std::vector<int> PrefixIndex::match(std::span<const BlockHash> hashes) {
  std::vector<int> blocks;
  for (BlockHash h : hashes) {
    auto it = map_.find(h);
    if (it == map_.end()) break;
    blocks.push_back(it->second.block);
  }
  // Touch the last first, so that a chain's first blocks are the most recent: evicting from the
  // tail then takes a chain's ends before its starts (a start without its end still hits).
  for (size_t i = blocks.size(); i-- > 0;) {
    auto& e = map_[hashes[i]];
    lru_.splice(lru_.begin(), lru_, e.lru);
  }
  return blocks;
}

bool PrefixIndex::insert(BlockHash h, int block) {
  if (map_.count(h)) return false;
  pool_->add_ref(block);
  lru_.push_front(h);
  map_[h] = {block, lru_.begin()};
  return true;
}

int PrefixIndex::evict(int n) {
  int freed = 0;
  for (auto it = lru_.end(); it != lru_.begin() && freed < n;) {
    --it;
    auto e = map_.find(*it);
    if (pool_->ref_count(e->second.block) != 1) continue;  // a running sequence holds it
    pool_->release(e->second.block);
    map_.erase(e);
    it = lru_.erase(it);
    ++freed;
  }
  return freed;
}

int PrefixIndex::evictable() const {
  int n = 0;
  for (const auto& [h, e] : map_) n += pool_->ref_count(e.block) == 1;
  return n;
}

}  // namespace epserve::kvcache
