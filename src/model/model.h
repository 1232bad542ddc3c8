// DeepSeek-V3's forward pass (reference §4) over a batch of sequences of different lengths, each
// with its own MLA cache.
#pragma once
#include <memory>
#include <span>
#include <vector>

#include "kernels/matmul.h"
#include "model/kv_cache.h"
#include "model/mla.h"
#include "model/moe.h"
#include "model/rope.h"
#include "model/weights.h"

namespace epserve::model {

struct ForwardOptions {
  kernels::Numerics numerics = kernels::Numerics::kDeepSeek;
  AttentionPath attention = AttentionPath::kAuto;
  bool all_logits = false;  // logits for every token, not only each sequence's last
  // When set, receives each MoE layer's routing (tokens in batch order), for tests and statistics.
  std::vector<Routing>* routing_log = nullptr;
};

// Seconds spent per part of the forward, summed over calls (for `bench` and step profiles).
struct ForwardProfile {
  double embed = 0, attention = 0, dense_mlp = 0, moe = 0, norms = 0, lm_head = 0;
  double total() const { return embed + attention + dense_mlp + moe + norms + lm_head; }
};

struct SequenceInput {
  SequenceKv* kv;
  std::span<const int> tokens;  // appended after the tokens the cache already holds
  // The attention path for these tokens (kAuto: ForwardOptions::attention). A server pins prompt
  // tokens to kNaive and generated ones to kAbsorbed, so that a token's cache rows and logits do not
  // depend on how its sequence was cut into steps (prefix hits, hand-offs, recompute).
  AttentionPath attention = AttentionPath::kAuto;
};

class Model {
 public:
  explicit Model(ModelWeights weights);
  const ModelConfig& config() const { return weights_.config; }
  const ModelWeights& weights() const { return weights_; }
  // A sequence whose cache lives in the model's own pool (FP32 rows, grows without limit); a server
  // makes its own bounded BF16 pool and builds SequenceKv on it.
  SequenceKv new_sequence() { return SequenceKv(default_pool_); }

  // Runs the tokens through the model, appending them to each sequence's cache. Returns logits,
  // [rows, vocab]: one row per sequence (its last token), or one per token with all_logits.
  std::vector<float> forward(std::span<const SequenceInput> batch, const ForwardOptions& options = {});

  ForwardProfile& profile() { return profile_; }
  // Where the routed experts run (default: here). The expert-parallel runner exchanges rows with
  // the other ranks of a unit; every rank must then call forward in lockstep (an empty batch too).
  void set_expert_runner(std::unique_ptr<ExpertRunner> runner) { runner_ = std::move(runner); }

 private:
  ModelWeights weights_;
  KvBlockPool default_pool_{weights_.config, KvDtype::kF32};
  std::unique_ptr<ExpertRunner> runner_ = std::make_unique<LocalExpertRunner>();
  YarnRope rope_;
  ForwardProfile profile_;
};

}  // namespace epserve::model
