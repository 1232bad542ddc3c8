// The MLA cache in fixed-size blocks (64 tokens, as FlashMLA pages it). Per token and layer a row
// holds the normalized KV latent ĉ (kv_lora_rank) and the rotated shared key (qk_rope_head_dim).
// A pool owns the blocks; a sequence holds a block table into it. Blocks are reference-counted so
// that equal prompt prefixes can share them (the server's prefix cache); only full blocks are ever
// shared, and a sequence appends into fresh blocks of its own.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "base/bf16.h"
#include "base/error.h"
#include "model/config.h"

namespace epserve::model {

constexpr int kKvBlockTokens = 64;

// FP32 rows for exact numerics (the FP64 comparison needs them); BF16 rows as DeepSeek serves.
enum class KvDtype { kF32, kBf16 };

class KvPoolFull : public Error {
 public:
  KvPoolFull() : Error("KV cache pool is full") {}
};

class KvBlockPool {
 public:
  // max_blocks 0: grows without limit (offline runs).
  KvBlockPool(const ModelConfig& c, KvDtype dtype, int max_blocks = 0);
  KvBlockPool(const KvBlockPool&) = delete;
  KvBlockPool& operator=(const KvBlockPool&) = delete;

  int allocate();  // a block with reference count 1, or -1 when the pool is full
  void add_ref(int block);
  void release(int block);  // freed when its count reaches 0
  int ref_count(int block) const { return refs_.at(block); }
  int used_blocks() const { return used_; }
  int free_blocks() const { return max_blocks_ ? max_blocks_ - used_ : 1 << 30; }
  int capacity() const { return max_blocks_; }

  KvDtype dtype() const { return dtype_; }
  int width() const { return width_; }
  int layers() const { return layers_; }
  size_t element_bytes() const { return dtype_ == KvDtype::kF32 ? 4 : 2; }
  size_t block_layer_bytes() const { return size_t(kKvBlockTokens) * width_ * element_bytes(); }
  // Raw rows of one block in one layer: 64 rows × width elements (float or bf16).
  std::span<uint8_t> block_bytes(int layer, int block);
  std::span<const uint8_t> block_bytes(int layer, int block) const;

 private:
  KvDtype dtype_;
  int width_, layers_, max_blocks_;
  int used_ = 0;
  std::vector<std::vector<uint8_t>> storage_;  // per layer: blocks × 64 × width elements
  std::vector<int> refs_;
  std::vector<int> free_;
};

class SequenceKv {
 public:
  explicit SequenceKv(KvBlockPool& pool) : pool_(&pool) {}
  ~SequenceKv() { release_all(); }
  SequenceKv(SequenceKv&& o) noexcept : pool_(o.pool_), blocks_(std::move(o.blocks_)), length_(o.length_) { o.blocks_.clear(); }
  SequenceKv& operator=(SequenceKv&& o) noexcept;
  SequenceKv(const SequenceKv&) = delete;
  SequenceKv& operator=(const SequenceKv&) = delete;

  int length() const { return length_; }
  int width() const { return pool_->width(); }
  const std::vector<int>& blocks() const { return blocks_; }
  KvBlockPool& pool() const { return *pool_; }

  // A prefix-cache hit: the sequence starts with these full blocks (shared, reference added).
  void adopt_prefix(std::span<const int> full_blocks);
  // Room for n more tokens; throws KvPoolFull when the pool runs out (nothing is taken then).
  void grow(int n);
  void commit(int n) { length_ += n; }
  void truncate(int n);

  // Row access for the attention: layer l, absolute position pos (< capacity after grow).
  void write_row(int layer, int pos, std::span<const float> row);
  // Rows [begin, end) of layer l as FP32, [end - begin, width].
  void read_rows(int layer, int begin, int end, std::span<float> out) const;
  // FP32 pointer to a row when the pool is FP32 (no copy), else nullptr.
  const float* row_f32(int layer, int pos) const;
  const bf16* row_bf16(int layer, int pos) const;

 private:
  void release_all();
  KvBlockPool* pool_;
  std::vector<int> blocks_;
  int length_ = 0;
};

}  // namespace epserve::model
