#include "model/checkpoint_layout.h"

namespace epserve::model {

std::string layer_prefix(int layer) { return "model.layers." + std::to_string(layer) + "."; }

std::string scale_name(const std::string& weight_name) { return weight_name + "_scale_inv"; }

std::vector<int64_t> scale_shape(const std::vector<int64_t>& s) {
  return {(s[0] + 127) / 128, (s[1] + 127) / 128};
}

namespace {
void add_mlp(std::vector<TensorSpec>& out, const std::string& p, int64_t d, int64_t inter, int layer, int expert) {
  out.push_back({p + "gate_proj.weight", TensorRole::kFp8Linear, {inter, d}, layer, expert});
  out.push_back({p + "up_proj.weight", TensorRole::kFp8Linear, {inter, d}, layer, expert});
  out.push_back({p + "down_proj.weight", TensorRole::kFp8Linear, {d, inter}, layer, expert});
}
}  // namespace

std::vector<TensorSpec> layer_tensors(const ModelConfig& c, int layer) {
  std::vector<TensorSpec> out;
  const std::string p = layer_prefix(layer);
  const int64_t d = c.hidden_size, h = c.num_attention_heads;
  out.push_back({p + "input_layernorm.weight", TensorRole::kNorm, {d}, layer});
  out.push_back({p + "post_attention_layernorm.weight", TensorRole::kNorm, {d}, layer});
  out.push_back({p + "self_attn.q_a_proj.weight", TensorRole::kFp8Linear, {c.q_lora_rank, d}, layer});
  out.push_back({p + "self_attn.q_a_layernorm.weight", TensorRole::kNorm, {c.q_lora_rank}, layer});
  out.push_back({p + "self_attn.q_b_proj.weight", TensorRole::kFp8Linear, {h * c.qk_head_dim(), c.q_lora_rank}, layer});
  out.push_back({p + "self_attn.kv_a_proj_with_mqa.weight", TensorRole::kFp8Linear,
                 {c.kv_lora_rank + c.qk_rope_head_dim, d}, layer});
  out.push_back({p + "self_attn.kv_a_layernorm.weight", TensorRole::kNorm, {c.kv_lora_rank}, layer});
  out.push_back({p + "self_attn.kv_b_proj.weight", TensorRole::kFp8Linear,
                 {h * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank}, layer});
  out.push_back({p + "self_attn.o_proj.weight", TensorRole::kFp8Linear, {d, h * c.v_head_dim}, layer});
  if (!c.is_moe_layer(layer)) {
    add_mlp(out, p + "mlp.", d, c.intermediate_size, layer, -1);
  } else {
    out.push_back({p + "mlp.gate.weight", TensorRole::kBf16, {c.n_routed_experts, d}, layer});
    out.push_back({p + "mlp.gate.e_score_correction_bias", TensorRole::kF32, {c.n_routed_experts}, layer});
    for (int e = 0; e < c.n_routed_experts; ++e)
      add_mlp(out, p + "mlp.experts." + std::to_string(e) + ".", d, c.moe_intermediate_size, layer, e);
    if (c.n_shared_experts > 0)
      add_mlp(out, p + "mlp.shared_experts.", d, int64_t(c.moe_intermediate_size) * c.n_shared_experts, layer, -1);
  }
  if (layer >= c.num_hidden_layers) {  // MTP block (reference §9): stored, ignored by the main model
    out.push_back({p + "embed_tokens.weight", TensorRole::kBf16, {c.vocab_size, d}, layer});
    out.push_back({p + "enorm.weight", TensorRole::kNorm, {d}, layer});
    out.push_back({p + "hnorm.weight", TensorRole::kNorm, {d}, layer});
    out.push_back({p + "eh_proj.weight", TensorRole::kBf16, {d, 2 * d}, layer});
    out.push_back({p + "shared_head.norm.weight", TensorRole::kNorm, {d}, layer});
    out.push_back({p + "shared_head.head.weight", TensorRole::kBf16, {c.vocab_size, d}, layer});
  }
  return out;
}

std::vector<TensorSpec> global_tensors(const ModelConfig& c) {
  return {
      {"model.embed_tokens.weight", TensorRole::kBf16, {c.vocab_size, c.hidden_size}},
      {"model.norm.weight", TensorRole::kNorm, {c.hidden_size}},
      {"lm_head.weight", TensorRole::kBf16, {c.vocab_size, c.hidden_size}},
  };
}

}  // namespace epserve::model
