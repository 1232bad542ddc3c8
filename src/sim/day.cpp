#include "sim/day.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "base/error.h"

namespace epserve::sim {

std::vector<double> published_arrival_curve() {
  std::vector<double> v;
  auto add = [&](double nodes, int half_hours) { v.insert(v.end(), half_hours, nodes); };
  add(278, 24);                                                   // 12:00-00:00
  for (double n : {218, 218, 188, 188, 158, 128, 128}) add(n, 1);  // 00:00-03:30
  add(68, 6);                                                     // 03:30-06:30
  for (double n : {98, 128, 188, 218}) add(n, 1);                 // 06:30-08:30
  add(278, 7);                                                    // 08:30-12:00
  return v;
}

DayInputs::DayInputs() {
  // DeepSeek's units [D Day 6]: prefill 4 nodes (EP32), decode 18 nodes (EP144), 32 redundant experts.
  prefill.role = Role::prefill;
  prefill.ep = 32;
  prefill.tokens_per_gpu = 16384;  // profile-data's prefill setting [D]
  decode.role = Role::decode;
  decode.ep = 144;
}

namespace {

void validate(const DayInputs& in) {
  auto pos = [](double v, const char* what) {
    EPS_REQUIRE(std::isfinite(v) && v > 0, std::string(what) + " must be positive");
  };
  pos(in.input_tokens, "--input-tokens");
  pos(in.output_tokens, "--output-tokens");
  pos(in.kv_len, "--kv-len");
  pos(in.target_utilization, "--target-utilization");
  pos(in.min_user_tok_s, "--min-user-speed");
  EPS_REQUIRE(in.target_utilization <= 1, "--target-utilization must be at most 1");
  EPS_REQUIRE(in.hit_rate >= 0 && in.hit_rate < 1, "--hit-rate must be in [0, 1)");
  EPS_REQUIRE(in.length_sigma >= 0 && in.length_sigma < 3, "--length-sigma must be in [0, 3)");
  EPS_REQUIRE(in.price_hit >= 0 && in.price_miss >= 0 && in.price_output >= 0, "prices must not be negative");
  EPS_REQUIRE(in.usd_per_gpu_hour >= 0, "--usd-per-gpu-hour must not be negative");
  EPS_REQUIRE(in.hysteresis_slots >= 1, "--hysteresis must be at least 1 half hour");
  EPS_REQUIRE(in.min_prefill_units >= 0 && in.min_decode_units >= 0, "minimum units must not be negative");
  EPS_REQUIRE(in.max_nodes >= 0, "--max-nodes must not be negative");
  if (!in.arrival.empty()) {
    EPS_REQUIRE(in.arrival.size() == 48, "the arrival curve needs 48 half-hour weights");
    double s = 0;
    for (double a : in.arrival) {
      EPS_REQUIRE(std::isfinite(a) && a >= 0, "arrival weights must not be negative");
      s += a;
    }
    EPS_REQUIRE(s > 0, "the arrival curve is all zero");
  }
}

}  // namespace

DayResult simulate_day(const Hardware& hw, const model::ModelConfig& cfg, const DayInputs& in) {
  validate(in);
  DayResult r;
  r.in = in;
  const double hit = in.disk_cache ? in.hit_rate : 0.0;
  const double price_gpu_h = in.usd_per_gpu_hour > 0 ? in.usd_per_gpu_hour : hw.usd_per_gpu_hour;
  const int gpn = std::max(1, hw.gpus_per_node);

  // Request lengths: lognormal prompt P and output O with the same sigma. The day's ratio gives
  // E[P] = (in/out)·E[O]; the published KV length per output token is E[P] + E[O²]/(2E[O]), so
  // E[O] = kv / (in/out + e^{σ²}/2). Prefill attention grows with P², so its effective prompt
  // length is E[P²]/E[P] = E[P]·e^{σ²}.
  const double spread = std::exp(in.length_sigma * in.length_sigma);
  const double ratio = in.input_tokens / in.output_tokens;
  r.mean_output_len = in.kv_len / (ratio + spread / 2);
  r.mean_prompt_len = ratio * r.mean_output_len;
  r.prefill_attention_prompt_len = r.mean_prompt_len * spread;

  UnitSpec ps = in.prefill;
  ps.role = Role::prefill;
  ps.kv_len = r.prefill_attention_prompt_len;
  ps.hit_rate = hit;
  r.prefill_unit = simulate_unit(hw, cfg, ps);
  UnitSpec ds = in.decode;
  ds.role = Role::decode;
  ds.kv_len = in.kv_len;
  r.decode_unit = decode_at_slo(hw, cfg, ds, in.min_user_tok_s);
  r.prefill_capacity_per_node = r.prefill_unit.input_tokens_per_node_s;
  r.decode_capacity_per_node = r.decode_unit.output_tokens_per_node_s;
  const int p_nodes = r.prefill_unit.nodes, d_nodes = r.decode_unit.nodes;
  const double p_cap = r.prefill_capacity_per_node * p_nodes;  // per unit
  const double d_cap = r.decode_capacity_per_node * d_nodes;

  const std::vector<double> curve = in.arrival.empty() ? published_arrival_curve() : in.arrival;
  const int n = int(curve.size());
  const double total = std::accumulate(curve.begin(), curve.end(), 0.0);
  const double slot_s = 86400.0 / n;
  std::vector<int> want_p(n), want_d(n);
  r.slots.resize(n);
  for (int i = 0; i < n; ++i) {
    auto& s = r.slots[i];
    s.hour = std::fmod(in.start_hour + 24.0 * i / n, 24.0);
    s.input_tok_s = in.input_tokens * curve[i] / total / slot_s;
    s.output_tok_s = in.output_tokens * curve[i] / total / slot_s;
    want_p[i] = std::max(in.min_prefill_units,
                         int(std::ceil(s.input_tok_s / (p_cap * in.target_utilization) - 1e-9)));
    want_d[i] = std::max(in.min_decode_units,
                         int(std::ceil(s.output_tok_s / (d_cap * in.target_utilization) - 1e-9)));
  }
  // Hysteresis: units in service = the most wanted over the last `hysteresis_slots` half hours (the
  // day repeats, so the window wraps): scale up at once, give nodes back only after demand stayed low.
  double p_node_s = 0, d_node_s = 0, served_in = 0, served_out = 0;
  for (int i = 0; i < n; ++i) {
    int up = 0, ud = 0;
    for (int k = 0; k < in.hysteresis_slots; ++k) {
      const int j = ((i - k) % n + n) % n;
      up = std::max(up, want_p[j]);
      ud = std::max(ud, want_d[j]);
    }
    auto& s = r.slots[i];
    // Maximum: drop units from the role that keeps the larger share of its load served.
    while (in.max_nodes > 0 && up * p_nodes + ud * d_nodes > in.max_nodes && (up > 0 || ud > 0)) {
      const double fp = up > 0 ? std::min(1.0, (up - 1) * p_cap / std::max(1e-9, s.input_tok_s)) : -1;
      const double fd = ud > 0 ? std::min(1.0, (ud - 1) * d_cap / std::max(1e-9, s.output_tok_s)) : -1;
      (fp >= fd ? up : ud) -= 1;
    }
    s.prefill_nodes = up * p_nodes;
    s.decode_nodes = ud * d_nodes;
    const double si = std::min(s.input_tok_s, up * p_cap), so = std::min(s.output_tok_s, ud * d_cap);
    s.served = std::min(si / std::max(1e-9, s.input_tok_s), so / std::max(1e-9, s.output_tok_s));
    served_in += si * slot_s;
    served_out += so * slot_s;
    p_node_s += s.prefill_nodes * slot_s;
    d_node_s += s.decode_nodes * slot_s;
    r.peak_nodes = std::max(r.peak_nodes, s.prefill_nodes + s.decode_nodes);
  }
  r.node_hours = (p_node_s + d_node_s) / 3600;
  r.avg_nodes = r.node_hours / 24;
  r.avg_prefill_nodes = p_node_s / 86400;
  r.avg_decode_nodes = d_node_s / 86400;
  r.returned_node_hours = r.peak_nodes * 24.0 - r.node_hours;
  r.input_tokens_per_node_s = p_node_s > 0 ? served_in / p_node_s : 0;
  r.output_tokens_per_node_s = d_node_s > 0 ? served_out / d_node_s : 0;
  r.usd_per_gpu_hour = price_gpu_h;
  r.usd_per_node_hour = price_gpu_h * gpn;
  r.cost_usd = r.node_hours * r.usd_per_node_hour;
  const double in_m = served_in / 1e6, out_m = served_out / 1e6;
  r.revenue_usd = in_m * hit * in.price_hit + in_m * (1 - hit) * in.price_miss + out_m * in.price_output;
  r.margin = r.cost_usd > 0 ? (r.revenue_usd - r.cost_usd) / r.cost_usd : 0;
  return r;
}

std::vector<double> DayResult::hourly_nodes() const {
  const int per = std::max<int>(1, slots.size() / 24);
  std::vector<double> h(24, 0);
  for (size_t i = 0; i < slots.size(); ++i) h[i / per] += double(slots[i].prefill_nodes + slots[i].decode_nodes) / per;
  return h;
}

std::vector<double> DayResult::hourly_cost() const {
  std::vector<double> h = hourly_nodes();
  for (double& x : h) x *= usd_per_node_hour;
  return h;
}

std::vector<double> DayResult::hourly_revenue() const {
  const int per = std::max<int>(1, slots.size() / 24);
  const double slot_s = 86400.0 / slots.size();
  const double hit = in.disk_cache ? in.hit_rate : 0.0;
  std::vector<double> h(24, 0);
  for (size_t i = 0; i < slots.size(); ++i) {
    const auto& s = slots[i];
    const double in_m = s.input_tok_s * s.served * slot_s / 1e6, out_m = s.output_tok_s * s.served * slot_s / 1e6;
    h[i / per] += in_m * hit * in.price_hit + in_m * (1 - hit) * in.price_miss + out_m * in.price_output;
  }
  return h;
}

nlohmann::json DayResult::to_json(bool series) const {
  nlohmann::json j;
  j["peak_nodes"] = peak_nodes;
  j["avg_nodes"] = avg_nodes;
  j["avg_prefill_nodes"] = avg_prefill_nodes;
  j["avg_decode_nodes"] = avg_decode_nodes;
  j["node_hours"] = node_hours;
  j["returned_node_hours"] = returned_node_hours;
  j["cost_usd"] = cost_usd;
  j["revenue_usd"] = revenue_usd;
  j["margin"] = margin;
  j["input_tokens_per_node_s"] = input_tokens_per_node_s;
  j["output_tokens_per_node_s"] = output_tokens_per_node_s;
  j["output_tokens_per_user_s"] = decode_unit.output_tokens_per_user_s;
  j["prefill_capacity_per_node"] = prefill_capacity_per_node;
  j["decode_capacity_per_node"] = decode_capacity_per_node;
  j["decode_batch_per_gpu"] = decode_unit.spec.batch_per_gpu;
  j["mean_prompt_len"] = mean_prompt_len;
  j["mean_output_len"] = mean_output_len;
  j["prefill_attention_prompt_len"] = prefill_attention_prompt_len;
  j["inputs"] = {{"input_tokens", in.input_tokens},
                 {"hit_rate", in.disk_cache ? in.hit_rate : 0.0},
                 {"output_tokens", in.output_tokens},
                 {"kv_len", in.kv_len},
                 {"length_sigma", in.length_sigma},
                 {"prices_per_M", {in.price_hit, in.price_miss, in.price_output}},
                 {"usd_per_gpu_hour", usd_per_gpu_hour},
                 {"target_utilization", in.target_utilization},
                 {"hysteresis_half_hours", in.hysteresis_slots},
                 {"min_user_tok_s", in.min_user_tok_s},
                 {"max_nodes", in.max_nodes}};
  j["prefill_unit"] = prefill_unit.to_json();
  j["decode_unit"] = decode_unit.to_json();
  if (series) {
    const int per = std::max<int>(1, slots.size() / 24);
    nlohmann::json hours = nlohmann::json::array();
    const auto nodes = hourly_nodes(), cost = hourly_cost(), rev = hourly_revenue();
    for (int h = 0; h < 24; ++h) {
      double pn = 0, dn = 0, in_s = 0, out_s = 0;
      for (int k = 0; k < per; ++k) {
        const auto& s = slots[h * per + k];
        pn += double(s.prefill_nodes) / per;
        dn += double(s.decode_nodes) / per;
        in_s += s.input_tok_s / per;
        out_s += s.output_tok_s / per;
      }
      hours.push_back({{"hour", slots[h * per].hour},
                       {"nodes", nodes[h]},
                       {"prefill_nodes", pn},
                       {"decode_nodes", dn},
                       {"input_tok_s", in_s},
                       {"output_tok_s", out_s},
                       {"cost_usd", cost[h]},
                       {"revenue_usd", rev[h]}});
    }
    j["hours"] = hours;
  }
  return j;
}

EngineEfficiency calibrate_efficiency(const Hardware& hw, const model::ModelConfig& cfg, const DayInputs& in) {
  // Bisection on each role's efficiency; the two roles are independent.
  auto fit = [&](bool prefill, double target) {
    double lo = 0.02, hi = 1.0;
    for (int it = 0; it < 40; ++it) {
      const double mid = (lo + hi) / 2;
      DayInputs d = in;
      (prefill ? d.prefill.efficiency : d.decode.efficiency) = mid;
      const DayResult r = simulate_day(hw, cfg, d);
      const double got = prefill ? r.input_tokens_per_node_s : r.output_tokens_per_node_s;
      (got < target ? lo : hi) = mid;
    }
    return (lo + hi) / 2;
  };
  EngineEfficiency e;
  e.prefill = fit(true, 73.7e3);
  e.decode = fit(false, 14.8e3);
  return e;
}

}  // namespace epserve::sim
