#include "model/config.h"

#include <cmath>
#include <fstream>

#include "base/json_file.h"
#include "base/error.h"

namespace epserve::model {

using nlohmann::json;

double ModelConfig::softmax_scale() const {
  double scale = 1.0 / std::sqrt(double(qk_head_dim()));
  if (rope_scaling.factor > 1) {
    // DeepSeek applies YaRN's attention-temperature correction m² (HF: from mscale_all_dim).
    const double m = 0.1 * rope_scaling.mscale_all_dim * std::log(rope_scaling.factor) + 1.0;
    scale *= m * m;
  }
  return scale;
}

json ModelConfig::to_json() const {
  json j = {
      {"architectures", {"DeepseekV3ForCausalLM"}},
      {"model_type", "deepseek_v3"},
      {"vocab_size", vocab_size},
      {"hidden_size", hidden_size},
      {"num_hidden_layers", num_hidden_layers},
      {"first_k_dense_replace", first_k_dense_replace},
      {"intermediate_size", intermediate_size},
      {"moe_intermediate_size", moe_intermediate_size},
      {"n_routed_experts", n_routed_experts},
      {"n_shared_experts", n_shared_experts},
      {"num_experts_per_tok", num_experts_per_tok},
      {"n_group", n_group},
      {"topk_group", topk_group},
      {"norm_topk_prob", norm_topk_prob},
      {"routed_scaling_factor", routed_scaling_factor},
      {"scoring_func", "sigmoid"},
      {"topk_method", "noaux_tc"},
      {"moe_layer_freq", moe_layer_freq},
      {"num_attention_heads", num_attention_heads},
      {"num_key_value_heads", num_attention_heads},
      {"q_lora_rank", q_lora_rank},
      {"kv_lora_rank", kv_lora_rank},
      {"qk_nope_head_dim", qk_nope_head_dim},
      {"qk_rope_head_dim", qk_rope_head_dim},
      {"v_head_dim", v_head_dim},
      {"hidden_act", "silu"},
      {"rms_norm_eps", rms_norm_eps},
      {"rope_theta", rope_theta},
      {"rope_scaling",
       {{"type", "yarn"},
        {"factor", rope_scaling.factor},
        {"original_max_position_embeddings", rope_scaling.original_max_position_embeddings},
        {"beta_fast", rope_scaling.beta_fast},
        {"beta_slow", rope_scaling.beta_slow},
        {"mscale", rope_scaling.mscale},
        {"mscale_all_dim", rope_scaling.mscale_all_dim}}},
      {"max_position_embeddings", max_position_embeddings},
      {"bos_token_id", bos_token_id},
      {"eos_token_id", eos_token_id},
      {"num_nextn_predict_layers", num_nextn_predict_layers},
      {"attention_bias", false},
      {"attention_dropout", 0.0},
      {"tie_word_embeddings", false},
      {"torch_dtype", "bfloat16"},
      {"initializer_range", 0.02},
      {"use_cache", true},
      {"quantization_config",
       {{"quant_method", "fp8"},
        {"fmt", "e4m3"},
        {"activation_scheme", "dynamic"},
        {"weight_block_size", {128, 128}}}},
  };
  return j;
}

namespace {

template <typename T>
void read_field(const json& j, const char* name, T& out, const std::string& where, bool required = true) {
  auto it = j.find(name);
  if (it == j.end()) {
    EPS_REQUIRE(!required, where + ": missing field \"" + name + "\"");
    return;
  }
  try {
    if constexpr (std::is_same_v<T, int>) {
      EPS_REQUIRE(it->is_number_integer(), "");
    } else if constexpr (std::is_same_v<T, bool>) {
      EPS_REQUIRE(it->is_boolean(), "");
    } else {
      EPS_REQUIRE(it->is_number(), "");
    }
    out = it->get<T>();
  } catch (const std::exception&) {
    throw Error(where + ": field \"" + name + "\" has the wrong type (" + it->dump() + ")");
  }
}

}  // namespace

ModelConfig ModelConfig::from_json(const json& j, const std::string& where) {
  EPS_REQUIRE(j.is_object(), where + ": not a JSON object");
  ModelConfig c;
  read_field(j, "vocab_size", c.vocab_size, where);
  read_field(j, "hidden_size", c.hidden_size, where);
  read_field(j, "num_hidden_layers", c.num_hidden_layers, where);
  read_field(j, "first_k_dense_replace", c.first_k_dense_replace, where);
  read_field(j, "intermediate_size", c.intermediate_size, where);
  read_field(j, "moe_intermediate_size", c.moe_intermediate_size, where);
  read_field(j, "n_routed_experts", c.n_routed_experts, where);
  read_field(j, "n_shared_experts", c.n_shared_experts, where);
  read_field(j, "num_experts_per_tok", c.num_experts_per_tok, where);
  read_field(j, "n_group", c.n_group, where);
  read_field(j, "topk_group", c.topk_group, where);
  read_field(j, "norm_topk_prob", c.norm_topk_prob, where);
  read_field(j, "routed_scaling_factor", c.routed_scaling_factor, where);
  read_field(j, "num_attention_heads", c.num_attention_heads, where);
  read_field(j, "q_lora_rank", c.q_lora_rank, where);
  read_field(j, "kv_lora_rank", c.kv_lora_rank, where);
  read_field(j, "qk_nope_head_dim", c.qk_nope_head_dim, where);
  read_field(j, "qk_rope_head_dim", c.qk_rope_head_dim, where);
  read_field(j, "v_head_dim", c.v_head_dim, where);
  read_field(j, "rms_norm_eps", c.rms_norm_eps, where);
  read_field(j, "rope_theta", c.rope_theta, where);
  read_field(j, "max_position_embeddings", c.max_position_embeddings, where, false);
  read_field(j, "bos_token_id", c.bos_token_id, where, false);
  read_field(j, "eos_token_id", c.eos_token_id, where, false);
  read_field(j, "num_nextn_predict_layers", c.num_nextn_predict_layers, where, false);
  read_field(j, "moe_layer_freq", c.moe_layer_freq, where, false);
  if (auto it = j.find("scoring_func"); it != j.end())
    EPS_REQUIRE(*it == "sigmoid", where + ": field \"scoring_func\" must be \"sigmoid\" (DeepSeek-V3), got " + it->dump());
  if (auto it = j.find("topk_method"); it != j.end())
    EPS_REQUIRE(*it == "noaux_tc", where + ": field \"topk_method\" must be \"noaux_tc\" (DeepSeek-V3), got " + it->dump());
  if (auto it = j.find("rope_scaling"); it != j.end() && !it->is_null()) {
    const std::string rw = where + ": rope_scaling";
    EPS_REQUIRE(it->is_object(), rw + " must be an object");
    read_field(*it, "factor", c.rope_scaling.factor, rw);
    read_field(*it, "original_max_position_embeddings", c.rope_scaling.original_max_position_embeddings, rw);
    read_field(*it, "beta_fast", c.rope_scaling.beta_fast, rw);
    read_field(*it, "beta_slow", c.rope_scaling.beta_slow, rw);
    read_field(*it, "mscale", c.rope_scaling.mscale, rw, false);
    read_field(*it, "mscale_all_dim", c.rope_scaling.mscale_all_dim, rw, false);
  } else {
    c.rope_scaling.factor = 1;
  }
  if (auto it = j.find("quantization_config"); it != j.end()) {
    const std::string qw = where + ": quantization_config";
    auto fmt = it->find("fmt");
    EPS_REQUIRE(fmt != it->end() && *fmt == "e4m3", qw + ".fmt must be \"e4m3\"");
    auto block = it->find("weight_block_size");
    EPS_REQUIRE(block != it->end() && *block == json({128, 128}),
                qw + ".weight_block_size must be [128, 128]");
  } else {
    throw Error(where + ": missing field \"quantization_config\" (epserve reads FP8 checkpoints)");
  }
  c.validate(where);
  return c;
}

void ModelConfig::validate(const std::string& where) const {
  auto positive = [&](int v, const char* name) {
    EPS_REQUIRE(v > 0, where + ": field \"" + name + "\" must be positive, got " + std::to_string(v));
  };
  positive(vocab_size, "vocab_size");
  positive(hidden_size, "hidden_size");
  positive(num_hidden_layers, "num_hidden_layers");
  positive(intermediate_size, "intermediate_size");
  positive(moe_intermediate_size, "moe_intermediate_size");
  positive(n_routed_experts, "n_routed_experts");
  positive(num_experts_per_tok, "num_experts_per_tok");
  positive(n_group, "n_group");
  positive(topk_group, "topk_group");
  positive(num_attention_heads, "num_attention_heads");
  positive(q_lora_rank, "q_lora_rank");
  positive(kv_lora_rank, "kv_lora_rank");
  positive(qk_nope_head_dim, "qk_nope_head_dim");
  positive(qk_rope_head_dim, "qk_rope_head_dim");
  positive(v_head_dim, "v_head_dim");
  EPS_REQUIRE(first_k_dense_replace >= 0 && first_k_dense_replace <= num_hidden_layers,
              where + ": field \"first_k_dense_replace\" must be in [0, num_hidden_layers]");
  EPS_REQUIRE(n_shared_experts >= 0, where + ": field \"n_shared_experts\" must be >= 0");
  EPS_REQUIRE(qk_rope_head_dim % 2 == 0, where + ": field \"qk_rope_head_dim\" must be even");
  EPS_REQUIRE(n_routed_experts % n_group == 0, where + ": n_routed_experts must be a multiple of n_group");
  EPS_REQUIRE(topk_group <= n_group, where + ": topk_group must be <= n_group");
  EPS_REQUIRE(num_experts_per_tok <= topk_group * (n_routed_experts / n_group),
              where + ": num_experts_per_tok exceeds the experts in topk_group groups");
  EPS_REQUIRE(moe_layer_freq == 1, where + ": only moe_layer_freq 1 is supported");
  EPS_REQUIRE(rms_norm_eps > 0 && rope_theta > 0, where + ": rms_norm_eps and rope_theta must be positive");
}

ModelConfig ModelConfig::load(const std::filesystem::path& model_dir) {
  const auto path = model_dir / "config.json";
  const json j = read_json_file(path, "is --model a checkpoint directory?", /*require_object=*/false);
  return from_json(j, path.string());
}

ModelConfig ModelConfig::preset(const std::string& name) {
  ModelConfig c;  // defaults are DeepSeek-V3 671B
  if (name == "v3-671b") return c;
  if (name != "tiny" && name != "bench")
    throw Error("unknown preset \"" + name + "\" (known: tiny, bench, v3-671b)");
  c.hidden_size = 128;
  c.num_hidden_layers = 3;
  c.first_k_dense_replace = 1;
  c.num_attention_heads = 4;
  c.q_lora_rank = 64;
  c.kv_lora_rank = 32;
  c.qk_nope_head_dim = 32;
  c.qk_rope_head_dim = 16;
  c.v_head_dim = 32;
  c.intermediate_size = 256;
  c.moe_intermediate_size = 64;
  c.n_routed_experts = 32;
  if (name == "bench") {
    c.hidden_size = 1024;
    c.num_hidden_layers = 8;
    c.num_attention_heads = 8;
    c.q_lora_rank = 384;
    c.kv_lora_rank = 256;
    c.qk_nope_head_dim = 64;
    c.qk_rope_head_dim = 32;
    c.v_head_dim = 64;
    c.intermediate_size = 2816;
    c.moe_intermediate_size = 256;
    c.n_routed_experts = 256;
  }
  return c;
}

void ModelConfig::set_field(const std::string& key, const std::string& value) {
  json j = to_json();
  json parsed;
  try {
    parsed = json::parse(value);
  } catch (const std::exception&) {
    parsed = value;  // a bare string
  }
  if (key.rfind("rope_scaling.", 0) == 0) {
    const auto sub = key.substr(13);
    EPS_REQUIRE(j["rope_scaling"].contains(sub), "--set: unknown field \"" + key + "\"");
    j["rope_scaling"][sub] = parsed;
  } else {
    EPS_REQUIRE(j.contains(key), "--set: unknown field \"" + key + "\"");
    j[key] = parsed;
  }
  *this = from_json(j, "--set " + key);
}

ParameterCounts parameter_counts(const ModelConfig& c) {
  ParameterCounts p;
  const double d = c.hidden_size, h = c.num_attention_heads;
  p.attention_per_layer = d * c.q_lora_rank + c.q_lora_rank + double(c.q_lora_rank) * h * c.qk_head_dim() +
                          d * (c.kv_lora_rank + c.qk_rope_head_dim) + c.kv_lora_rank +
                          double(c.kv_lora_rank) * h * (c.qk_nope_head_dim + c.v_head_dim) +
                          h * c.v_head_dim * d + 2 * d;
  p.dense_mlp_per_layer = 3 * d * c.intermediate_size;
  p.expert = 3 * d * c.moe_intermediate_size;
  p.gate_per_layer = double(c.n_routed_experts) * d + c.n_routed_experts;
  p.embedding = double(c.vocab_size) * d;
  return p;
}

}  // namespace epserve::model
