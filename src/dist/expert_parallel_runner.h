// Routed experts across the ranks of a unit (expert parallelism), per MoE layer:
// the home rank quantizes its tokens to FP8 (per token, per 128 channels) → dispatch: all-to-all of
// FP8 rows + scales + (token, expert) to the ranks owning the chosen experts → grouped expert GEMMs
// over all rows a rank received → combine: all-to-all of BF16 rows back, in the order they came.
// (Exact numerics move FP32 rows both ways.) Every rank must run every MoE layer, with an empty
// batch if it has no tokens: the exchanges are collective.
#pragma once
#include "dist/comm.h"
#include "dist/expert_placement.h"
#include "model/moe.h"

namespace epserve::dist {

struct ExchangeStats {
  long dispatch_bytes = 0, combine_bytes = 0;  // sent by this rank, to other ranks and itself
  double dispatch_s = 0, combine_s = 0, experts_s = 0;
  long layers = 0;
};

class ExpertParallelRunner : public model::ExpertRunner {
 public:
  ExpertParallelRunner(Comm& comm, ExpertPlacement placement) : comm_(comm), placement_(std::move(placement)) {}
  void run(int layer, const model::MoeWeights& w, const model::ModelConfig& c, const model::Routing& routing,
           std::span<const float> x, int T, kernels::Numerics mode, std::vector<float>& rows) override;
  const ExchangeStats& stats() const { return stats_; }

 private:
  Comm& comm_;
  ExpertPlacement placement_;
  ExchangeStats stats_;
};

}  // namespace epserve::dist
