// The unit model: the step time of one expert-parallel unit (prefill or decode) from per-stage
// costs, DeepSeek's two-micro-batch overlap rule, and the slowest rank's excess from imbalance.
// See docs/ARCHITECTURE.md "Simulator" for the formulas and where every constant comes from.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/config.h"
#include "sim/hardware.h"

namespace epserve::sim {

enum class Role { prefill, decode };
Role parse_role(const std::string& s);
const char* role_name(Role r);

// Constants fitted to DeepSeek's published day (H800) and nothing else; see calibration.h.
struct EngineEfficiency {
  double prefill = 0;  // fraction of the kernel-level compute rates a production prefill step reaches
  double decode = 0;   // same for decode
};
EngineEfficiency fitted_efficiency();

struct UnitSpec {
  Role role = Role::decode;
  int ep = 144;                 // GPUs in the unit (expert-parallel size)
  int dp = 0;                   // attention data-parallel size; 0 = ep (attention TP = ep / dp)
  int redundant = 32;           // redundant expert slots per MoE layer (EPLB replicas)
  double tokens_per_gpu = 16384;// prefill: prompt tokens computed per GPU per step (cache misses)
  double batch_per_gpu = 128;   // decode: sequences per GPU
  double kv_len = 0;            // decode: mean KV length; prefill: prompt length (0 = role default)
  double hit_rate = 0;          // prefill: fraction of prompt tokens read from the disk KV cache
  bool overlap = true;          // two micro-batches overlapping compute and communication
  double eplb_imbalance = 1.0;  // max / mean routed-expert load per GPU after EPLB (1 = perfect)
  double attn_imbalance = 1.0;  // max / mean attention load per DP rank after the DP balancer
  double mtp_accept = 0;        // decode: MTP draft tokens accepted per step (0 = MTP off)
  double efficiency = 0;        // engine efficiency override (0 = fitted_efficiency() for the role)
};

// The costs of one stage for one micro-batch on the slowest rank (ms).
struct StageCost {
  std::string name;
  double ms = 0;
  double flops = 0;  // per GPU
  double bytes = 0;  // memory bytes (compute stages) or bytes on the wire (communication)
  bool comm = false;
};

struct UnitResult {
  UnitSpec spec;
  std::string hw;
  int gpus = 0, nodes = 0;
  int experts_per_gpu = 0;         // routed-expert slots per GPU per MoE layer
  double tokens_per_step = 0;      // per GPU: computed prompt tokens (prefill) or query tokens (decode)
  double microbatch_tokens = 0;    // per GPU per micro-batch (== tokens_per_step without overlap)
  bool split = false;              // two micro-batches used (overlap on and it paid off)
  std::vector<StageCost> stages;   // one MoE layer, one micro-batch
  double expert_imbalance = 1;     // slowest GPU's expert load / mean: EPLB x routing noise
  double moe_layer_ms = 0;         // one MoE layer, whole batch, overlap rule applied
  double moe_layer_serial_ms = 0;  // one MoE layer, whole batch, everything in sequence
  double dense_layers_ms = 0;      // the first_k_dense_replace dense layers
  double head_ms = 0;              // lm_head (and MTP's extra layer + head in decode)
  double kv_load_ms = 0;           // prefill: reading cached prefixes (overlapped with compute)
  double step_ms = 0;
  double compute_ms = 0, comm_ms = 0;  // per step, before overlap
  double efficiency = 0;
  // Throughput.
  double input_tokens_per_node_s = 0;   // prefill, cache hits included
  double computed_tokens_per_node_s = 0;
  double output_tokens_per_node_s = 0;  // decode
  double output_tokens_per_user_s = 0;  // decode
  double ttft_step_s = 0;               // prefill: one step, a lower bound on time to first token
  // Memory per GPU (GB).
  double weights_gb = 0, kv_gb = 0;
  bool fits_in_memory = true;
  nlohmann::json to_json() const;
};

UnitResult simulate_unit(const Hardware& hw, const model::ModelConfig& cfg, const UnitSpec& spec);

// The largest decode batch per GPU whose per-user speed is at least `min_user_tok_s` and whose KV
// cache fits in memory (at least 1). The result's spec carries the batch.
UnitResult decode_at_slo(const Hardware& hw, const model::ModelConfig& cfg, UnitSpec spec,
                         double min_user_tok_s);

// The hook for calibrating the cpu preset against the real engine: one rank, no communication, the
// given batch (prefill: prompt tokens; decode: sequences at kv_len). Returns milliseconds.
double predict_single_rank_step_ms(const Hardware& hw, const model::ModelConfig& cfg, Role role,
                                   double batch, double kv_len);

// Max / mean GPU load after placing the experts of each layer on `gpus` GPUs with `slots` slots in
// all (EPLB's global policy: replicate the hottest experts, then pack replicas greedily), averaged
// over layers. `load[l][e]` is the load of expert e in layer l.
double eplb_imbalance(const std::vector<std::vector<double>>& load, int slots, int gpus);

}  // namespace epserve::sim
