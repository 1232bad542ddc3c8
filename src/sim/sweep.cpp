#include "sim/sweep.h"

#include <cmath>
#include <cstdio>

#include "base/error.h"

namespace epserve::sim {

namespace {

std::vector<std::string> hour_labels(double start) {
  std::vector<std::string> l;
  for (int h = 0; h < 24; ++h) {
    char b[16];
    std::snprintf(b, sizeof b, "%02d:00", (int(start) + h) % 24);
    l.push_back(b);
  }
  return l;
}

std::vector<double> iota24() {
  std::vector<double> x(24);
  for (int i = 0; i < 24; ++i) x[i] = i;
  return x;
}

// Smallest redundant-slot count (at least 32, DeepSeek's) that the EP size divides.
int redundant_for(int ep, int experts) {
  int r = 32;
  while ((experts + r) % ep != 0) ++r;
  return r;
}

Series line(const std::string& name, bool dashed = false) {
  Series s;
  s.name = name;
  s.dashed = dashed;
  return s;
}

Series stairs(const std::string& name, std::vector<double> x, std::vector<double> y, bool dashed = false) {
  Series s = line(name, dashed);
  s.x = std::move(x);
  s.y = std::move(y);
  s.step = true;
  return s;
}

nlohmann::json merged(nlohmann::json a, const nlohmann::json& b) {
  a.update(b);
  return a;
}

nlohmann::json day_summary(const DayResult& d) {
  return {{"peak_nodes", d.peak_nodes},
          {"avg_nodes", d.avg_nodes},
          {"cost_usd", d.cost_usd},
          {"revenue_usd", d.revenue_usd},
          {"margin", d.margin},
          {"input_tokens_per_node_s", d.input_tokens_per_node_s},
          {"output_tokens_per_node_s", d.output_tokens_per_node_s}};
}

}  // namespace

std::vector<std::string> sweep_names() { return {"ep", "overlap", "cache", "hit-rate", "speed", "price"}; }

std::vector<Panel> day_panels(const DayResult& r) {
  const auto x = iota24();
  Panel nodes;
  nodes.title = "Nodes in service per hour (" + std::to_string(r.peak_nodes) + " peak)";
  nodes.x_label = "hour (UTC+8), starting " + hour_labels(r.in.start_hour)[0];
  nodes.y_label = "nodes (8 GPUs each)";
  nodes.x_tick_labels = hour_labels(r.in.start_hour);
  std::vector<double> p(24, 0), d(24, 0);
  const int per = std::max<int>(1, r.slots.size() / 24);
  for (size_t i = 0; i < r.slots.size(); ++i) {
    p[i / per] += double(r.slots[i].prefill_nodes) / per;
    d[i / per] += double(r.slots[i].decode_nodes) / per;
  }
  nodes.series.push_back(stairs("total", x, r.hourly_nodes()));
  nodes.series.push_back(stairs("decode", x, d, true));
  nodes.series.push_back(stairs("prefill", x, p, true));
  Panel money;
  money.title = "Cost vs revenue per hour (margin " + std::to_string(int(std::lround(r.margin * 100))) + "%)";
  money.x_label = nodes.x_label;
  money.y_label = "US$ per hour";
  money.x_tick_labels = nodes.x_tick_labels;
  money.series.push_back(stairs("revenue", x, r.hourly_revenue()));
  money.series.push_back(stairs("cost", x, r.hourly_cost()));
  return {nodes, money};
}

SweepResult run_sweep(const std::string& what, const Hardware& hw, const model::ModelConfig& cfg,
                      const DayInputs& day) {
  SweepResult s;
  s.what = what;
  nlohmann::json rows = nlohmann::json::array();
  if (what == "ep") {
    Panel P;
    P.title = "Decode: EP size vs throughput (" + hw.name + ", KV " + std::to_string(int(day.kv_len)) + ")";
    P.x_label = "EP size (GPUs per decode unit)";
    P.y_label = "output tokens/s per node";
    Series slo = line("user >= " + std::to_string(int(day.min_user_tok_s)) + " tok/s"), fixed = line("batch 128/GPU", true);
    for (int ep : {32, 48, 64, 72, 96, 144, 160, 288, 320}) {
      UnitSpec u = day.decode;
      u.ep = ep;
      u.redundant = redundant_for(ep, cfg.n_routed_experts);
      u.kv_len = day.kv_len;
      const UnitResult a = decode_at_slo(hw, cfg, u, day.min_user_tok_s);
      u.batch_per_gpu = 128;
      const UnitResult b = simulate_unit(hw, cfg, u);
      rows.push_back({{"ep", ep},
                      {"redundant", u.redundant},
                      {"experts_per_gpu", a.experts_per_gpu},
                      {"slo_batch_per_gpu", a.spec.batch_per_gpu},
                      {"slo_output_tokens_per_node_s", a.output_tokens_per_node_s},
                      {"slo_output_tokens_per_user_s", a.output_tokens_per_user_s},
                      {"batch128_step_ms", b.step_ms},
                      {"batch128_output_tokens_per_node_s", b.output_tokens_per_node_s},
                      {"batch128_fits_in_memory", b.fits_in_memory}});
      slo.x.push_back(ep);
      slo.y.push_back(a.output_tokens_per_node_s);
      fixed.x.push_back(ep);
      fixed.y.push_back(b.output_tokens_per_node_s);
    }
    P.series = {slo, fixed};
    s.panels = {P};
    s.table["description"] = "decode unit throughput per node as the EP size grows (redundant slots: the "
                             "smallest count >= 32 that the EP size divides)";
  } else if (what == "overlap") {
    Panel P;
    P.title = "Decode: two-micro-batch overlap on vs off (" + hw.name + ", EP" + std::to_string(day.decode.ep) + ")";
    P.x_label = "sequences per GPU";
    P.y_label = "output tokens/s per node";
    Series on = line("overlap on"), off = line("overlap off", true);
    for (int b : {8, 16, 32, 48, 64, 96, 128, 160, 192, 256}) {
      UnitSpec u = day.decode;
      u.kv_len = day.kv_len;
      u.batch_per_gpu = b;
      u.overlap = true;
      const UnitResult a = simulate_unit(hw, cfg, u);
      u.overlap = false;
      const UnitResult c = simulate_unit(hw, cfg, u);
      rows.push_back({{"role", "decode"},
                      {"batch_per_gpu", b},
                      {"on_step_ms", a.step_ms},
                      {"off_step_ms", c.step_ms},
                      {"on_output_tokens_per_node_s", a.output_tokens_per_node_s},
                      {"off_output_tokens_per_node_s", c.output_tokens_per_node_s},
                      {"speedup", c.step_ms / a.step_ms}});
      on.x.push_back(b);
      on.y.push_back(a.output_tokens_per_node_s);
      off.x.push_back(b);
      off.y.push_back(c.output_tokens_per_node_s);
    }
    for (int t : {2048, 4096, 8192, 16384, 32768}) {
      UnitSpec u = day.prefill;
      u.tokens_per_gpu = t;
      u.kv_len = 4096;
      u.hit_rate = day.hit_rate;
      u.overlap = true;
      const UnitResult a = simulate_unit(hw, cfg, u);
      u.overlap = false;
      const UnitResult c = simulate_unit(hw, cfg, u);
      rows.push_back({{"role", "prefill"},
                      {"tokens_per_gpu", t},
                      {"on_step_ms", a.step_ms},
                      {"off_step_ms", c.step_ms},
                      {"on_input_tokens_per_node_s", a.input_tokens_per_node_s},
                      {"off_input_tokens_per_node_s", c.input_tokens_per_node_s},
                      {"speedup", c.step_ms / a.step_ms}});
    }
    P.series = {on, off};
    s.panels = {P};
    s.table["description"] = "step time with and without DeepSeek's two-micro-batch overlap";
  } else if (what == "cache") {
    DayInputs nc = day;
    nc.disk_cache = false;
    const DayResult a = simulate_day(hw, cfg, day), b = simulate_day(hw, cfg, nc);
    rows.push_back(merged({{"disk_cache", true}}, day_summary(a)));
    rows.push_back(merged({{"disk_cache", false}}, day_summary(b)));
    Panel P;
    P.title = "The published day with and without the disk KV cache";
    P.x_label = "hour (UTC+8), starting " + hour_labels(day.start_hour)[0];
    P.y_label = "nodes in service";
    P.x_tick_labels = hour_labels(day.start_hour);
    const auto x = iota24();
    P.series.push_back(stairs("with cache", x, a.hourly_nodes()));
    P.series.push_back(stairs("no disk cache", x, b.hourly_nodes(), true));
    Panel M;
    M.title = "Cost per hour with and without the disk KV cache";
    M.x_label = P.x_label;
    M.y_label = "US$ per hour";
    M.x_tick_labels = P.x_tick_labels;
    M.series.push_back(stairs("with cache", x, a.hourly_cost()));
    M.series.push_back(stairs("no disk cache", x, b.hourly_cost(), true));
    s.panels = {P, M};
    s.table["description"] = "the published day with the disk KV cache (56.3% hits) and without (all input computed)";
  } else if (what == "hit-rate") {
    Panel P;
    P.title = "Cache hit rate vs nodes (the published day's tokens)";
    P.x_label = "share of input tokens hitting the disk KV cache";
    P.y_label = "nodes";
    Series avg = line("average nodes"), peak = line("peak nodes", true), pre = line("avg prefill nodes");
    for (int i = 0; i <= 9; ++i) {
      DayInputs d = day;
      d.hit_rate = 0.1 * i;
      const DayResult r = simulate_day(hw, cfg, d);
      rows.push_back(merged({{"hit_rate", d.hit_rate}, {"avg_prefill_nodes", r.avg_prefill_nodes}}, day_summary(r)));
      avg.x.push_back(d.hit_rate);
      avg.y.push_back(r.avg_nodes);
      peak.x.push_back(d.hit_rate);
      peak.y.push_back(r.peak_nodes);
      pre.x.push_back(d.hit_rate);
      pre.y.push_back(r.avg_prefill_nodes);
    }
    P.series = {avg, peak, pre};
    s.panels = {P};
    s.table["description"] = "nodes needed for the published day as the cache hit rate varies (revenue "
                             "falls too: hits are priced lower)";
  } else if (what == "speed") {
    Panel P;
    P.title = "Decode: output speed per user vs throughput per node (" + hw.name + ")";
    P.x_label = "output tokens/s per user";
    P.y_label = "output tokens/s per node";
    for (int ep : {72, 144, 288}) {
      Series se = line("EP" + std::to_string(ep));
      for (int b : {1, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256}) {
        UnitSpec u = day.decode;
        u.ep = ep;
        u.redundant = redundant_for(ep, cfg.n_routed_experts);
        u.kv_len = day.kv_len;
        u.batch_per_gpu = b;
        const UnitResult r = simulate_unit(hw, cfg, u);
        if (!r.fits_in_memory) break;
        rows.push_back({{"ep", ep},
                        {"batch_per_gpu", b},
                        {"output_tokens_per_user_s", r.output_tokens_per_user_s},
                        {"output_tokens_per_node_s", r.output_tokens_per_node_s},
                        {"step_ms", r.step_ms}});
        se.x.push_back(r.output_tokens_per_user_s);
        se.y.push_back(r.output_tokens_per_node_s);
      }
      P.series.push_back(se);
    }
    s.panels = {P};
    s.table["description"] = "the latency-throughput trade-off of a decode unit (batch 1..256 per GPU, "
                             "while the KV cache fits)";
  } else if (what == "price") {
    const DayResult r = simulate_day(hw, cfg, day);
    const double hit = day.disk_cache ? day.hit_rate : 0.0;
    const double in_m = day.input_tokens / 1e6, out_m = day.output_tokens / 1e6;
    const double rev_r1 = r.revenue_usd;
    // V3 list prices at the time: $0.07 hit / $0.27 miss / $1.10 output per M tokens [3P DeepSeek API].
    const double rev_v3 = in_m * hit * 0.07 + in_m * (1 - hit) * 0.27 + out_m * 1.10;
    Panel P;
    P.title = "GPU price vs cost-profit margin (the published day)";
    P.x_label = "US$ per GPU-hour";
    P.y_label = "cost-profit margin (%)";
    Series a = line("R1 prices"), b = line("V3 prices", true);
    for (int i = 1; i <= 16; ++i) {
      const double price = 0.25 * i;
      const double cost = r.node_hours * hw.gpus_per_node * price;
      const double m1 = (rev_r1 - cost) / cost, m3 = (rev_v3 - cost) / cost;
      rows.push_back({{"usd_per_gpu_hour", price}, {"cost_usd", cost}, {"margin_r1", m1}, {"margin_v3", m3}});
      a.x.push_back(price);
      a.y.push_back(m1 * 100);
      b.x.push_back(price);
      b.y.push_back(m3 * 100);
    }
    P.series = {a, b};
    s.panels = {P};
    s.table["description"] = "margin = (revenue - cost) / cost for the simulated day's node-hours";
    s.table["revenue_r1_usd"] = rev_r1;
    s.table["revenue_v3_usd"] = rev_v3;
  } else {
    std::string names;
    for (const auto& n : sweep_names()) names += (names.empty() ? "" : ", ") + n;
    throw Error("unknown sweep '" + what + "' (known: " + names + ")");
  }
  s.table["what"] = what;
  s.table["hw"] = hw.name;
  s.table["rows"] = rows;
  return s;
}

}  // namespace epserve::sim
