// One sequence's MLA cache, contiguous: per layer, per token, the normalized KV latent ĉ
// (kv_lora_rank) followed by the rotated shared key k_rope (qk_rope_head_dim). In DeepSeek numerics
// the values are BF16-rounded (the cache is BF16 there). The paged pool for serving is separate.
#pragma once
#include <span>
#include <vector>

#include "model/config.h"

namespace epserve::model {

class SequenceKv {
 public:
  explicit SequenceKv(const ModelConfig& c)
      : width_(c.kv_lora_rank + c.qk_rope_head_dim), layers_(c.num_hidden_layers) {}
  int length() const { return length_; }
  int width() const { return width_; }
  // Rows [0, length) of layer `l`, [length, width].
  std::span<const float> layer(int l) const { return layers_[l]; }
  std::span<float> row(int l, int pos) { return std::span<float>(layers_[l]).subspan(size_t(pos) * width_, width_); }
  // Makes room for `n` more tokens in every layer (the forward fills the rows, then commits).
  void grow(int n) {
    for (auto& v : layers_) v.resize(size_t(length_ + n) * width_);
  }
  void commit(int n) { length_ += n; }
  void truncate(int n) {
    length_ = n;
    for (auto& v : layers_) v.resize(size_t(n) * width_);
  }

 private:
  int width_;
  int length_ = 0;
  std::vector<std::vector<float>> layers_;
};

}  // namespace epserve::model
