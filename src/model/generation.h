// Offline generation for a batch of prompts: one forward prefills every prompt, then each step
// decodes one token for every sequence still running. Used by `run`, `bench` and the tests.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "model/model.h"
#include "model/sampler.h"

namespace epserve::model {

struct GenerationRequest {
  std::vector<int> prompt;
  int max_tokens = 16;
  SamplingParams sampling;
  uint64_t seed = 0;
  bool stop_at_eos = true;
};

struct GenerationResult {
  std::vector<int> tokens;
  // The logits row each token was chosen from (vocab floats per token), when asked for.
  std::vector<float> logits;
};

struct GenerationTimings {
  double prefill_s = 0, decode_s = 0;
  long prefill_tokens = 0, decode_tokens = 0, decode_steps = 0;
  std::vector<double> decode_step_s;  // each decode step's wall time (the first carries one-time costs)
};

// Across the ranks of a unit each rank passes its own requests (maybe none) and a `sync` that
// tells whether any rank still has a live sequence (an all-reduce); ranks then step in lockstep,
// with empty batches where they have nothing left. Alone, the default `sync` is the identity.
using LiveSync = std::function<bool(bool local_live)>;

std::vector<GenerationResult> generate(Model& model, std::span<const GenerationRequest> requests,
                                       const ForwardOptions& options, bool keep_logits,
                                       GenerationTimings* timings = nullptr, const LiveSync& sync = {});

}  // namespace epserve::model
