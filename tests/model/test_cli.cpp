// `epserve gen-model`, `run` and `run --plan` as a user calls them.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "model/model.h"
#include "support/paths.h"

using namespace epserve;
namespace fs = std::filesystem;
using epserve::testing::run_command;
using nlohmann::json;

namespace {

std::string epserve_cmd() { return epserve::testing::epserve_binary().string(); }

TEST(Cli, HelpAndUnknownFlags) {
  for (const char* sub : {"gen-model", "run", "bench", "tokenize", "sim"}) {
    const auto r = run_command(epserve_cmd() + " " + sub + " --help");
    EXPECT_EQ(r.exit_code, 0) << sub;
    EXPECT_NE(r.output.find("--"), std::string::npos) << sub;
  }
  const auto bad = run_command(epserve_cmd() + " run --model x --no-such-flag");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("no-such-flag"), std::string::npos) << bad.output;
  const auto tokens = run_command(epserve_cmd() + " run --model " + epserve::testing::generated_model("tiny").string() +
                                  " --tokens 1,x,3");
  EXPECT_EQ(tokens.exit_code, 1);
  EXPECT_NE(tokens.output.find("\"x\" is not a token id"), std::string::npos) << tokens.output;
  const auto range = run_command(epserve_cmd() + " run --model " + epserve::testing::generated_model("tiny").string() +
                                 " --tokens 1,999999");
  EXPECT_EQ(range.exit_code, 1);
  EXPECT_NE(range.output.find("999999"), std::string::npos) << range.output;
}

TEST(Cli, RunJsonDumpLogitsAndSampling) {
  const auto model = epserve::testing::generated_model("tiny");
  const auto dir = epserve::testing::scratch_dir("cli-run");
  const auto r = run_command(epserve_cmd() + " run --model " + model.string() +
                             " --prompt 'The cache on disk' --max-tokens 5 --ignore-eos --json --dump-logits " +
                             (dir / "l.bin").string() + " 2>/dev/null");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto j = json::parse(r.output);
  ASSERT_EQ(j["tokens"].size(), 5u);
  EXPECT_TRUE(j["text"].is_string());
  EXPECT_GT(j["timings"]["decode_tokens_per_s"].get<double>(), 0);
  // Each decode step's time (4 steps after the prefill's token), together within the decode total.
  const auto steps = j["timings"]["decode_step_s"].get<std::vector<double>>();
  ASSERT_EQ(steps.size(), 4u);
  double sum = 0;
  for (double s : steps) {
    EXPECT_GT(s, 0);
    sum += s;
  }
  EXPECT_LE(sum, j["timings"]["decode_s"].get<double>() + 1e-9);
  // One logits row per generated token, and greedy tokens are each row's argmax.
  std::ifstream in(dir / "l.bin", std::ios::binary);
  std::vector<float> logits(5 * 129280);
  in.read(reinterpret_cast<char*>(logits.data()), std::streamsize(logits.size() * 4));
  ASSERT_EQ(fs::file_size(dir / "l.bin"), logits.size() * 4);
  for (int i = 0; i < 5; ++i) {
    auto row = logits.begin() + i * 129280;
    EXPECT_EQ(int(std::max_element(row, row + 129280) - row), j["tokens"][i].get<int>());
  }
  // Sampling: the same seed repeats, another seed differs.
  auto sample = [&](int seed) {
    return json::parse(run_command(epserve_cmd() + " run --model " + model.string() +
                                   " --tokens 5,6,7 --max-tokens 12 --ignore-eos --temperature 1.5 --json --seed " +
                                   std::to_string(seed) + " 2>/dev/null")
                           .output)["tokens"];
  };
  EXPECT_EQ(sample(11), sample(11));
  EXPECT_NE(sample(11), sample(12));
}

