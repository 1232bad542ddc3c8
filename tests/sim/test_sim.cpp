// The cluster simulator: the published figures it must reproduce (through the real binary), the
// unit model's sanity, bad input, and the SVG charts.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "model/config.h"
#include "sim/day.h"
#include "sim/unit.h"
#include "support/paths.h"

namespace {

using epserve::testing::epserve_binary;
using epserve::testing::run_command;
using epserve::testing::scratch_dir;

nlohmann::json sim_json(const std::string& args) {
  const auto r = run_command(epserve_binary().string() + " sim " + args + " --json");
  EXPECT_EQ(r.exit_code, 0) << args << "\n" << r.output;
  try {
    return nlohmann::json::parse(r.output);
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not JSON: " << args << "\n" << r.output;
    return {};
  }
}

void expect_within(double got, double want, double tol, const std::string& what) {
  EXPECT_LE(std::fabs(got - want), tol * std::fabs(want))
      << what << ": simulated " << got << ", published " << want << " (tolerance " << tol * 100 << "%)";
}

// ---- reproduction: DeepSeek's published day (H800) ----

class PublishedDay : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { day_ = new nlohmann::json(sim_json("day --hw h800")); }
  static void TearDownTestSuite() { delete day_; }
  static nlohmann::json* day_;
};
nlohmann::json* PublishedDay::day_ = nullptr;

TEST_F(PublishedDay, PrefillThroughputPerNode) {
  expect_within((*day_)["input_tokens_per_node_s"], 73.7e3, 0.10, "prefill input tok/s per node");
}
TEST_F(PublishedDay, DecodeThroughputPerNode) {
  expect_within((*day_)["output_tokens_per_node_s"], 14.8e3, 0.10, "decode output tok/s per node");
}
TEST_F(PublishedDay, OutputSpeedPerUser) {
  const double v = (*day_)["output_tokens_per_user_s"];
  EXPECT_GE(v, 20 * 0.9);
  EXPECT_LE(v, 22 * 1.1);
}
TEST_F(PublishedDay, Nodes) {
  expect_within((*day_)["peak_nodes"], 278, 0.10, "peak nodes");
  expect_within((*day_)["avg_nodes"], 226.75, 0.10, "average nodes");
}
TEST_F(PublishedDay, CostRevenueMargin) {
  expect_within((*day_)["cost_usd"], 87072, 0.10, "daily cost");
  expect_within((*day_)["revenue_usd"], 562027, 0.10, "theoretical revenue");
  expect_within((*day_)["margin"], 5.45, 0.10, "cost-profit margin");
}
TEST_F(PublishedDay, HourlySeries) {
  const auto& h = (*day_)["hours"];
  ASSERT_EQ(h.size(), 24u);
  double node_hours = 0, cost = 0;
  for (const auto& x : h) {
    node_hours += x["nodes"].get<double>();
    cost += x["cost_usd"].get<double>();
    EXPECT_GE(x["revenue_usd"].get<double>(), 0);
  }
  EXPECT_NEAR(node_hours / 24, (*day_)["avg_nodes"].get<double>(), 1e-6);
  EXPECT_NEAR(cost, (*day_)["cost_usd"].get<double>(), 1e-3);
  // nodes are given back at night: the trough is well under the peak
  double lo = 1e9;
  for (const auto& x : h) lo = std::min(lo, x["nodes"].get<double>());
  EXPECT_LT(lo, 0.5 * (*day_)["peak_nodes"].get<double>());
}

// ---- prediction: SGLang's 96 x H100 figures (not fitted) ----

TEST(Sglang, PrefillH100Ep24) {
  const auto j = sim_json("unit --hw h100 --role prefill --ep 24 --tokens-per-gpu 16384 --kv-len 2000 --hit-rate 0");
  expect_within(j["input_tokens_per_node_s"], 52.3e3, 0.15, "SGLang prefill input tok/s per node");
}
TEST(Sglang, DecodeH100Ep72) {
  const auto j = sim_json("unit --hw h100 --role decode --ep 72 --batch-per-gpu 256 --kv-len 2000");
  expect_within(j["output_tokens_per_node_s"], 22.3e3, 0.15, "SGLang decode output tok/s per node");
}

TEST(Calibration, StoredConstantsAreTheFit) {
  const auto j = sim_json("calibrate");
  EXPECT_NEAR(j["fitted"]["prefill"].get<double>(), j["stored"]["prefill"].get<double>(), 0.02);
  EXPECT_NEAR(j["fitted"]["decode"].get<double>(), j["stored"]["decode"].get<double>(), 0.02);
}

// ---- unit-model sanity (library calls: fast) ----

using namespace epserve::sim;

const epserve::model::ModelConfig& v3() {
  static const auto c = epserve::model::ModelConfig::preset("v3-671b");
  return c;
}

