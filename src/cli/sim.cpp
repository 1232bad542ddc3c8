// `epserve sim`: the cluster simulator (unit, day, sweep, calibrate). The model is in src/sim/.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>

#include "base/error.h"
#include "cli/command.h"
#include "model/config.h"
#include "sim/day.h"
#include "sim/engine_probe.h"
#include "dist/mpi_comm.h"
#include "kernels/roofline.h"
#include <chrono>
#include "sim/sweep.h"
#include "sim/unit.h"

namespace epserve::cli {
namespace {

using namespace epserve::sim;

// "608B", "168e9", "1.5M": a count with an optional K/M/B/T suffix.
double parse_count(const std::string& s, const std::string& flag) {
  EPS_REQUIRE(!s.empty(), flag + " is empty");
  double mult = 1;
  std::string body = s;
  switch (s.back()) {
    case 'k': case 'K': mult = 1e3; body.pop_back(); break;
    case 'M': mult = 1e6; body.pop_back(); break;
    case 'B': case 'G': mult = 1e9; body.pop_back(); break;
    case 'T': mult = 1e12; body.pop_back(); break;
    default: break;
  }
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(body, &used);
  } catch (...) {
    used = 0;
  }
  EPS_REQUIRE(used == body.size() && used > 0, flag + " '" + s + "' is not a number");
  v *= mult;
  EPS_REQUIRE(std::isfinite(v) && v > 0, flag + " must be positive (got '" + s + "')");
  return v;
}

bool parse_on_off(const std::string& s, const std::string& flag) {
  if (s == "on" || s == "true" || s == "1") return true;
  if (s == "off" || s == "false" || s == "0") return false;
  throw Error(flag + " must be on or off (got '" + s + "')");
}

model::ModelConfig load_model(const std::string& dir) {
  return dir.empty() ? model::ModelConfig::preset("v3-671b") : model::ModelConfig::load(dir);
}

std::vector<std::vector<double>> read_load_matrix(const std::string& path) {
  std::ifstream f(path);
  EPS_REQUIRE(bool(f), "cannot open the load matrix '" + path + "'");
  nlohmann::json j;
  try {
    f >> j;
  } catch (const std::exception& e) {
    throw Error("the load matrix '" + path + "' is not JSON: " + e.what());
  }
  if (j.is_object() && j.contains("load")) j = j["load"];
  EPS_REQUIRE(j.is_array() && !j.empty(), "the load matrix '" + path + "' must be [[layer 0 loads], ...]");
  std::vector<std::vector<double>> m;
  for (const auto& row : j) {
    EPS_REQUIRE(row.is_array(), "the load matrix '" + path + "' must be an array of arrays of numbers");
    std::vector<double> r;
    for (const auto& v : row) {
      EPS_REQUIRE(v.is_number(), "the load matrix '" + path + "' has a non-number");
      r.push_back(v.get<double>());
    }
    m.push_back(r);
  }
  return m;
}

void print_json(const nlohmann::json& j) { std::cout << j.dump(2) << "\n"; }

struct UnitOpts {
  std::string hw = "h800", model_dir, role = "decode", overlap = "on", load_matrix;
  int ep = 0, dp = 0, redundant = 32, ranks_per_node = 0;
  double tokens_per_gpu = 16384, batch_per_gpu = 128, kv_len = 0, hit_rate = 0;
  double eplb = 1, attn = 1, mtp = -1, efficiency = 0;
  bool json = false;
};

void add_unit_options(CLI::App* a, UnitOpts& o) {
  a->add_option("--hw", o.hw, "hardware preset: h800, h100, cpu (measured here)")->capture_default_str();
  a->add_option("--model", o.model_dir, "model directory with config.json (default: DeepSeek-V3 671B)");
  a->add_option("--role", o.role, "prefill or decode")->capture_default_str();
  a->add_option("--ep", o.ep, "GPUs in the unit (EP size); default 32 (prefill) or 144 (decode), DeepSeek's");
  a->add_option("--dp", o.dp, "attention data-parallel size (default: EP; attention TP = EP/DP)");
  a->add_option("--redundant", o.redundant, "redundant expert slots per MoE layer")->capture_default_str();
  a->add_option("--tokens-per-gpu", o.tokens_per_gpu, "prefill: computed prompt tokens per GPU per step")
      ->capture_default_str();
  a->add_option("--batch-per-gpu", o.batch_per_gpu, "decode: sequences per GPU")->capture_default_str();
  a->add_option("--kv-len", o.kv_len, "decode: mean KV length (default 4989); prefill: prompt length (default 4096)");
  a->add_option("--hit-rate", o.hit_rate, "prefill: share of prompt tokens read from the disk KV cache")
      ->capture_default_str();
  a->add_option("--overlap", o.overlap, "two-micro-batch overlap: on or off")->capture_default_str();
  a->add_option("--eplb-imbalance", o.eplb, "max/mean routed-expert load per GPU after EPLB (1 = perfect)")
      ->capture_default_str();
  a->add_option("--load-matrix", o.load_matrix,
                "JSON [[expert loads of layer 0], ...]: compute the EPLB imbalance from it");
  a->add_option("--attn-imbalance", o.attn, "max/mean attention load per DP rank")->capture_default_str();
  a->add_option("--mtp-accept", o.mtp,
                "decode: MTP draft tokens accepted per step, 0 = MTP off (default: 0)");
  a->add_option("--efficiency", o.efficiency, "override the fitted engine efficiency (0..1]");
  a->add_option("--ranks-per-node", o.ranks_per_node,
                "GPUs (ranks) per node, overriding the preset's; cpu: ranks on one host exchange through shared "
                "memory (threads per rank: OMP_NUM_THREADS)");
  a->add_flag("--json", o.json, "print one JSON object");
}

UnitSpec unit_spec(const UnitOpts& o, const model::ModelConfig& cfg) {
  UnitSpec s;
  s.role = parse_role(o.role);
  s.ep = o.ep != 0 ? o.ep : (s.role == Role::prefill ? 32 : 144);
  s.dp = o.dp;
  s.redundant = o.redundant;
  s.tokens_per_gpu = o.tokens_per_gpu;
  s.batch_per_gpu = o.batch_per_gpu;
  s.kv_len = o.kv_len;
  s.hit_rate = o.hit_rate;
  s.overlap = parse_on_off(o.overlap, "--overlap");
  s.eplb_imbalance = o.eplb;
  if (!o.load_matrix.empty())
    s.eplb_imbalance = eplb_imbalance(read_load_matrix(o.load_matrix), cfg.n_routed_experts + s.redundant, s.ep);
  s.attn_imbalance = o.attn;
  s.mtp_accept = o.mtp < 0 ? 0 : o.mtp;
  s.efficiency = o.efficiency;
  return s;
}

struct DayOpts {
  std::string hw = "h800", model_dir, input_tokens = "608B", output_tokens = "168B", arrival, svg;
  double hit_rate = 0.563, kv_len = 4989, sigma = 0.5, price_hit = 0.14, price_miss = 0.55, price_out = 2.19;
  double usd = 0, util = 0.85, speed = 20, mtp = 0;
  int hysteresis = 2, min_p = 1, min_d = 1, max_nodes = 0, prefill_ep = 32, decode_ep = 144, redundant = 32;
  double prefill_tokens = 16384;
  bool no_cache = false, json = false;
  std::string overlap = "on";
};

void add_day_options(CLI::App* a, DayOpts& o) {
  a->add_option("--hw", o.hw, "hardware preset: h800, h100, cpu")->capture_default_str();
  a->add_option("--model", o.model_dir, "model directory with config.json (default: DeepSeek-V3 671B)");
  a->add_option("--input-tokens", o.input_tokens, "input tokens per day (suffix K/M/B/T)")->capture_default_str();
  a->add_option("--hit-rate", o.hit_rate, "share of input tokens hitting the disk KV cache")->capture_default_str();
  a->add_option("--output-tokens", o.output_tokens, "output tokens per day")->capture_default_str();
  a->add_option("--kv-len", o.kv_len, "mean KV length per output token")->capture_default_str();
  a->add_option("--length-sigma", o.sigma, "lognormal sigma of prompt and output lengths (assumed)")
      ->capture_default_str();
  a->add_option("--price-hit", o.price_hit, "$ per M input tokens hitting the cache")->capture_default_str();
  a->add_option("--price-miss", o.price_miss, "$ per M input tokens missing the cache")->capture_default_str();
  a->add_option("--price-output", o.price_out, "$ per M output tokens")->capture_default_str();
  a->add_option("--usd-per-gpu-hour", o.usd, "GPU price (default: the hardware's, $2 for h800/h100)");
  a->add_option("--target-utilization", o.util, "load kept at or under this share of capacity")
      ->capture_default_str();
  a->add_option("--hysteresis", o.hysteresis, "half hours of lower demand before nodes are given back")
      ->capture_default_str();
  a->add_option("--min-prefill-units", o.min_p, "prefill units kept at night")->capture_default_str();
  a->add_option("--min-decode-units", o.min_d, "decode units kept at night")->capture_default_str();
  a->add_option("--max-nodes", o.max_nodes, "cap on nodes in service (0 = none)")->capture_default_str();
  a->add_option("--min-user-speed", o.speed, "decode batch: the largest keeping this output tok/s per user")
      ->capture_default_str();
  a->add_option("--prefill-ep", o.prefill_ep, "prefill unit EP size")->capture_default_str();
  a->add_option("--decode-ep", o.decode_ep, "decode unit EP size")->capture_default_str();
  a->add_option("--redundant", o.redundant, "redundant expert slots per MoE layer (both roles)")
      ->capture_default_str();
  a->add_option("--prefill-tokens-per-gpu", o.prefill_tokens, "prefill tokens per GPU per step")
      ->capture_default_str();
  a->add_option("--mtp-accept", o.mtp, "decode: MTP draft tokens accepted per step (0 = off)")->capture_default_str();
  a->add_option("--overlap", o.overlap, "two-micro-batch overlap in both roles: on or off")->capture_default_str();
  a->add_option("--arrival", o.arrival, "JSON array of 48 half-hour load weights from 12:00 (default: published)");
  a->add_flag("--no-disk-cache", o.no_cache, "compute every input token (hit rate 0)");
  a->add_flag("--json", o.json, "print one JSON object");
}

DayInputs day_inputs(const DayOpts& o) {
  DayInputs d;
  d.input_tokens = parse_count(o.input_tokens, "--input-tokens");
  d.output_tokens = parse_count(o.output_tokens, "--output-tokens");
  d.hit_rate = o.hit_rate;
  d.kv_len = o.kv_len;
  d.length_sigma = o.sigma;
  d.price_hit = o.price_hit;
  d.price_miss = o.price_miss;
  d.price_output = o.price_out;
  d.usd_per_gpu_hour = o.usd;
  d.target_utilization = o.util;
  d.hysteresis_slots = o.hysteresis;
  d.min_prefill_units = o.min_p;
  d.min_decode_units = o.min_d;
  d.max_nodes = o.max_nodes;
  d.min_user_tok_s = o.speed;
  d.disk_cache = !o.no_cache;
  d.prefill.ep = o.prefill_ep;
  d.decode.ep = o.decode_ep;
  d.prefill.redundant = d.decode.redundant = o.redundant;
  d.prefill.tokens_per_gpu = o.prefill_tokens;
  d.decode.mtp_accept = o.mtp;
  d.prefill.overlap = d.decode.overlap = parse_on_off(o.overlap, "--overlap");
  if (!o.arrival.empty()) {
    std::ifstream f(o.arrival);
    EPS_REQUIRE(bool(f), "cannot open the arrival curve '" + o.arrival + "'");
    nlohmann::json j;
    try {
      f >> j;
      d.arrival = j.get<std::vector<double>>();
    } catch (const std::exception& e) {
      throw Error("the arrival curve '" + o.arrival + "' must be a JSON array of 48 numbers");
    }
  }
  return d;
}

void print_unit_text(const UnitResult& r) {
  std::printf("%s unit on %s: EP%d (%d nodes), %d expert slots per GPU, %s\n", role_name(r.spec.role), r.hw.c_str(),
              r.spec.ep, r.nodes, r.experts_per_gpu, r.split ? "two micro-batches" : "one batch");
  std::printf("step %.2f ms (compute %.2f ms, communication %.2f ms before overlap)\n", r.step_ms, r.compute_ms,
              r.comm_ms);
  std::printf("per MoE layer, per micro-batch of %.0f tokens:\n", r.microbatch_tokens);
  for (const auto& s : r.stages) std::printf("  %-9s %8.3f ms\n", s.name.c_str(), s.ms);
  if (r.spec.role == Role::prefill)
    std::printf("input tokens/s per node %.0f (cache hits included), computed %.0f\n", r.input_tokens_per_node_s,
                r.computed_tokens_per_node_s);
  else
    std::printf("output tokens/s per node %.0f, per user %.1f\n", r.output_tokens_per_node_s,
                r.output_tokens_per_user_s);
  std::printf("memory per GPU: weights %.1f GB, KV %.1f GB%s\n", r.weights_gb, r.kv_gb,
              r.fits_in_memory ? "" : " (does NOT fit)");
}

CommandRegistration reg("sim", "cluster simulator: a unit's step time, a day of serving, sweeps", [](CLI::App& app) {
  app.require_subcommand(1);
  auto unit_o = std::make_shared<UnitOpts>();
  auto day_o = std::make_shared<DayOpts>();
  auto sweep_o = std::make_shared<DayOpts>();
  auto sweep_what = std::make_shared<std::string>();
  auto cal_o = std::make_shared<DayOpts>();

  CLI::App* unit = app.add_subcommand("unit", "step time and throughput of one prefill or decode unit");
  add_unit_options(unit, *unit_o);
  CLI::App* day = app.add_subcommand("day", "a day of serving: nodes per hour, cost, revenue, margin");
  add_day_options(day, *day_o);
  day->add_option("--svg", day_o->svg, "write the nodes and cost/revenue chart to FILE");
  CLI::App* sweep = app.add_subcommand("sweep", "explorations: ep, overlap, cache, hit-rate, speed, price");
  add_day_options(sweep, *sweep_o);
  sweep->add_option("--what", *sweep_what, "ep | overlap | cache | hit-rate | speed | price")->required();
  sweep->add_option("--svg", sweep_o->svg, "write the chart to FILE");
  CLI::App* cal = app.add_subcommand("calibrate", "refit the engine efficiencies to DeepSeek's published day");
  add_day_options(cal, *cal_o);
  struct EngineOpts {
    std::string model_dir, cases = "prefill:1x256,decode:1@128,decode:8@128,decode:32@128";
    std::string fit;
    std::vector<std::string> keep;
    std::vector<std::string> measured, check;
    int reps = 5;
    bool json = false;
  };
  auto eng_o = std::make_shared<EngineOpts>();
  CLI::App* eng = app.add_subcommand(
      "engine", "time the real engine here (one rank) and compare with the cpu preset's prediction");
  eng->add_option("--model", eng_o->model_dir, "checkpoint directory to time (e.g. the bench preset)");
  eng->add_option("--cases", eng_o->cases, "prefill:PROMPTSxLENGTH and decode:BATCH@CONTEXT, comma-separated")
      ->capture_default_str();
  eng->add_option("--reps", eng_o->reps, "timed repetitions per case (the best counts)")->capture_default_str();
  eng->add_option("--keep", eng_o->keep,
                  "with --fit: efficiencies held at the preset's values (comma-separated: hbm, decode_flop, gemm, "
                  "dequant, attn, hbm_dot, attn_prefill, gemm_bf16), e.g. the decode ones after a prefill-only change")
      ->delimiter(',');
  eng->add_option("--fit", eng_o->fit,
                  "refit the cpu preset's constants to these cases of the measurements (same syntax as --cases) "
                  "and predict every case with the fit");
  eng->add_option("--measured", eng_o->measured,
                  "instead of timing: the measurements of an earlier `sim engine --json` (repeatable), for --fit");
  eng->add_option("--check", eng_o->check,
                  "earlier measurements to predict but never fit (repeatable): a configuration the fit did not see");
  eng->add_flag("--json", eng_o->json, "print one JSON object");
  auto comm_reps = std::make_shared<int>(40);
  CLI::App* comm_cmd = app.add_subcommand(
      "comm", "under mpirun: all-to-all time against bytes per rank; fits a latency and a bandwidth (the cpu "
              "preset's ranks on one host)");
  comm_cmd->add_option("--reps", *comm_reps, "exchanges per size (the fastest counts)")->capture_default_str();

  return Action([=]() -> int {
    if (unit->parsed()) {
      const auto cfg = load_model(unit_o->model_dir);
      Hardware hw = hardware_preset(unit_o->hw);
      if (unit_o->ranks_per_node != 0) {
        EPS_REQUIRE(unit_o->ranks_per_node > 0, "--ranks-per-node must be positive");
        hw.gpus_per_node = unit_o->ranks_per_node;
      }
      const UnitResult r = simulate_unit(hw, cfg, unit_spec(*unit_o, cfg));
      if (unit_o->json) {
        auto j = r.to_json();
        j["hardware"] = hardware_json(hw);
        print_json(j);
      }
      else print_unit_text(r);
      return 0;
    }
    if (day->parsed()) {
      const auto cfg = load_model(day_o->model_dir);
      const Hardware hw = hardware_preset(day_o->hw);
      const DayResult r = simulate_day(hw, cfg, day_inputs(*day_o));
      if (!day_o->svg.empty()) write_svg(day_o->svg, day_panels(r));
      if (day_o->json) {
        print_json(r.to_json());
      } else {
        std::printf("nodes: peak %d, average %.2f (prefill %.1f, decode %.1f); %.0f node-hours given back\n",
                    r.peak_nodes, r.avg_nodes, r.avg_prefill_nodes, r.avg_decode_nodes, r.returned_node_hours);
        std::printf("per node: %.0f input tok/s (prefill), %.0f output tok/s (decode), %.1f tok/s per user\n",
                    r.input_tokens_per_node_s, r.output_tokens_per_node_s, r.decode_unit.output_tokens_per_user_s);
        std::printf("cost $%.0f, revenue $%.0f, cost-profit margin %.0f%%\n", r.cost_usd, r.revenue_usd,
                    r.margin * 100);
      }
      return 0;
    }
    if (sweep->parsed()) {
      const auto cfg = load_model(sweep_o->model_dir);
      const Hardware hw = hardware_preset(sweep_o->hw);
      const SweepResult r = run_sweep(*sweep_what, hw, cfg, day_inputs(*sweep_o));
      if (!sweep_o->svg.empty()) write_svg(sweep_o->svg, r.panels);
      if (sweep_o->json) print_json(r.table);
      else std::cout << r.table.dump(1) << "\n";
      return 0;
    }
    if (cal->parsed()) {
      const auto cfg = load_model(cal_o->model_dir);
      const Hardware hw = hardware_preset(cal_o->hw);
      const EngineEfficiency fit = calibrate_efficiency(hw, cfg, day_inputs(*cal_o));
      const EngineEfficiency now = fitted_efficiency();
      nlohmann::json j{{"fitted", {{"prefill", fit.prefill}, {"decode", fit.decode}}},
                       {"stored", {{"prefill", now.prefill}, {"decode", now.decode}}},
                       {"targets", {{"input_tokens_per_node_s", 73.7e3}, {"output_tokens_per_node_s", 14.8e3}}}};
      print_json(j);
      return 0;
    }
    if (comm_cmd->parsed()) {
      EPS_REQUIRE(dist::launched_by_mpirun(), "sim comm runs under mpirun (mpirun -n 2 epserve sim comm)");
      dist::MpiComm comm;
      const int R = comm.size();
      // Bytes this rank sends in all (to every rank, itself included: the runner's convention).
      const std::vector<double> totals = {0, 8e3, 64e3, 256e3, 1e6, 4e6};
      nlohmann::json pts = nlohmann::json::array();
      std::vector<double> xs, ys;
      for (double total : totals) {
        double best = 1e30;
        for (int r = 0; r < *comm_reps; ++r) {
          std::vector<dist::Bytes> send(R, dist::Bytes(size_t(total / R), uint8_t(r)));
          comm.allreduce_max(0);  // start together
          const auto t0 = std::chrono::steady_clock::now();
          comm.all_to_all(std::move(send));
          const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
          best = std::min(best, double(comm.allreduce_max(long(us * 1000))) / 1000);  // the slower rank
        }
        pts.push_back({{"bytes_per_rank", total}, {"best_us", best}});
        xs.push_back(total);
        ys.push_back(best);
      }
      // time = latency + bytes / bandwidth, least squares on relative errors (the sizes span three
      // orders of magnitude), over the sizes a decode or prefill step sends (8 KB to 4 MB).
      double a11 = 0, a12 = 0, a22 = 0, b1 = 0, b2 = 0;
      for (size_t i = 0; i < xs.size(); ++i) {
        if (xs[i] <= 0) continue;
        const double u = 1 / ys[i], v = xs[i] / ys[i];
        a11 += u * u, a12 += u * v, a22 += v * v, b1 += u, b2 += v;
      }
      const double det = a11 * a22 - a12 * a12;
      const double latency = (b1 * a22 - b2 * a12) / det, slope = (a11 * b2 - a12 * b1) / det;
      if (comm.rank() == 0)
        print_json({{"ranks", R},
                    {"points", pts},
                    {"latency_us", latency},
                    {"gb_per_s", slope > 0 ? 1e-3 / slope : 0.0},
                    {"read_gbps_one_thread", kernels::measure_read_bandwidth_gbps(size_t(128) << 20)}});
      return 0;
    }
    if (eng->parsed()) {
      // Measurements: this run's (--model), or earlier runs' (--measured, --check), each with the
      // ceilings measured with it and its own model's config.
      struct Set {
        std::string model_dir;
        model::ModelConfig cfg;
        Hardware hw;
        std::vector<EngineTiming> timings;
        bool fit = true;  // --check sets are predicted, never fitted
      };
      std::vector<Set> sets;
      auto replay = [&](const std::string& file, bool fit) {
        std::ifstream f(file);
        EPS_REQUIRE(bool(f), "cannot open '" + file + "'");
        nlohmann::json prev;
        try {
          f >> prev;
          Set st;
          st.model_dir = prev.at("model");
          // The config travels in the file, so that a measurement replays without its checkpoint.
          st.cfg = prev.contains("config") ? model::ModelConfig::from_json(prev["config"], file)
                                           : model::ModelConfig::load(st.model_dir);
          const auto& c = prev.at("ceilings");
          CpuMeasurement m;
          m.mem_gbps = c.at("read_gbps");
          m.fma_gflops = c.at("fp32_fma_gflops");
          m.bf16_gflops = c.at("bf16_dot_gflops");
          m.threads = c.at("threads");
          st.hw = cpu_preset(m);
          st.fit = fit;
          for (const auto& x : prev.at("cases")) {
            EngineTiming t;
            t.c = parse_engine_cases(x.at("spec").get<std::string>()).front();
            t.threads = x.at("threads");
            t.best_ms = x.at("measured_best_wall_ms");
            t.best_cpu_ms = x.at("measured_best_cpu_ms");
            t.median_ms = x.at("measured_median_ms");
            t.distinct_experts = x.at("distinct_experts_per_layer");
            st.timings.push_back(t);
          }
          sets.push_back(std::move(st));
        } catch (const nlohmann::json::exception& e) {
          throw Error("'" + file + "' is not the JSON of `epserve sim engine --json`: " + e.what());
        }
      };
      for (const auto& f : eng_o->measured) replay(f, true);
      for (const auto& f : eng_o->check) replay(f, false);
      if (sets.empty()) {
        EPS_REQUIRE(!eng_o->model_dir.empty(), "give --model (to measure) or --measured FILE");
        const auto cases = parse_engine_cases(eng_o->cases);
        Set st;
        st.model_dir = eng_o->model_dir;
        st.cfg = model::ModelConfig::load(st.model_dir);
        // The ceilings are measured between the rounds too and the best kept, as the best step is:
        // both are then what the machine does when the other processes leave it alone.
        // One probe buffer for all of them: mapping and unmapping one per measurement slowed the
        // steps timed after it (kernels/roofline.h).
        const kernels::ReadBandwidthProbe probe(size_t(128) << 20);
        CpuMeasurement ceil = measure_cpu(&probe);
        auto remeasure = [&] {
          const CpuMeasurement m = measure_cpu(&probe);
          ceil.mem_gbps = std::max(ceil.mem_gbps, m.mem_gbps);
          ceil.fma_gflops = std::max(ceil.fma_gflops, m.fma_gflops);
          ceil.bf16_gflops = std::max(ceil.bf16_gflops, m.bf16_gflops);
        };
        model::LoadOptions lo;
        lo.progress = false;
        model::Model mdl(model::ModelWeights::load(st.model_dir, lo));
        st.timings = measure_engine(mdl, cases, eng_o->reps, kernels::Numerics::kDeepSeek, remeasure);
        st.hw = cpu_preset(ceil);
        sets.push_back(std::move(st));
      }
      nlohmann::json j;
      std::vector<std::pair<size_t, size_t>> fitted;  // (set, timing)
      if (!eng_o->fit.empty()) {
        const auto specs = parse_engine_cases(eng_o->fit);
        std::vector<FitPoint> points;
        nlohmann::json labels = nlohmann::json::array();
        for (size_t s = 0; s < sets.size(); ++s) {
          if (!sets[s].fit) continue;
          for (size_t i = 0; i < sets[s].timings.size(); ++i) {
            const auto& t = sets[s].timings[i];
            for (const auto& fc : specs)
              if (t.c.role == fc.role && t.c.batch == fc.batch && t.c.length == fc.length) {
                points.push_back({sets[s].hw, sets[s].cfg, t.c, t.measured_ms()});
                fitted.push_back({s, i});
                labels.push_back(sets[s].model_dir + ": " + t.c.label());
              }
          }
        }
        const CpuFit fit = fit_cpu_efficiencies(points, eng_o->keep);
        for (auto& st : sets) fit.apply(st.hw);
        nlohmann::json f = nlohmann::json::object();
        for (size_t i = 0; i < fit.names.size(); ++i) f[fit.names[i]] = fit.values[i];
        j["fit"] = {{"constants", f}, {"cases", labels}};
      }
      j["sets"] = nlohmann::json::array();
      for (size_t s = 0; s < sets.size(); ++s) {
        const auto& st = sets[s];
        nlohmann::json o{{"model", st.model_dir},
                         {"config", st.cfg.to_json()},
                         {"ceilings",
                          {{"threads", st.hw.sms},
                           {"read_gbps", st.hw.hbm_gbps},
                           {"fp32_fma_gflops", st.hw.fp32_tflops * 1e3},
                           {"bf16_dot_gflops", st.hw.fp8_tflops == st.hw.fp32_tflops ? 0.0 : st.hw.fp8_tflops * 1e3}}},
                         {"hardware", hardware_json(st.hw)},
                         {"cases", nlohmann::json::array()}};
        for (size_t i = 0; i < st.timings.size(); ++i) {
          auto c = engine_timing_json(st.timings[i], predict_engine_step_ms(st.hw, st.cfg, st.timings[i].c));
          c["fitted"] = std::find(fitted.begin(), fitted.end(), std::pair{s, i}) != fitted.end();
          o["cases"].push_back(c);
        }
        j["sets"].push_back(o);
      }
      // One measurement: its object at the top level (the form --measured reads back).
      if (sets.size() == 1) {
        auto fit = j.contains("fit") ? j["fit"] : nlohmann::json();
        j = j["sets"][0];
        if (!fit.is_null()) j["fit"] = fit;
      }
      if (eng_o->json) {
        print_json(j);
        return 0;
      }
      if (j.contains("fit")) std::printf("fitted: %s\n", j["fit"]["constants"].dump().c_str());
      const auto all = j.contains("sets") ? j["sets"] : nlohmann::json::array({j});
      for (const auto& o : all) {
        const auto& c = o["ceilings"];
        std::printf("%s: %d thread(s), read %.1f GB/s, FP32 FMA %.0f GFLOP/s, dot %.0f GFLOP/s\n",
                    o["model"].get<std::string>().c_str(), c["threads"].get<int>(), c["read_gbps"].get<double>(),
                    c["fp32_fma_gflops"].get<double>(), c["bf16_dot_gflops"].get<double>());
        std::printf("  %-18s %10s %10s %9s\n", "case", "measured", "predicted", "error");
        for (const auto& x : o["cases"])
          std::printf("  %-18s %10.1f %10.1f %+8.1f%% %s\n", x["case"].get<std::string>().c_str(),
                      x["measured_ms"].get<double>(), x["predicted_ms"].get<double>(), 100 * x["error"].get<double>(),
                      x["fitted"].get<bool>() ? "fit" : "");
      }
      return 0;
    }
    return 1;
  });
});

}  // namespace
}  // namespace epserve::cli