// The memory plan on DeepSeek-V3's real config, against the fact sheet's parameter counts
// (reference §2: attention 187,107,328 per block plus two norms, expert 44,040,192, dense MLP
// 396,361,728; FP8 plus one FP32 scale per 128×128 block; BF16 embeddings and head).
// `bench --json`: the reported figures are the fastest prefill of --prefill-reps and the median
// decode step, and every derived figure follows from them and the measured ceilings.
TEST(Cli, BenchJsonFiguresFollowFromTheirTimes) {
  const auto model = epserve::testing::generated_model("tiny");
  // (In a subshell: run_command appends 2>&1, and bench reports its progress on stderr.)
  const auto r = run_command("(" + epserve_cmd() + " bench --model " + model.string() +
                             " --prompt-len 24 --prefill-prompts 2 --prefill-reps 3 --batches 1,4 --decode-context 8"
                             " --decode-steps 5 --json 2>/dev/null)");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto j = json::parse(r.output);
  const auto& pf = j["prefill"];
  const auto each = pf["seconds_each"].get<std::vector<double>>();
  ASSERT_EQ(each.size(), 3u);
  const double best = *std::min_element(each.begin(), each.end());
  EXPECT_DOUBLE_EQ(pf["seconds"].get<double>(), best);
  EXPECT_NEAR(j["prefill_tokens_per_s"].get<double>(), 48 / best, 1e-9 * 48 / best);
  EXPECT_LE(pf["median_tokens_per_s"].get<double>(), j["prefill_tokens_per_s"].get<double>() * (1 + 1e-12));
  // Decode figures are fractions of the better read bandwidth of the probes around them (one before
  // the prefill, one after it and after each decode batch size), the prefill of the best arithmetic
  // peak; the ceilings are the best of all the probes.
  const auto& ceil = j["ceilings"];
  const double peak = ceil["arithmetic_ceiling"] == "amx_bf16"   ? ceil["amx_bf16_gflops"].get<double>()
                      : ceil["arithmetic_ceiling"] == "bf16_dot" ? ceil["bf16_dot_gflops"].get<double>()
                                                                 : ceil["fp32_fma_gflops"].get<double>();
  const auto& probes = ceil["probes"];
  ASSERT_EQ(probes.size(), 4u);  // before and after the prefill, after each of the two batch sizes
  for (const auto& p : probes) EXPECT_LE(p["arithmetic_gflops"].get<double>(), peak);
  ASSERT_GT(peak, 0);
  EXPECT_NEAR(pf["fraction_of_arithmetic_ceiling"].get<double>(), pf["gflops"].get<double>() / peak, 1e-9);
  EXPECT_LE(pf["median_fraction_of_arithmetic_ceiling"].get<double>(),
            pf["fraction_of_arithmetic_ceiling"].get<double>() * (1 + 1e-12));
  // DeepSeek numerics (the default): the better of the two vector peaks is the ceiling.
  EXPECT_GE(peak * (1 + 1e-12), std::max(ceil["bf16_dot_gflops"].get<double>(), ceil["fp32_fma_gflops"].get<double>()));
  // AMX, where the CPU has it, is reported beside them (the kernels do not use it).
  if (ceil["amx_bf16_gflops"].get<double>() > 0)
    EXPECT_NEAR(pf["fraction_of_amx_bf16_peak"].get<double>(),
                pf["gflops"].get<double>() / ceil["amx_bf16_gflops"].get<double>(), 1e-9);
  else
    EXPECT_FALSE(pf.contains("fraction_of_amx_bf16_peak"));
  double bytes1 = 0;
  size_t after = 2;  // the probe after batch size 1
  for (int B : {1, 4}) {
    const auto& d = j["decode"][std::to_string(B)];
    const double step_s = d["step_ms"].get<double>() / 1e3;
    ASSERT_GT(step_s, 0) << B;
    EXPECT_GT(d["mean_step_ms"].get<double>(), 0) << B;
    EXPECT_NEAR(j["decode_tokens_per_s"][std::to_string(B)].get<double>(), B / step_s, 1e-9 * B / step_s) << B;
    const double bytes = d["weight_bytes_per_step"].get<double>();
    EXPECT_NEAR(d["weight_read_gb_per_s"].get<double>(), bytes / step_s / 1e9, 1e-9 * bytes / step_s / 1e9) << B;
    const double read = d["read_ceiling_gb_per_s"].get<double>();
    EXPECT_DOUBLE_EQ(read, std::max(probes[after - 1]["read_gb_per_s"].get<double>(), probes[after]["read_gb_per_s"].get<double>())) << B;
    EXPECT_LE(read, ceil["read_gb_per_s"].get<double>()) << B;
    EXPECT_NEAR(d["fraction_of_bandwidth_bound"].get<double>(), d["weight_read_gb_per_s"].get<double>() / read, 1e-9) << B;
    ++after;
    // Four sequences route to at least as many distinct experts as one: at least the bytes.
    if (B == 1) bytes1 = bytes;
    else EXPECT_GE(bytes, bytes1);
  }
}