TEST(UnitModel, UnitJsonHasTheBreakdown) {
  const auto j = sim_json("unit --hw h800 --role decode --ep 144 --batch-per-gpu 64 --kv-len 4989 --overlap on");
  for (const char* k : {"step_ms", "output_tokens_per_node_s", "output_tokens_per_user_s"}) EXPECT_TRUE(j.contains(k)) << k;
  for (const char* s : {"attn0", "attn1", "shared", "mlp", "dispatch", "combine"})
    EXPECT_TRUE(j["stages_per_moe_layer_per_microbatch"].contains(s)) << s;
  const auto p = sim_json("unit --hw h800 --role prefill --ep 32 --tokens-per-gpu 8192 --hit-rate 0.5");
  EXPECT_TRUE(p.contains("input_tokens_per_node_s"));
  EXPECT_NEAR(p["input_tokens_per_node_s"].get<double>(), 2 * p["computed_tokens_per_node_s"].get<double>(), 1e-6);
}

TEST(UnitModel, OverlapNeverSlower) {
  for (const char* hw : {"h800", "h100"}) {
    const Hardware h = hardware_preset(hw);
    for (int ep : {8, 32, 144}) {
      for (double b : {1.0, 4.0, 16.0, 64.0, 128.0, 256.0}) {
        UnitSpec s;
        s.role = Role::decode;
        s.ep = ep;
        s.batch_per_gpu = b;
        s.kv_len = 3000;
        s.overlap = true;
        const double on = simulate_unit(h, v3(), s).step_ms;
        s.overlap = false;
        const double off = simulate_unit(h, v3(), s).step_ms;
        EXPECT_LE(on, off * (1 + 1e-12)) << hw << " decode ep " << ep << " batch " << b;
      }
      for (double t : {128.0, 1024.0, 16384.0}) {
        UnitSpec s;
        s.role = Role::prefill;
        s.ep = ep;
        s.tokens_per_gpu = t;
        s.hit_rate = 0.5;
        s.overlap = true;
        const double on = simulate_unit(h, v3(), s).step_ms;
        s.overlap = false;
        const double off = simulate_unit(h, v3(), s).step_ms;
        EXPECT_LE(on, off * (1 + 1e-12)) << hw << " prefill ep " << ep << " tokens " << t;
      }
    }
  }
}

TEST(UnitModel, MoreEpFewerExpertsPerGpu) {
  const Hardware h = hardware_preset("h800");
  int last = 1 << 30;
  for (int ep : {8, 16, 32, 72, 96, 144, 288}) {
    UnitSpec s;
    s.ep = ep;
    const auto r = simulate_unit(h, v3(), s);
    EXPECT_LT(r.experts_per_gpu, last) << "ep " << ep;
    EXPECT_EQ(r.experts_per_gpu * ep, 288);
    last = r.experts_per_gpu;
  }
  // and through the binary
  const auto a = sim_json("unit --role decode --ep 32");
  const auto b = sim_json("unit --role decode --ep 144");
  EXPECT_GT(a["experts_per_gpu"].get<int>(), b["experts_per_gpu"].get<int>());
}

TEST(UnitModel, MonotonicInBatch) {
  const Hardware h = hardware_preset("h800");
  for (bool overlap : {true, false}) {
    double last_step = 0, last_tput = 0;
    for (double b = 1; b <= 512; b *= 2) {
      UnitSpec s;
      s.role = Role::decode;
      s.batch_per_gpu = b;
      s.overlap = overlap;
      const auto r = simulate_unit(h, v3(), s);
      EXPECT_GE(r.step_ms, last_step) << "batch " << b;
      EXPECT_GE(r.output_tokens_per_node_s, last_tput) << "batch " << b;
      last_step = r.step_ms;
      last_tput = r.output_tokens_per_node_s;
    }
    last_step = 0;
    for (double t = 256; t <= 65536; t *= 2) {
      UnitSpec s;
      s.role = Role::prefill;
      s.ep = 32;
      s.tokens_per_gpu = t;
      s.overlap = overlap;
      const auto r = simulate_unit(h, v3(), s);
      EXPECT_GT(r.step_ms, last_step) << "tokens " << t;
      last_step = r.step_ms;
    }
  }
  // longer KV, slower decode
  UnitSpec a, b;
  a.kv_len = 1000;
  b.kv_len = 8000;
  EXPECT_LT(simulate_unit(h, v3(), a).step_ms, simulate_unit(h, v3(), b).step_ms);
}

TEST(UnitModel, ImbalanceSlowsTheStep) {
  const Hardware h = hardware_preset("h800");
  UnitSpec s;
  const double base = simulate_unit(h, v3(), s).step_ms;
  s.eplb_imbalance = 1.3;
  EXPECT_GT(simulate_unit(h, v3(), s).step_ms, base);
}

