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
  // The rotation for absolute position `pos` (0-based): cos and sin of each frequency's angle
  // (qk_rope_head_dim / 2 of each), computed once for every vector at that position (the shared
  // key and each head's query: one sin and cos per head took 2.2 ms per layer of a 2,048-token
  // prefill on the bench model).
  void angles(int pos, std::span<float> cos, std::span<float> sin) const;
  // Rotates x (qk_rope_head_dim values) in place by the rotation angles() gave.
  void rotate(std::span<float> x, std::span<const float> cos, std::span<const float> sin) const;
  const std::vector<float>& frequencies() const { return freqs_; }

 private:
  std::vector<float> freqs_;  // f'_i, i < rope_dim / 2
};

}  // namespace epserve::model
