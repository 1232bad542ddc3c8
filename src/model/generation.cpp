#include "model/generation.h"

#include <chrono>

#include "base/error.h"

namespace epserve::model {

std::vector<GenerationResult> generate(Model& model, std::span<const GenerationRequest> requests,
                                       const ForwardOptions& options, bool keep_logits, GenerationTimings* timings,
                                       const LiveSync& sync) {
  const int vocab = model.config().vocab_size;
  const size_t n = requests.size();
  std::vector<GenerationResult> results(n);
  std::vector<SequenceKv> caches;
  std::vector<Sampler> samplers;
  for (const auto& r : requests) {
    EPS_REQUIRE(!r.prompt.empty(), "a prompt needs at least one token");
    EPS_REQUIRE(r.max_tokens >= 0, "max_tokens must be >= 0");
    caches.push_back(model.new_sequence());
    samplers.emplace_back(r.seed);
  }
  ForwardOptions last_only = options;
  last_only.all_logits = false;
  std::vector<int> live, next(n);
  auto choose = [&](size_t i, std::span<const float> row) {
    const int token = samplers[i].sample(row, requests[i].sampling);
    results[i].tokens.push_back(token);
    if (keep_logits) results[i].logits.insert(results[i].logits.end(), row.begin(), row.end());
    next[i] = token;
  };
  auto finished = [&](size_t i) {
    const auto& r = requests[i];
    return int(results[i].tokens.size()) >= r.max_tokens ||
           (r.stop_at_eos && !results[i].tokens.empty() && results[i].tokens.back() == model.config().eos_token_id);
  };
  using clock = std::chrono::steady_clock;
  auto t0 = clock::now();
  {
    std::vector<SequenceInput> batch;
    for (size_t i = 0; i < n; ++i) batch.push_back({&caches[i], requests[i].prompt});
    const auto logits = model.forward(batch, last_only);
    for (size_t i = 0; i < n; ++i) {
      if (timings) timings->prefill_tokens += long(requests[i].prompt.size());
      if (requests[i].max_tokens > 0) choose(i, std::span<const float>(logits).subspan(i * vocab, vocab));
      if (!finished(i)) live.push_back(int(i));
    }
  }
  auto t1 = clock::now();
  auto any_live = [&] { return sync ? sync(!live.empty()) : !live.empty(); };
  while (any_live()) {
    const auto step_start = clock::now();
    std::vector<SequenceInput> batch;
    for (int i : live) batch.push_back({&caches[i], std::span<const int>(&next[i], 1)});
    const auto logits = model.forward(batch, last_only);
    std::vector<int> still;
    for (size_t j = 0; j < live.size(); ++j) {
      choose(live[j], std::span<const float>(logits).subspan(j * vocab, vocab));
      if (!finished(live[j])) still.push_back(live[j]);
    }
    if (timings) {
      timings->decode_tokens += long(live.size());
      ++timings->decode_steps;
      timings->decode_step_s.push_back(std::chrono::duration<double>(clock::now() - step_start).count());
    }
    live = std::move(still);
  }
  auto t2 = clock::now();
  if (timings) {
    timings->prefill_s += std::chrono::duration<double>(t1 - t0).count();
    timings->decode_s += std::chrono::duration<double>(t2 - t1).count();
  }
  return results;
}

}  // namespace epserve::model
