// Rotary position embedding with DeepSeek's YaRN frequencies (reference §6), applied to the
// qk_rope_head_dim part of queries and to the shared rotary key. Pairs are adjacent
// (x[2i], x[2i+1]) as in DeepSeek's model.py, not HF's half-split layout.
#pragma once
#include <span>
#include <vector>

#include "model/config.h"

namespace epserve::model {

class YarnRope {
 public:
  explicit YarnRope(const ModelConfig& c);
  // Rotates x (qk_rope_head_dim values) in place for absolute position `pos` (0-based).
  void apply(std::span<float> x, int pos) const;
  const std::vector<float>& frequencies() const { return freqs_; }

 private:
  std::vector<float> freqs_;  // f'_i, i < rope_dim / 2
};

}  // namespace epserve::model
