#include "model/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>

#include "base/error.h"
#include <vector>

namespace epserve::model {

int argmax(std::span<const float> logits) {
  return int(std::max_element(logits.begin(), logits.end()) - logits.begin());  // first of equals
}

std::string Sampler::state() const {
  std::ostringstream o;
  o << rng_;
  return o.str();
}

Sampler Sampler::from_state(const std::string& state) {
  Sampler s(0);
  std::istringstream in(state);
  in >> s.rng_;
  EPS_REQUIRE(!in.fail(), "bad sampler state");
  return s;
}

int Sampler::sample(std::span<const float> logits, const SamplingParams& p) {
  if (p.temperature <= 0) return argmax(logits);
  const float mx = *std::max_element(logits.begin(), logits.end());
  std::vector<double> prob(logits.size());
  double sum = 0;
  for (size_t i = 0; i < logits.size(); ++i) sum += prob[i] = std::exp((logits[i] - mx) / p.temperature);
  std::vector<int> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  size_t keep = order.size();
  if (p.top_p < 1) {
    std::sort(order.begin(), order.end(), [&](int a, int b) { return prob[a] > prob[b] || (prob[a] == prob[b] && a < b); });
    double mass = 0;
    for (keep = 0; keep < order.size();) {
      mass += prob[order[keep++]] / sum;
      if (mass >= p.top_p) break;
    }
  }
  double total = 0;
  for (size_t i = 0; i < keep; ++i) total += prob[order[i]];
  double u = std::uniform_real_distribution<double>(0, total)(rng_);
  for (size_t i = 0; i < keep; ++i) {
    u -= prob[order[i]];
    if (u <= 0) return order[i];
  }
  return order[keep - 1];
}

}  // namespace epserve::model
