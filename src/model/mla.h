// Multi-head latent attention (reference §5). Two mathematically equal paths:
// - naive (prefill): expand the cached latent into per-head keys and values with kv_b_proj, then
//   ordinary attention; cheaper when many queries share the expansion;
// - absorbed (decode): fold kv_b_proj into the query (q̃ = U_hᵀ q_nope) and the output (V_h õ) and
//   attend over the latent directly: MQA with one 576-wide key head and 512-wide values.
#pragma once
#include <span>
#include <vector>

#include "kernels/matmul.h"
#include "model/config.h"
#include "model/kv_cache.h"
#include "model/rope.h"
#include "model/weights.h"

namespace epserve::model {

enum class AttentionPath { kAuto, kNaive, kAbsorbed };

// The tokens of one forward, flattened: sequence s owns tokens [first[s], first[s] + count[s]), at
// positions kv[s]->length() + 0.. (its cache already holds the earlier tokens).
struct TokenBatch {
  std::vector<SequenceKv*> kv;
  std::vector<int> first, count;
  std::vector<AttentionPath> path;  // per sequence; kAuto (or none): the call's path
  std::vector<int> position;  // per token
  int tokens() const { return int(position.size()); }
};

// x: [T, hidden] (normalized input), out: [T, hidden]. Writes the new tokens' cache rows of `layer`.
void mla_attention(const AttentionWeights& w, const ModelConfig& c, const YarnRope& rope, int layer,
                   const TokenBatch& batch, std::span<const float> x, std::span<float> out,
                   kernels::Numerics mode, AttentionPath path);

}  // namespace epserve::model
