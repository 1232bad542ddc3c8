// A day of serving: the published day's token totals spread over a 24-hour arrival curve, prefill
// and decode units sized to the load every half hour (minimum, maximum, hysteresis), nodes given
// back at night, and the ledger (cost at $/GPU-hour, revenue at per-token prices).
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "sim/unit.h"

namespace epserve::sim {

// The relative load of each half hour from 12:00 (UTC+8), read off DeepSeek's node chart [F]:
// 278 nodes 12:00-00:00, down through 218..98 to 68 over 03:30-06:30, back to 278 by 08:30.
// 5,442 node-hours, the published 226.75-node average.
std::vector<double> published_arrival_curve();

struct DayInputs {
  double input_tokens = 608e9;   // per day [D]
  double hit_rate = 0.563;       // of input tokens, from the disk KV cache [D]
  double output_tokens = 168e9;  // per day [D]
  double kv_len = 4989;          // mean KV length per output token [D]
  double length_sigma = 0.5;     // lognormal sigma of prompt and output lengths (assumed)
  double price_hit = 0.14, price_miss = 0.55, price_output = 2.19;  // $ per M tokens (R1) [D]
  double usd_per_gpu_hour = 0;   // 0 = the hardware's
  std::vector<double> arrival;   // 48 half-hour weights from start_hour; empty = published
  double start_hour = 12;
  double target_utilization = 0.85; // the autoscaler keeps load at or under this share of capacity
  int hysteresis_slots = 2;         // scale down only after this many half hours of lower demand
  int min_prefill_units = 1, min_decode_units = 1;
  int max_nodes = 0;                // 0 = no cap
  double min_user_tok_s = 20;       // decode batch: the largest meeting this per-user speed [D 20-22]
  bool disk_cache = true;           // false: every input token is computed (hit rate 0)
  UnitSpec prefill, decode;         // unit shapes; defaults = DeepSeek's (EP32 / EP144, 32 redundant)
  DayInputs();
};

struct DaySlot {
  double hour = 0;  // start, hours from midnight
  double input_tok_s = 0, output_tok_s = 0;
  int prefill_nodes = 0, decode_nodes = 0;
  double served = 1;  // fraction of the load served (below 1 only under --max-nodes)
};

struct DayResult {
  DayInputs in;
  UnitResult prefill_unit, decode_unit;   // at the day's operating point
  double prefill_capacity_per_node = 0;   // input tok/s (hits included)
  double decode_capacity_per_node = 0;    // output tok/s
  double mean_prompt_len = 0, mean_output_len = 0, prefill_attention_prompt_len = 0;
  std::vector<DaySlot> slots;
  int peak_nodes = 0;
  double avg_nodes = 0, node_hours = 0, returned_node_hours = 0;
  double avg_prefill_nodes = 0, avg_decode_nodes = 0;
  double input_tokens_per_node_s = 0;   // day average over prefill node time
  double output_tokens_per_node_s = 0;  // day average over decode node time
  double usd_per_gpu_hour = 0, usd_per_node_hour = 0;
  double cost_usd = 0, revenue_usd = 0, margin = 0;
  nlohmann::json to_json(bool series = true) const;
  // Per-hour series (24 entries from start_hour): nodes in service, cost and revenue.
  std::vector<double> hourly_nodes() const;
  std::vector<double> hourly_cost() const;
  std::vector<double> hourly_revenue() const;
};

DayResult simulate_day(const Hardware& hw, const model::ModelConfig& cfg, const DayInputs& in);

// Refits the two engine efficiencies so that the day's average per-node throughput matches the
// published 73.7k input (prefill) and 14.8k output (decode) tokens/s per node.
EngineEfficiency calibrate_efficiency(const Hardware& hw, const model::ModelConfig& cfg, const DayInputs& in);

}  // namespace epserve::sim
