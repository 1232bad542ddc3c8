// The model's weights as the forward pass uses them: views into the mmap'd checkpoint (FP8 linears
// with their block scales, BF16 matrices) plus the few small tensors converted once at load (norms,
// router bias, the dequantized kv_b_proj that the absorbed attention path multiplies with).
#pragma once
#include <filesystem>
#include <functional>
#include <optional>
#include <vector>

#include "base/bf16.h"
#include "base/huge_page_arena.h"

#include "kernels/matmul.h"
#include "model/checkpoint.h"
#include "model/config.h"

namespace epserve::model {

using kernels::Bf16Matrix;
using kernels::Fp8Matrix;

struct MlpWeights {  // SwiGLU: down(silu(gate x) * up x)
  Fp8Matrix gate, up, down;
};

struct AttentionWeights {
  Fp8Matrix q_a, q_b, kv_a, kv_b, o;
  std::vector<float> q_a_norm, kv_a_norm;
  // kv_b_proj dequantized in the absorbed path's layout (per head U [qk_nope][kv_lora], then Vᵀ
  // [kv_lora][v]: model/absorbed_attention.h).
  std::vector<float> kv_b_absorbed;
  // The same rounded to BF16 (DeepSeek applies it in BF16), stored as BF16: half the bytes that
  // every decode step streams through its heads.
  std::vector<bf16> kv_b_absorbed_bf16;
};

struct MoeWeights {
  Bf16Matrix gate;                        // [n_routed_experts, hidden]
  std::vector<float> correction_bias;     // e_score_correction_bias, FP32
  std::vector<std::optional<MlpWeights>> experts;  // empty where this process does not own the expert
  std::optional<MlpWeights> shared;
};

struct LayerWeights {
  std::vector<float> attn_norm, ffn_norm;
  AttentionWeights attn;
  std::optional<MlpWeights> dense;
  std::optional<MoeWeights> moe;
};

struct LoadOptions {
  // Which routed experts this process holds (expert parallelism); all when empty.
  std::function<bool(int layer, int expert)> owns_expert;
  bool progress = true;  // progress lines on stderr for large checkpoints
};

class ModelWeights {
 public:
  static ModelWeights load(const std::filesystem::path& dir, const LoadOptions& options = {});
  ModelWeights(ModelWeights&&) = default;  // (the views stay valid: the buffers move with it)
  ModelWeights& operator=(ModelWeights&&) = default;
  ModelWeights(const ModelWeights&) = delete;  // the views into the arena would point into the original
  ModelWeights& operator=(const ModelWeights&) = delete;

  ModelConfig config;
  Bf16Matrix embed, lm_head;
  std::vector<float> final_norm;
  std::vector<LayerWeights> layers;

 private:
  ModelWeights() = default;
  std::shared_ptr<Checkpoint> checkpoint_;  // keeps the mmaps that the views point into
  // The FP8 linears' kernel tiles (Fp8Matrix::tiles) and copies of the BF16 matrices, in huge pages.
  std::unique_ptr<HugePageArena> arena_;
};

// The bytes `load` would map for one process that owns `experts_owned` of each layer's routed experts.
double weight_bytes(const ModelConfig& c, double experts_owned_per_layer);

}  // namespace epserve::model
