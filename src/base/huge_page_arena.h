#pragma once
// Grow-only storage for large, long-lived buffers (the weights as the kernels read them), in
// blocks backed by transparent huge pages: filling 1.7 GB of tiles took 5 s of 4 KB page faults on
// a PVM guest, a 2 MB page costs one fault instead of 512, and a stream over huge pages misses the
// TLB 512 times less. Blocks are never moved or freed before the arena.

#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <algorithm>
#include <cstdlib>
#include <string>
#include <memory>
#include <span>
#include <vector>

#include "base/error.h"

namespace epserve {

class HugePageArena {
 public:
  // `bytes` of uninitialized memory, 64-byte aligned, valid as long as the arena.
  std::span<uint8_t> allocate(size_t bytes) {
    if (bytes == 0) return {};  // (no block for nothing: builds whose kernels read no tiles)
    bytes = (bytes + 63) / 64 * 64;
    if (blocks_.empty() || used_ + bytes > size_) {
      size_ = std::max(kBlockBytes, (bytes + kPageBytes - 1) / kPageBytes * kPageBytes);
      void* p = std::aligned_alloc(kPageBytes, size_);
      EPS_REQUIRE(p != nullptr, "out of memory for " + std::to_string(size_ >> 20) + " MB of weights");
      ::madvise(p, size_, MADV_HUGEPAGE);  // (a hint: without THP the block is ordinary memory)
      blocks_.emplace_back(static_cast<uint8_t*>(p));
      used_ = 0;
    }
    uint8_t* out = blocks_.back().get() + used_;
    used_ += bytes;
    return {out, bytes};
  }

 private:
  static constexpr size_t kPageBytes = size_t(2) << 20;
  static constexpr size_t kBlockBytes = size_t(64) << 20;
  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  std::vector<std::unique_ptr<uint8_t, Free>> blocks_;
  size_t used_ = 0, size_ = 0;
};

}  // namespace epserve
