#include "model/kv_cache.h"

#include <cstring>

namespace epserve::model {

KvBlockPool::KvBlockPool(const ModelConfig& c, KvDtype dtype, int max_blocks)
    : dtype_(dtype), width_(c.kv_lora_rank + c.qk_rope_head_dim), layers_(c.num_hidden_layers),
      max_blocks_(max_blocks), storage_(c.num_hidden_layers) {
  EPS_REQUIRE(max_blocks >= 0, "KV pool: max_blocks must be >= 0");
  if (max_blocks_ > 0) {
    for (auto& s : storage_) s.resize(size_t(max_blocks_) * block_layer_bytes());
    refs_.assign(max_blocks_, 0);
    for (int b = max_blocks_ - 1; b >= 0; --b) free_.push_back(b);
  }
}

int KvBlockPool::allocate() {
  if (free_.empty()) {
    if (max_blocks_ > 0) return -1;
    // Unlimited pool: grow by half again (rows move; callers keep block ids, never pointers).
    const int old = int(refs_.size()), grown = std::max(16, old + old / 2);
    for (auto& s : storage_) s.resize(size_t(grown) * block_layer_bytes());
    refs_.resize(grown, 0);
    for (int b = grown - 1; b >= old; --b) free_.push_back(b);
  }
  const int b = free_.back();
  free_.pop_back();
  refs_[b] = 1;
  ++used_;
  return b;
}

void KvBlockPool::add_ref(int block) {
  EPS_REQUIRE(block >= 0 && block < int(refs_.size()) && refs_[block] > 0, "KV pool: add_ref of a free block");
  ++refs_[block];
}

void KvBlockPool::release(int block) {
  EPS_REQUIRE(block >= 0 && block < int(refs_.size()) && refs_[block] > 0, "KV pool: release of a free block");
  if (--refs_[block] == 0) {
    free_.push_back(block);
    --used_;
  }
}

std::span<uint8_t> KvBlockPool::block_bytes(int layer, int block) {
  return std::span<uint8_t>(storage_.at(layer)).subspan(size_t(block) * block_layer_bytes(), block_layer_bytes());
}

std::span<const uint8_t> KvBlockPool::block_bytes(int layer, int block) const {
  return std::span<const uint8_t>(storage_.at(layer)).subspan(size_t(block) * block_layer_bytes(), block_layer_bytes());
}

SequenceKv& SequenceKv::operator=(SequenceKv&& o) noexcept {
  if (this != &o) {
    release_all();
    pool_ = o.pool_;
    blocks_ = std::move(o.blocks_);
    length_ = o.length_;
    o.blocks_.clear();
  }
  return *this;
}

void SequenceKv::release_all() {
  for (int b : blocks_) pool_->release(b);
  blocks_.clear();
  length_ = 0;
}

void SequenceKv::adopt_prefix(std::span<const int> full_blocks) {
  EPS_REQUIRE(length_ == 0 && blocks_.empty(), "adopt_prefix: the sequence is not empty");
  for (int b : full_blocks) {
    pool_->add_ref(b);
    blocks_.push_back(b);
  }
  length_ = int(full_blocks.size()) * kKvBlockTokens;
}

void SequenceKv::grow(int n) {
  const int need = (length_ + n + kKvBlockTokens - 1) / kKvBlockTokens;
  std::vector<int> fresh;
  while (int(blocks_.size() + fresh.size()) < need) {
    const int b = pool_->allocate();
    if (b < 0) {
      for (int f : fresh) pool_->release(f);
      throw KvPoolFull();
    }
    fresh.push_back(b);
  }
  blocks_.insert(blocks_.end(), fresh.begin(), fresh.end());
}

void SequenceKv::truncate(int n) {
  EPS_REQUIRE(n >= 0 && n <= length_, "truncate: bad length");
  const int keep = (n + kKvBlockTokens - 1) / kKvBlockTokens;
  while (int(blocks_.size()) > keep) {
    pool_->release(blocks_.back());
    blocks_.pop_back();
  }
  length_ = n;
}

void SequenceKv::write_row(int layer, int pos, std::span<const float> row) {
  auto bytes = pool_->block_bytes(layer, blocks_.at(pos / kKvBlockTokens));
  const int w = width(), off = pos % kKvBlockTokens;
  if (pool_->dtype() == KvDtype::kF32) {
    std::memcpy(bytes.data() + size_t(off) * w * 4, row.data(), size_t(w) * 4);
  } else {
    auto* dst = reinterpret_cast<bf16*>(bytes.data()) + size_t(off) * w;
    for (int i = 0; i < w; ++i) dst[i] = float_to_bf16(row[i]);
  }
}

void SequenceKv::read_rows(int layer, int begin, int end, std::span<float> out) const {
  const int w = width();
  for (int pos = begin; pos < end; ++pos) {
    float* dst = &out[size_t(pos - begin) * w];
    if (const float* src = row_f32(layer, pos)) {
      std::memcpy(dst, src, size_t(w) * 4);
    } else {
      const bf16* b = row_bf16(layer, pos);
      for (int i = 0; i < w; ++i) dst[i] = bf16_to_float(b[i]);
    }
  }
}

const float* SequenceKv::row_f32(int layer, int pos) const {
  if (pool_->dtype() != KvDtype::kF32) return nullptr;
  const auto bytes = std::as_const(*pool_).block_bytes(layer, blocks_[pos / kKvBlockTokens]);
  return reinterpret_cast<const float*>(bytes.data()) + size_t(pos % kKvBlockTokens) * width();
}

const bf16* SequenceKv::row_bf16(int layer, int pos) const {
  if (pool_->dtype() != KvDtype::kBf16) return nullptr;
  const auto bytes = std::as_const(*pool_).block_bytes(layer, blocks_[pos / kKvBlockTokens]);
  return reinterpret_cast<const bf16*>(bytes.data()) + size_t(pos % kKvBlockTokens) * width();
}

}  // namespace epserve::model
