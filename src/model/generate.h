// `epserve gen-model`: writes a random checkpoint exactly as DeepSeek publishes V3 (config.json,
// sharded safetensors with an index, FP8 E4M3 linears with 128×128 block scales, BF16 elsewhere,
// FP32 router bias, the MTP block, the tokenizer files).
#pragma once
#include <cstdint>
#include <filesystem>

#include "model/config.h"

namespace epserve::model {

struct GenerateOptions {
  ModelConfig config;
  uint64_t seed = 0;
  // Zipf-like exponent of expert popularity (0: no skew): biases the router's choice so that, per
  // layer, the expert of popularity rank r is chosen roughly ∝ r^-skew, as in real traffic.
  double expert_skew = 0;
  size_t shard_bytes = size_t(512) << 20;
  bool single_file = false;   // one model.safetensors without an index
  bool include_mtp = true;    // write the MTP block (layer num_hidden_layers), as DeepSeek does
  std::filesystem::path tokenizer_dir;  // tokenizer.json + tokenizer_config.json to copy; empty: skip
  bool progress = true;
};

void generate_checkpoint(const GenerateOptions& options, const std::filesystem::path& out_dir);

}  // namespace epserve::model
