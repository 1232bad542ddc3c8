// The feed-forward blocks: dense SwiGLU MLPs and the mixture of experts (reference §7).
#pragma once
#include <span>
#include <vector>

#include "kernels/matmul.h"
#include "model/config.h"
#include "model/weights.h"

namespace epserve::model {

// Each token's chosen experts and their weights, in choice order (best biased score first).
struct Routing {
  int k = 0;
  std::vector<int> expert;   // [T, k]
  std::vector<float> weight; // [T, k], normalized and × routed_scaling_factor
};

// Sigmoid scores from the BF16 gate (FP32 math); the correction bias only chooses; group-limited
// top-k (n_group groups ranked by the sum of their top-2 biased scores, topk_group kept); ties go to
// the lower index.
Routing route_tokens(const MoeWeights& w, const ModelConfig& c, std::span<const float> x, int T);

// out[T, hidden] = SwiGLU(x) for a dense block.
void mlp_forward(const MlpWeights& w, std::span<const float> x, int T, std::span<float> out, kernels::Numerics mode);

// out[T, hidden] = Σ_k weight·Expert_k(x) + Shared(x). Tokens are grouped per expert so each expert's
// weights are read once per step however many tokens chose it; the weighted sum runs in FP32 in
// choice order, so the result does not depend on how experts are grouped or placed.
void moe_forward(const MoeWeights& w, const ModelConfig& c, std::span<const float> x, int T, std::span<float> out,
                 kernels::Numerics mode, Routing* routing_out = nullptr);

// Runs the routed experts for rows that were already gathered per expert (the expert-parallel
// worker's entry point as well): rows[e] holds the inputs routed to expert e, results in outputs[e].
void run_experts(const MoeWeights& w, const ModelConfig& c, const std::vector<std::vector<float>>& rows,
                 std::vector<std::vector<float>>& outputs, kernels::Numerics mode);

}  // namespace epserve::model
