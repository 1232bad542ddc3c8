// The disk tier of the KV cache: full blocks written through to a directory (one file per block,
// named by its chained hash), so that a later request, also after a restart, loads a cached prefix
// instead of recomputing it. Writes go through a background thread, off the model step. Each file
// carries the model identity, the block's hash and tokens and a checksum of everything; a file that
// fails any check (corrupt, truncated, foreign) is a miss and is removed. The directory has a
// capacity; the least recently used files go first. A directory that cannot be written (full disk,
// no permission) turns the tier off with a warning: caching continues in RAM.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <list>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "kvcache/block_hash.h"

namespace epserve::kvcache {

struct DiskTierOptions {
  std::filesystem::path dir;
  uint64_t capacity_bytes = 10ull << 30;
  uint64_t model_id = 0;
  int block_tokens = 64;
  size_t payload_bytes = 0;  // one block, all layers
  size_t max_queued_writes = 256;  // past this, write-through drops blocks rather than stall a step
  std::function<void(const std::string& event, const std::string& detail)> warn;  // may be empty
};

struct DiskTierStats {
  uint64_t hits = 0, misses = 0, corrupt = 0, writes = 0, write_errors = 0, dropped_writes = 0, evictions = 0;
  uint64_t files = 0, bytes = 0;
  bool enabled = false;
};

class DiskTier {
 public:
  explicit DiskTier(DiskTierOptions options);
  ~DiskTier();  // writes what is queued, then stops
  DiskTier(const DiskTier&) = delete;
  DiskTier& operator=(const DiskTier&) = delete;

  bool enabled() const;
  // Queues a block for writing (copies nothing more: payload is moved in). No-op when disabled or
  // already on disk.
  void store(BlockHash h, std::span<const int> tokens, std::vector<uint8_t> payload);
  bool contains(BlockHash h) const;
  // The block's payload when its file is present and passes every check; a bad file is removed.
  std::optional<std::vector<uint8_t>> load(BlockHash h, std::span<const int> tokens);
  // Returns once every queued write is on disk (SIGTERM drain).
  void flush();
  DiskTierStats stats() const;
  std::filesystem::path file_of(BlockHash h) const;

 private:
  struct Pending {
    BlockHash hash;
    std::vector<int> tokens;
    std::vector<uint8_t> payload;
  };
  void writer_loop();
  bool write_file(const Pending& p);
  void disable(const std::string& why);
  void touch_locked(BlockHash h, uint64_t bytes);
  void evict_locked();
  void scan();
  size_t file_bytes() const;

  DiskTierOptions o_;
  mutable std::mutex mu_;
  std::condition_variable cv_, idle_cv_;
  std::deque<Pending> queue_;
  bool writing_ = false, stop_ = false, enabled_ = false;
  std::list<BlockHash> lru_;  // front: most recent
  struct FileEntry {
    uint64_t bytes;
    std::list<BlockHash>::iterator lru;
  };
  std::unordered_map<BlockHash, FileEntry> files_;
  DiskTierStats stats_;
  std::thread writer_;
};

}  // namespace epserve::kvcache
