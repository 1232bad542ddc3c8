// Picks the next token from a row of logits: greedy at temperature 0 (ties to the lower id),
// otherwise softmax(logits / T) restricted to the smallest set whose mass reaches top_p, drawn with
// the caller's seeded generator so that runs repeat.
#pragma once
#include <cstdint>
#include <random>
#include <span>
#include <string>

namespace epserve::model {

struct SamplingParams {
  double temperature = 0;
  double top_p = 1;
};

class Sampler {
 public:
  explicit Sampler(uint64_t seed) : rng_(seed) {}
  int sample(std::span<const float> logits, const SamplingParams& p);
  // The generator's state as text, and a sampler that goes on from it: a request that moves to
  // another unit draws the same numbers it would have drawn where it began.
  std::string state() const;
  static Sampler from_state(const std::string& state);

 private:
  std::mt19937_64 rng_;
};

int argmax(std::span<const float> logits);

}  // namespace epserve::model
