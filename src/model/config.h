// A DeepSeek-V3-architecture model's config.json, with DeepSeek's HuggingFace field names.
#pragma once
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

namespace epserve::model {

struct YarnScaling {
  double factor = 40;
  int original_max_position_embeddings = 4096;
  double beta_fast = 32;
  double beta_slow = 1;
  double mscale = 1.0;
  double mscale_all_dim = 1.0;
};

struct ModelConfig {
  int vocab_size = 129280;
  int hidden_size = 7168;
  int num_hidden_layers = 61;
  int first_k_dense_replace = 3;
  int intermediate_size = 18432;
  int moe_intermediate_size = 2048;
  int n_routed_experts = 256;
  int n_shared_experts = 1;
  int num_experts_per_tok = 8;
  int n_group = 8;
  int topk_group = 4;
  bool norm_topk_prob = true;
  double routed_scaling_factor = 2.5;
  int num_attention_heads = 128;
  int q_lora_rank = 1536;
  int kv_lora_rank = 512;
  int qk_nope_head_dim = 128;
  int qk_rope_head_dim = 64;
  int v_head_dim = 128;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000;
  YarnScaling rope_scaling;
  int max_position_embeddings = 163840;
  int bos_token_id = 0;
  int eos_token_id = 1;
  int num_nextn_predict_layers = 1;
  int moe_layer_freq = 1;

  int qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  bool is_moe_layer(int layer) const { return layer >= first_k_dense_replace; }
  // Values the forward pass derives from the config (DeepSeek's model.py).
  double softmax_scale() const;  // qk_head_dim^-0.5 · mscale², see reference §5

  nlohmann::json to_json() const;
  // Reads and validates; a missing or out-of-range field names itself in the error.
  static ModelConfig from_json(const nlohmann::json& j, const std::string& where);
  static ModelConfig load(const std::filesystem::path& model_dir);
  // `tiny`, `bench` or `v3-671b`.
  static ModelConfig preset(const std::string& name);
  // `--set key=value`: any top-level field (or rope_scaling.<field>) by its config.json name.
  void set_field(const std::string& key, const std::string& value);
  void validate(const std::string& where) const;
};

// Bytes of the checkpoint's tensors, by kind (used by `run --plan` and the simulator).
struct ParameterCounts {
  double attention_per_layer = 0;     // MLA projections (+ norms)
  double dense_mlp_per_layer = 0;
  double expert = 0;                  // one routed or shared expert
  double gate_per_layer = 0;
  double embedding = 0;               // embed_tokens (lm_head is the same size)
};
ParameterCounts parameter_counts(const ModelConfig& c);

}  // namespace epserve::model
