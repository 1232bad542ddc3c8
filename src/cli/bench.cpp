// `epserve bench`: prefill and decode throughput of the engine on one process, as fractions of this
// machine's ceilings (measured here: memory read bandwidth, FMA / BF16-dot peaks).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "base/error.h"
#include "cli/command.h"
#include "cli/parse.h"
#include "kernels/roofline.h"
#include "model/model.h"

namespace epserve::cli {
namespace {

using nlohmann::json;
using clock_type = std::chrono::steady_clock;

struct BenchArgs {
  std::string model_dir, numerics = "deepseek", batches = "1,8,32";
  int prompt_len = 512, prefill_prompts = 4, prefill_reps = 3, decode_context = 128, decode_steps = 16;
  bool json_output = false;
};

double seconds_since(clock_type::time_point t) { return std::chrono::duration<double>(clock_type::now() - t).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Weight bytes a decode step reads: everything but the embedding table (one row per token) once,
// plus each routed expert that at least one token chose.
double decode_bytes_per_step(const model::ModelConfig& c, const std::vector<model::Routing>& routing) {
  double bytes = model::weight_bytes(c, 0) - double(c.vocab_size) * c.hidden_size * 2;
  const double expert = model::parameter_counts(c).expert * (1.0 + 4.0 / 16384);
  for (const auto& r : routing) bytes += expert * std::set<int>(r.expert.begin(), r.expert.end()).size();
  return bytes;
}

// Multiply-adds ×2 per prompt of length n in a prefill forward (naive attention path).
double prefill_flops(const model::ModelConfig& c, int n) {
  const auto p = model::parameter_counts(c);
  const double H = c.num_attention_heads, moe_layers = c.num_hidden_layers - c.first_k_dense_replace;
  double per_token = c.num_hidden_layers * p.attention_per_layer + c.first_k_dense_replace * p.dense_mlp_per_layer +
                     moe_layers * (p.expert * (c.num_experts_per_tok + c.n_shared_experts) + p.gate_per_layer);
  double total = 2 * per_token * n;
  // Core attention over a causal prompt: scores (qk dims) and values (v dims), n²/2 pairs per head.
  total += c.num_hidden_layers * 2.0 * H * (c.qk_head_dim() + c.v_head_dim) * n * (n + 1) / 2.0;
  total += 2.0 * p.embedding;  // lm_head on the last position
  return total;
}

int run_bench(const BenchArgs& a) {
  const auto numerics = parse_numerics(a.numerics);
  const auto batches = parse_token_list(a.batches, "--batches");
  EPS_REQUIRE(a.prompt_len > 0 && a.prefill_prompts > 0 && a.prefill_reps > 0 && a.decode_context > 0 && a.decode_steps > 0,
              "--prompt-len, --prefill-prompts, --prefill-reps, --decode-context and --decode-steps must be positive");
  std::fprintf(stderr, "bench: measuring this machine's ceilings...\n");
  // The ceilings are measured again next to each measurement, and each decode figure is a fraction
  // of the better read bandwidth of the probes just before and just after it: on a shared host the
  // read bandwidth moves by 2x from minute to minute, and a single probe at the start, taken in a
  // fast minute or a slow one, made batch-1 fractions anywhere from 0.45 to 1.6 (docs/PERFORMANCE.md). One probe buffer
  // serves the whole run (no mapping per measurement: kernels/roofline.h says why).
  auto roof = kernels::measure_roofline();
  kernels::ReadBandwidthProbe probe;
  struct Probe {
    double read_gbps, arithmetic_gflops;
  };
  std::vector<Probe> probes;
  model::Model m(model::ModelWeights::load(a.model_dir));
  const auto& c = m.config();
  std::mt19937 rng(1);
  auto prompt = [&](int len) {
    std::vector<int> p(len);
    for (int& t : p) t = int(rng() % uint32_t(c.vocab_size));
    return p;
  };
  // The arithmetic ceiling for the format: the better of BF16 dot products (FP8 values are exact in
  // BF16) and FP32 FMAs (the kernels choose the faster too: kernels::bf16_dot_in_use), or AMX's
  // where the kernels use it (kernels::amx_in_use); exact numerics, FP32 FMAs.
  enum class Peak { kFma, kDot, kAmx };
  const bool ds = numerics == kernels::Numerics::kDeepSeek;
  const Peak ceiling = ds && kernels::amx_in_use() && roof.amx_bf16_gflops > 0 ? Peak::kAmx
                       : ds && roof.has_bf16_dot && roof.bf16_dot_gflops > roof.fp32_fma_gflops ? Peak::kDot
                                                                                               : Peak::kFma;
  const char* ceiling_name = ceiling == Peak::kAmx ? "amx_bf16" : ceiling == Peak::kDot ? "bf16_dot" : "fp32_fma";
  auto measure_ceilings = [&] {
    probes.push_back({probe.gbps(), ceiling == Peak::kAmx   ? kernels::measure_amx_bf16_gflops()
                                    : ceiling == Peak::kDot ? kernels::measure_bf16_dot_gflops()
                                                            : kernels::measure_fp32_fma_gflops()});
  };
  // The better read bandwidth of the last two probes (the ones around the figure just measured).
  auto read_around = [&] { return std::max(probes[probes.size() - 2].read_gbps, probes.back().read_gbps); };
  json out = {{"model", a.model_dir}, {"numerics", a.numerics}};
  measure_ceilings();

  // Prefill: `prefill_prompts` prompts of `prompt_len` tokens in one forward, timed in the steady
  // state of a server: after one untimed forward of the same shape has touched the weights and
  // grown the engine's buffers (base/scratch.h), so that page faults are not timed. The fastest of
  // `prefill_reps` forwards is the figure, as the ceilings are the best of their runs: on these
  // shared machines another tenant only ever makes a run slower (every time is in the JSON).
  {
    std::vector<model::SequenceKv> kvs;
    std::vector<std::vector<int>> prompts;
    std::vector<model::SequenceInput> batch;
    auto fresh_batch = [&] {
      kvs.clear();
      prompts.clear();
      batch.clear();
      for (int i = 0; i < a.prefill_prompts; ++i) {
        kvs.push_back(m.new_sequence());
        prompts.push_back(prompt(a.prompt_len));
      }
      for (int i = 0; i < a.prefill_prompts; ++i) batch.push_back({&kvs[i], prompts[i]});
    };
    fresh_batch();
    m.forward(batch, {numerics});
    std::vector<double> times;
    model::ForwardProfile best_profile;
    for (int rep = 0; rep < a.prefill_reps; ++rep) {
      fresh_batch();
      m.profile() = {};
      const auto t0 = clock_type::now();
      m.forward(batch, {numerics});
      times.push_back(seconds_since(t0));
      if (times.back() <= *std::min_element(times.begin(), times.end())) best_profile = m.profile();
    }
    const double s = *std::min_element(times.begin(), times.end());
    const double tokens = double(a.prefill_prompts) * a.prompt_len;
    const double flops = a.prefill_prompts * prefill_flops(c, a.prompt_len);
    const double gflops = flops / s / 1e9;
    const auto& pr = best_profile;
    out["prefill_tokens_per_s"] = tokens / s;
    out["prefill"] = {{"prompts", a.prefill_prompts},
                      {"prompt_len", a.prompt_len},
                      {"seconds", s},
                      {"seconds_each", times},
                      {"median_tokens_per_s", tokens / median(times)},
                      {"gflops", gflops},
                      {"profile_s",
                       {{"attention", pr.attention}, {"moe", pr.moe}, {"dense_mlp", pr.dense_mlp},
                        {"norms", pr.norms}, {"embed", pr.embed}, {"lm_head", pr.lm_head}}}};
    out["prefill"]["median_gflops"] = flops / median(times) / 1e9;
    measure_ceilings();
  }

  // Decode at each batch size: sequences with `decode_context` tokens of context, then timed steps.
  out["decode_tokens_per_s"] = json::object();
  out["decode"] = json::object();
  for (int B : batches) {
    EPS_REQUIRE(B > 0, "--batches: sizes must be positive");
    std::vector<model::SequenceKv> kvs;
    std::vector<std::vector<int>> prompts;
    for (int i = 0; i < B; ++i) {
      kvs.push_back(m.new_sequence());
      prompts.push_back(prompt(a.decode_context));
    }
    for (int i = 0; i < B; i += 8) {  // prefill the contexts in groups (untimed)
      std::vector<model::SequenceInput> batch;
      for (int j = i; j < std::min(B, i + 8); ++j) batch.push_back({&kvs[j], prompts[j]});
      m.forward(batch, {numerics});
    }
    m.profile() = {};
    double seconds = 0, bytes = 0;
    std::vector<double> steps;
    std::vector<int> next(B);
    for (int step = 0; step < a.decode_steps; ++step) {
      for (int& t : next) t = int(rng() % uint32_t(c.vocab_size));
      std::vector<model::SequenceInput> batch;
      for (int i = 0; i < B; ++i) batch.push_back({&kvs[i], std::span<const int>(&next[i], 1)});
      std::vector<model::Routing> routing;
      model::ForwardOptions options{numerics, model::AttentionPath::kAuto, false, &routing};
      const auto t0 = clock_type::now();
      m.forward(batch, options);
      steps.push_back(seconds_since(t0));
      seconds += steps.back();
      bytes += decode_bytes_per_step(c, routing);
    }
    // The median step is the figure (robust to a step that lost its core); the mean is kept too.
    const double step_s = median(steps), mean_step_s = seconds / a.decode_steps;
    const double step_bytes = bytes / a.decode_steps;
    const double achieved_gbps = step_bytes / step_s / 1e9;
    const auto& pr = m.profile();
    out["decode_tokens_per_s"][std::to_string(B)] = double(B) / step_s;
    out["decode"][std::to_string(B)] = {
        {"step_ms", 1e3 * step_s},
        {"mean_step_ms", 1e3 * mean_step_s},
        {"weight_bytes_per_step", step_bytes},
        {"weight_read_gb_per_s", achieved_gbps},
        {"profile_ms_per_step",
         {{"attention", 1e3 * pr.attention / a.decode_steps}, {"moe", 1e3 * pr.moe / a.decode_steps},
          {"dense_mlp", 1e3 * pr.dense_mlp / a.decode_steps}, {"norms", 1e3 * pr.norms / a.decode_steps},
          {"lm_head", 1e3 * pr.lm_head / a.decode_steps}}}};
    measure_ceilings();
    auto& d = out["decode"][std::to_string(B)];
    const double read = read_around();
    d["read_ceiling_gb_per_s"] = read;
    d["fraction_of_bandwidth_bound"] = achieved_gbps / read;
    d["mean_fraction_of_bandwidth_bound"] = step_bytes / mean_step_s / 1e9 / read;
  }

  // The ceilings: the best of every probe. The arithmetic peak does not move with the host's memory
  // traffic (a low reading is the probe disturbed), so the prefill is a fraction of the best one.
  double& peak = ceiling == Peak::kAmx ? roof.amx_bf16_gflops
                 : ceiling == Peak::kDot ? roof.bf16_dot_gflops
                                         : roof.fp32_fma_gflops;
  for (const Probe& p : probes) {
    roof.read_gbps = std::max(roof.read_gbps, p.read_gbps);
    peak = std::max(peak, p.arithmetic_gflops);
  }
  {
    auto& p = out["prefill"];
    p["fraction_of_arithmetic_ceiling"] = p["gflops"].get<double>() / peak;
    p["median_fraction_of_arithmetic_ceiling"] = p["median_gflops"].get<double>() / peak;
    // Where the CPU has AMX, which the kernels do not use: the same figure against its peak.
    if (roof.amx_bf16_gflops > 0) p["fraction_of_amx_bf16_peak"] = p["gflops"].get<double>() / roof.amx_bf16_gflops;
  }
  json each = json::array();
  for (const Probe& p : probes) each.push_back({{"read_gb_per_s", p.read_gbps}, {"arithmetic_gflops", p.arithmetic_gflops}});
  out["ceilings"] = {{"threads", roof.threads},
                     {"read_gb_per_s", roof.read_gbps},
                     {"fp32_fma_gflops", roof.fp32_fma_gflops},
                     {"bf16_dot_gflops", roof.bf16_dot_gflops},
                     {"amx_bf16_gflops", roof.amx_bf16_gflops},
                     {"arithmetic_ceiling", ceiling_name},
                     {"bf16_products", kernels::amx_in_use()        ? "amx_bf16"
                                       : kernels::bf16_dot_in_use() ? "bf16_dot"
                                                                    : "fp32_fma"},
                     {"probes", each}};

  if (a.json_output) {
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  std::printf("ceilings (%d threads): read %.1f GB/s, FP32 FMA %.0f GFLOP/s, BF16 dot %.0f GFLOP/s (kernels: %s)\n",
              roof.threads, roof.read_gbps, roof.fp32_fma_gflops, roof.bf16_dot_gflops,
              kernels::amx_in_use() ? "AMX" : kernels::bf16_dot_in_use() ? "BF16 dot" : "FP32 FMA");
  if (roof.amx_bf16_gflops > 0 && ceiling != Peak::kAmx)
    std::printf("  (AMX BF16 %.0f GFLOP/s, which the kernels do not use: the prefill is %.1f%% of it)\n",
                roof.amx_bf16_gflops, 100 * out["prefill"]["fraction_of_amx_bf16_peak"].get<double>());
  const auto& pf = out["prefill"];
  std::printf("prefill %d x %d tokens: %.0f tokens/s, %.0f GFLOP/s = %.0f%% of the %s ceiling (best of %d; median %.0f%%)\n",
              a.prefill_prompts, a.prompt_len, out["prefill_tokens_per_s"].get<double>(), pf["gflops"].get<double>(),
              100 * pf["fraction_of_arithmetic_ceiling"].get<double>(), ceiling_name, a.prefill_reps,
              100 * pf["median_fraction_of_arithmetic_ceiling"].get<double>());
  for (int B : batches) {
    const auto& d = out["decode"][std::to_string(B)];
    std::printf("decode batch %2d: %7.1f tokens/s, step %.1f ms (median; mean %.1f), weights %.0f MB/step at %.1f GB/s = %.0f%% of %.1f GB/s\n",
                B, out["decode_tokens_per_s"][std::to_string(B)].get<double>(), d["step_ms"].get<double>(),
                d["mean_step_ms"].get<double>(), d["weight_bytes_per_step"].get<double>() / 1e6,
                d["weight_read_gb_per_s"].get<double>(), 100 * d["fraction_of_bandwidth_bound"].get<double>(),
                d["read_ceiling_gb_per_s"].get<double>());
  }
  return 0;
}

const CommandRegistration registration(
    "bench", "Prefill and decode throughput as fractions of this machine's measured ceilings", [](CLI::App& app) {
      auto a = std::make_shared<BenchArgs>();
      app.add_option("--model", a->model_dir, "checkpoint directory (the bench preset)")->required();
      app.add_option("--numerics", a->numerics, "deepseek or exact")->capture_default_str();
      app.add_option("--prompt-len", a->prompt_len, "prefill prompt length")->capture_default_str();
      app.add_option("--prefill-prompts", a->prefill_prompts, "prompts per prefill forward")->capture_default_str();
      app.add_option("--prefill-reps", a->prefill_reps, "timed prefill forwards (the fastest is reported)")->capture_default_str();
      app.add_option("--batches", a->batches, "decode batch sizes, comma-separated")->capture_default_str();
      app.add_option("--decode-context", a->decode_context, "context tokens per decoding sequence")->capture_default_str();
      app.add_option("--decode-steps", a->decode_steps, "timed decode steps per batch size (the median step is reported)")
          ->capture_default_str();
      app.add_flag("--json", a->json_output, "print JSON");
      return [a] { return run_bench(*a); };
    });

}  // namespace
}  // namespace epserve::cli
