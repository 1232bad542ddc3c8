// Which tensors a DeepSeek-V3 checkpoint holds, with their HuggingFace names, dtypes and shapes as
// implied by config.json (reference §3). The generator writes exactly these; the loader checks them.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/safetensors.h"

namespace epserve::model {

enum class TensorRole {
  kFp8Linear,  // F8_E4M3 [out, in] + F32 "<name>_scale_inv" [ceil(out/128), ceil(in/128)]
  kNorm,       // BF16 [n], RMSNorm weight
  kBf16,       // BF16 matrix (embeddings, lm_head, router gate, MTP eh_proj)
  kF32,        // F32 vector (router e_score_correction_bias)
};

struct TensorSpec {
  std::string name;
  TensorRole role;
  std::vector<int64_t> shape;
  int layer = -1;   // -1 for global tensors
  int expert = -1;  // routed expert index, -1 otherwise
};

std::string layer_prefix(int layer);
std::string scale_name(const std::string& weight_name);
std::vector<int64_t> scale_shape(const std::vector<int64_t>& weight_shape);

// Tensors of block `layer` (layer == num_hidden_layers is the MTP block, which adds its own parts).
std::vector<TensorSpec> layer_tensors(const ModelConfig& c, int layer);
// embed_tokens, final norm, lm_head.
std::vector<TensorSpec> global_tensors(const ModelConfig& c);

}  // namespace epserve::model
