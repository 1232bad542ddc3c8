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
// The gate product in the step's numerics (DeepSeek: BF16 dot products, exact since x holds BF16 values).
Routing route_tokens(const MoeWeights& w, const ModelConfig& c, std::span<const float> x, int T, kernels::Numerics mode);

// out[T, hidden] = SwiGLU(x) for a dense block.
void mlp_forward(const MlpWeights& w, std::span<const float> x, int T, std::span<float> out, kernels::Numerics mode);

// The inputs of one routed expert, as DeepSeek dispatches them: FP32 rows in exact numerics; FP8
// rows with their per-128-channel scales in DeepSeek numerics (quantized once, at the token's home
// rank, so that one rank and many ranks compute with the same numbers). Views: the runners keep all
// experts' rows in one buffer, expert after expert (ExpertRowBuffers).
struct ExpertInput {
  int rows = 0;
  std::span<const float> f32;  // [rows, hidden], exact numerics
  kernels::Fp8RowsView fp8;    // [rows, hidden], DeepSeek numerics
};

// Every routed expert's input rows in one buffer, expert after expert (expert e's from row
// first_row(e)). The buffers are the calling thread's and only grow with the total row count:
// per-expert vectors grew whenever an expert got more rows than ever before, and each growth
// faulted in fresh pages (about 10 µs a page on these PVM guests: 5–25 ms per MoE layer of a
// 2,048-token prefill).
class ExpertRows {
 public:
  // Room for rows_per_expert[e] rows of expert e, FP32 (exact numerics) or FP8 codes and scales.
  ExpertRows(std::span<const int> rows_per_expert, int hidden, kernels::Numerics mode);
  size_t first_row(int e) const { return offset_[size_t(e)]; }
  float* f32_row(size_t row) { return f32_->data() + row * hidden_; }
  uint8_t* codes_row(size_t row) { return codes_->data() + row * hidden_; }
  float* scales_row(size_t row) { return scales_->data() + row * blocks_; }
  // One input per expert, views of these buffers (valid while they are not resized).
  std::vector<ExpertInput> inputs() const;

 private:
  int hidden_, blocks_;
  kernels::Numerics mode_;
  std::vector<size_t> offset_;  // [experts + 1]
  std::vector<float>* f32_;
  std::vector<uint8_t>* codes_;
  std::vector<float>* scales_;
};

// Runs the routed experts on their gathered inputs: row m of expert e's output (hidden floats,
// BF16 values in DeepSeek numerics) goes to out_rows[e][m], wherever the caller wants it (in place
// in the (token, choice) rows, or contiguous per expert to send back). Each expert's weights are
// read once for all its rows.
void run_experts(const MoeWeights& w, const ModelConfig& c, const std::vector<ExpertInput>& inputs,
                 const std::vector<std::vector<float*>>& out_rows, kernels::Numerics mode);

// Produces Expert_{e(t,k)}(x_t) for every token t and choice k, rows in (t, k) order: on this
// process (LocalExpertRunner) or on the ranks that own the experts (dist::ExpertParallelRunner).
class ExpertRunner {
 public:
  virtual ~ExpertRunner() = default;
  virtual void run(int layer, const MoeWeights& w, const ModelConfig& c, const Routing& routing,
                   std::span<const float> x, int T, kernels::Numerics mode, std::vector<float>& rows) = 0;
};

class LocalExpertRunner : public ExpertRunner {
 public:
  void run(int layer, const MoeWeights& w, const ModelConfig& c, const Routing& routing, std::span<const float> x,
           int T, kernels::Numerics mode, std::vector<float>& rows) override;
};

// out[T, hidden] = Σ_k weight·Expert_k(x) + Shared(x): routing on this process, routed experts by
// `runner`, the weighted sum in FP32 in choice order (so the result does not depend on where the
// experts ran), the shared expert here.
void moe_forward(const MoeWeights& w, const ModelConfig& c, int layer, std::span<const float> x, int T,
                 std::span<float> out, kernels::Numerics mode, ExpertRunner& runner, Routing* routing_out = nullptr);

}  // namespace epserve::model