TEST(Cli, PlanForV3OnFourRanks) {
  const auto dir = epserve::testing::scratch_dir("plan");
  ASSERT_EQ(run_command(epserve_cmd() + " gen-model --preset v3-671b --dry-run --out " + dir.string()).exit_code, 0);
  EXPECT_FALSE(fs::exists(dir / "model.safetensors.index.json"));
  const auto r = run_command(epserve_cmd() + " run --model " + dir.string() + " --plan --ranks 4 --redundant 32 --json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto j = json::parse(r.output);
  const double fp8 = 1 + 4.0 / 16384, moe_layers = 58;
  const double replicated = 2 * 129280.0 * 7168 * 2 + 61 * (187107328.0 + 2 * 7168) * fp8 + 3 * 396361728.0 * fp8 +
                            moe_layers * (256 * 7168 * 2 + 256 + 44040192 * fp8);
  const double per_rank_experts = moe_layers * 72 * 44040192.0 * fp8;
  EXPECT_EQ(j["routed_experts_per_rank"].get<double>(), 72);
  EXPECT_NEAR(j["replicated_bytes_per_rank"].get<double>() / replicated, 1.0, 0.002);
  EXPECT_NEAR(j["routed_expert_bytes_per_rank"].get<double>() / per_rank_experts, 1.0, 0.002);
  EXPECT_EQ(j["kv_cache_bytes_per_token"].get<double>(), 70272);
}

// gen-model is a function of the seed, and its weights keep activations well conditioned.
TEST(GenModel, DeterministicAndWellConditioned) {
  const auto dir = epserve::testing::scratch_dir("genmodel");
  auto gen = [&](const std::string& name, const std::string& extra) {
    const auto out = dir / name;
    EXPECT_EQ(run_command(epserve_cmd() + " gen-model --preset tiny --no-mtp --no-tokenizer --single-file --out " +
                          out.string() + " " + extra).exit_code, 0);
    std::ifstream in(out / "model.safetensors", std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  const auto a = gen("a", "--seed 5"), b = gen("b", "--seed 5"), c = gen("c", "--seed 6");
  EXPECT_TRUE(a == b);
  EXPECT_FALSE(a == c);

  model::Model m(model::ModelWeights::load(dir / "a"));
  std::mt19937 rng(std::random_device{}());
  std::vector<int> prompt(24);
  for (int& t : prompt) t = int(rng() % 129280);
  auto kv = m.new_sequence();
  model::SequenceInput in{&kv, prompt};
  std::vector<model::Routing> routing;
  const auto logits = m.forward({&in, 1}, {kernels::Numerics::kExact, model::AttentionPath::kAuto, true, &routing});
  // Logits: spread (std between 1 and 4), a clear but not certain favourite per position.
  for (size_t t = 0; t < prompt.size(); ++t) {
    auto row = std::vector<double>(logits.begin() + t * 129280, logits.begin() + (t + 1) * 129280);
    double mean = 0, var = 0, mx = -1e30, z = 0;
    for (double v : row) mean += v, mx = std::max(mx, v);
    mean /= row.size();
    for (double v : row) var += (v - mean) * (v - mean), z += std::exp(v - mx);
    const double sd = std::sqrt(var / row.size()), top_p = 1 / z;
    EXPECT_GT(sd, 1.0);
    EXPECT_LT(sd, 4.0);
    EXPECT_GT(top_p, 1e-5);
    EXPECT_LT(top_p, 0.9);
  }
  // Router: every expert of the tiny model is used by some token (scores spread, no collapse).
  std::set<int> used;
  for (const auto& r : routing) used.insert(r.expert.begin(), r.expert.end());
  EXPECT_GE(used.size(), 28u);
}

// --expert-skew makes some experts hot: with exponent 1.5 the busiest expert takes several times
// the uniform share (8/32 of tokens), without skew it does not.
TEST(GenModel, ExpertSkewMakesHotExperts) {
  const auto dir = epserve::testing::scratch_dir("skew");
  auto busiest_share = [&](const std::string& skew) {
    const auto out = dir / ("s" + skew);
    EXPECT_EQ(run_command(epserve_cmd() + " gen-model --preset tiny --no-mtp --no-tokenizer --seed 9 --expert-skew " +
                          skew + " --out " + out.string()).exit_code, 0);
    model::Model m(model::ModelWeights::load(out));
    std::mt19937 rng(3);
    std::vector<int> prompt(256);
    for (int& t : prompt) t = int(rng() % 129280);
    auto kv = m.new_sequence();
    model::SequenceInput in{&kv, prompt};
    std::vector<model::Routing> routing;
    m.forward({&in, 1}, {kernels::Numerics::kExact, model::AttentionPath::kAuto, false, &routing});
    std::vector<int> count(32);
    for (int e : routing[0].expert) ++count[e];
    return double(*std::max_element(count.begin(), count.end())) / prompt.size();
  };
  const double flat = busiest_share("0"), skewed = busiest_share("1.5");
  EXPECT_LT(flat, 0.6);
  EXPECT_GT(skewed, 0.8);
}

}  // namespace