TEST(UnitModel, EplbFromLoadMatrix) {
  std::vector<std::vector<double>> uniform(3, std::vector<double>(256, 1.0));
  EXPECT_NEAR(eplb_imbalance(uniform, 256, 32), 1.0, 1e-12);
  std::vector<std::vector<double>> skew(2, std::vector<double>(256, 1.0));
  for (auto& row : skew)
    for (int e = 0; e < 8; ++e) row[e] = 20;  // eight hot experts
  const double none = eplb_imbalance(skew, 256, 32), red = eplb_imbalance(skew, 288, 32);
  EXPECT_GT(none, 1.5);
  EXPECT_LT(red, none);  // redundant replicas of the hot experts help
  // and through the binary
  const auto dir = scratch_dir("sim-load");
  std::ofstream(dir / "load.json") << nlohmann::json(skew).dump();
  const auto j = sim_json("unit --role decode --ep 32 --load-matrix " + (dir / "load.json").string());
  EXPECT_NEAR(j["eplb_imbalance"].get<double>(), red, 1e-9);
}

TEST(UnitModel, DecodeAtSloMeetsTheSpeed) {
  const Hardware h = hardware_preset("h800");
  UnitSpec s;
  const auto r = decode_at_slo(h, v3(), s, 20);
  EXPECT_GE(r.output_tokens_per_user_s, 20);
  s.batch_per_gpu = r.spec.batch_per_gpu + 1;
  const auto more = simulate_unit(h, v3(), s);
  EXPECT_TRUE(more.output_tokens_per_user_s < 20 || !more.fits_in_memory);
}

TEST(CpuHook, SingleRankStepPrediction) {
  const Hardware h = hardware_preset("cpu");
  EXPECT_TRUE(h.measured);
  EXPECT_GT(h.hbm_gbps, 0);
  EXPECT_GT(h.fp8_tflops, 0);
  const auto tiny = epserve::model::ModelConfig::preset("tiny");
  const double a = predict_single_rank_step_ms(h, tiny, Role::decode, 1, 64);
  const double b = predict_single_rank_step_ms(h, tiny, Role::decode, 16, 64);
  const double p = predict_single_rank_step_ms(h, tiny, Role::prefill, 256, 256);
  EXPECT_GT(a, 0);
  EXPECT_GE(b, a);
  EXPECT_GT(p, 0);
}

// ---- bad input: exit 1 and a message that names the problem ----

void expect_error(const std::string& args, const std::string& needle) {
  const auto r = run_command(epserve_binary().string() + " sim " + args);
  EXPECT_EQ(r.exit_code, 1) << args << "\n" << r.output;
  EXPECT_NE(r.output.find(needle), std::string::npos) << args << "\n" << r.output;
}

TEST(BadInput, ClearErrors) {
  expect_error("unit --hw tpu", "unknown hardware preset 'tpu'");
  expect_error("unit --role train", "unknown role 'train'");
  expect_error("unit --ep=-8", "--ep");
  expect_error("unit --ep 7", "does not divide the 288 expert slots");
  expect_error("unit --ep 144 --redundant 0", "does not divide the 256 expert slots");
  expect_error("unit --redundant=-1", "--redundant");
  expect_error("unit --role decode --batch-per-gpu=-4", "--batch-per-gpu");
  expect_error("unit --role prefill --tokens-per-gpu 0", "--tokens-per-gpu");
  expect_error("unit --kv-len=-1", "--kv-len");
  expect_error("unit --role prefill --hit-rate 1.5", "--hit-rate");
  expect_error("unit --overlap maybe", "--overlap");
  expect_error("unit --load-matrix /nonexistent/load.json", "load matrix");
  expect_error("day --hw tpu", "unknown hardware preset");
  expect_error("day --input-tokens=-5", "--input-tokens");
  expect_error("day --output-tokens lots", "--output-tokens");
  expect_error("day --decode-ep 100", "does not divide");
  expect_error("sweep --what foo", "unknown sweep 'foo'");
}

TEST(Help, EverySubcommandHasHelp) {
  for (const char* sub : {"", " unit", " day", " sweep", " calibrate"}) {
    const auto r = run_command(epserve_binary().string() + " sim" + sub + " --help");
    EXPECT_EQ(r.exit_code, 0) << sub;
    EXPECT_NE(r.output.find("Usage"), std::string::npos) << sub;
  }
}

// ---- SVG ----

// A small well-formedness check: one root, balanced tags, quoted attributes, escaped text.
std::string xml_problem(const std::string& s) {
  std::vector<std::string> stack;
  size_t i = 0;
  int roots = 0;
  while (i < s.size()) {
    if (s[i] != '<') {
      if (s[i] == '&') {
        const size_t semi = s.find(';', i);
        if (semi == std::string::npos || semi - i > 8) return "raw & at " + std::to_string(i);
      }
      if (s[i] == '>') return "raw > at " + std::to_string(i);
      ++i;
      continue;
    }
    if (s.compare(i, 5, "<?xml") == 0) {
      const size_t e = s.find("?>", i);
      if (e == std::string::npos) return "unterminated declaration";
      i = e + 2;
      continue;
    }
    if (s.compare(i, 4, "<!--") == 0) {
      const size_t e = s.find("-->", i);
      if (e == std::string::npos) return "unterminated comment";
      i = e + 3;
      continue;
    }
    // a tag: scan to '>' outside quotes
    size_t j = i + 1;
    char quote = 0;
    while (j < s.size() && (quote || s[j] != '>')) {
      if (quote && s[j] == quote) quote = 0;
      else if (!quote && (s[j] == '"' || s[j] == '\'')) quote = s[j];
      else if (!quote && s[j] == '<') return "< inside a tag at " + std::to_string(j);
      ++j;
    }
    if (j >= s.size()) return "unterminated tag at " + std::to_string(i);
    std::string tag = s.substr(i + 1, j - i - 1);
    i = j + 1;
    if (tag.empty()) return "empty tag";
    if (tag[0] == '/') {
      const std::string name = tag.substr(1);
      if (stack.empty() || stack.back() != name) return "mismatched </" + name + ">";
      stack.pop_back();
      continue;
    }
    const bool self = tag.back() == '/';
    const std::string name = tag.substr(0, tag.find_first_of(" \t\n/"));
    if (stack.empty()) ++roots;
    if (!self) stack.push_back(name);
  }
  if (!stack.empty()) return "unclosed <" + stack.back() + ">";
  if (roots != 1) return "expected one root element, found " + std::to_string(roots);
  return "";
}

std::string slurp(const std::filesystem::path& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

TEST(Svg, CheckerCatchesBadXml) {
  EXPECT_EQ(xml_problem("<svg><g a=\"1\"/></svg>"), "");
  EXPECT_NE(xml_problem("<svg><g></svg>"), "");
  EXPECT_NE(xml_problem("<svg>a & b</svg>"), "");
  EXPECT_NE(xml_problem("<svg></svg><svg></svg>"), "");
}

TEST(Svg, DayChart) {
  const auto dir = scratch_dir("sim-svg-day");
  const auto file = dir / "day.svg";
  const auto r = run_command(epserve_binary().string() + " sim day --svg " + file.string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string s = slurp(file);
  EXPECT_EQ(xml_problem(s), "");
  EXPECT_NE(s.find("<svg"), std::string::npos);
  for (const char* name : {"data-name=\"total\"", "data-name=\"prefill\"", "data-name=\"decode\"",
                           "data-name=\"revenue\"", "data-name=\"cost\"", "Nodes in service", "12:00"})
    EXPECT_NE(s.find(name), std::string::npos) << name;
}

TEST(Svg, SweepCharts) {
  const auto dir = scratch_dir("sim-svg-sweep");
  const std::vector<std::pair<std::string, std::vector<std::string>>> expected = {
      {"ep", {"user &gt;= 20 tok/s", "batch 128/GPU"}},
      {"overlap", {"overlap on", "overlap off"}},
      {"cache", {"with cache", "no disk cache"}},
      {"hit-rate", {"average nodes", "peak nodes"}},
      {"speed", {"EP72", "EP144", "EP288"}},
      {"price", {"R1 prices", "V3 prices"}}};
  for (const auto& [what, names] : expected) {
    const auto file = dir / (what + ".svg");
    const auto j = sim_json("sweep --what " + what + " --svg " + file.string());
    EXPECT_EQ(j["what"], what);
    EXPECT_FALSE(j["rows"].empty()) << what;
    const std::string s = slurp(file);
    EXPECT_EQ(xml_problem(s), "") << what;
    for (const auto& n : names) EXPECT_NE(s.find("data-name=\"" + n + "\""), std::string::npos) << what << ": " << n;
    EXPECT_NE(s.find("<polyline"), std::string::npos) << what;
  }
}

TEST(Sweeps, Findings) {
  // Overlap helps decode at DeepSeek's batch; the disk cache saves nodes; a cheaper GPU raises margin.
  const auto o = sim_json("sweep --what overlap");
  bool helped = false;
  for (const auto& r : o["rows"])
    if (r["role"] == "decode" && r["batch_per_gpu"] == 128) helped = r["speedup"].get<double>() > 1.1;
  EXPECT_TRUE(helped);
  const auto c = sim_json("sweep --what cache");
  EXPECT_LT(c["rows"][0]["avg_nodes"].get<double>(), c["rows"][1]["avg_nodes"].get<double>());
  const auto p = sim_json("sweep --what price");
  EXPECT_GT(p["rows"][0]["margin_r1"].get<double>(), p["rows"].back()["margin_r1"].get<double>());
}

}  // namespace
