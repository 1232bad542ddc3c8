// The cpu preset's model of epserve's own kernels and its fit, without timing anything: the fit
// recovers known constants from steps the model itself predicts, the expert-row model matches the
// expected number of distinct experts, and bad case lists are errors that name the case.
#include <gtest/gtest.h>

#include <cmath>

#include "base/error.h"
#include "model/config.h"
#include "sim/engine_probe.h"
#include "support/paths.h"

namespace {

using namespace epserve::sim;

Hardware fixed_cpu() {
  CpuMeasurement m;  // fixed ceilings: no measurement, deterministic
  m.mem_gbps = 40;
  m.fma_gflops = 270;
  m.bf16_gflops = 540;  // the kernels use vdpbf16ps (Zen 5: twice the FMA rate): that constant set
  m.threads = 1;
  return cpu_preset(m);
}

std::vector<FitPoint> points_from(const Hardware& truth) {
  std::vector<FitPoint> points;
  for (int layers : {8, 5}) {
    auto cfg = epserve::model::ModelConfig::preset("bench");
    cfg.num_hidden_layers = layers;
    for (const auto& c : parse_engine_cases("prefill:1x256,prefill:2x256,prefill:4x64,prefill:1x1024,decode:1@128,"
                                            "decode:8@128,decode:32@128,decode:64@128,decode:8@512,decode:1@1024"))
      points.push_back({fixed_cpu(), cfg, c, predict_engine_step_ms(truth, cfg, c)});
  }
  return points;
}

TEST(CpuModel, FitRecoversKnownConstants) {
  Hardware truth = fixed_cpu();
  truth.hbm_eff = 0.7, truth.decode_flop_eff = 0.4, truth.gemm_eff = 0.3, truth.dequant_eff = 0.02,
  truth.attn_eff = 0.05, truth.hbm_dot_eff = 0.85, truth.attn_prefill_eff = 0.2, truth.gemm_bf16_eff = 0.25;
  const auto points = points_from(truth);
  const CpuFit fit = fit_cpu_efficiencies(points);
  ASSERT_EQ(fit.values.size(), 8u);
  const double want[] = {0.7, 0.4, 0.3, 0.02, 0.05, 0.85, 0.2, 0.25};
  for (size_t i = 0; i < 8; ++i) EXPECT_NEAR(fit.values[i], want[i], 1e-6 * want[i]) << fit.names[i];
  Hardware h = fixed_cpu();
  fit.apply(h);
  for (const auto& p : points) EXPECT_NEAR(predict_engine_step_ms(h, p.cfg, p.c), p.measured_ms, 1e-6 * p.measured_ms);
}

// Held knobs stay at the preset's values (the points' hardware) and the others are fitted around them.
TEST(CpuModel, FitKeepsHeldConstants) {
  Hardware truth = fixed_cpu();
  truth.gemm_eff = 0.33, truth.dequant_eff = 0.03, truth.attn_prefill_eff = 0.25;  // the rest: the preset's
  const auto points = points_from(truth);
  const CpuFit fit = fit_cpu_efficiencies(points, {"hbm", "decode_flop", "attn", "hbm_dot", "gemm_bf16"});
  const Hardware preset = fixed_cpu();
  const double want[] = {preset.hbm_eff, preset.decode_flop_eff, 0.33, 0.03, preset.attn_eff, preset.hbm_dot_eff, 0.25,
                         preset.gemm_bf16_eff};
  for (size_t i = 0; i < 8; ++i) EXPECT_NEAR(fit.values[i], want[i], 1e-6 * want[i]) << fit.names[i];
  EXPECT_THROW(fit_cpu_efficiencies(points, {"hbm", "nonsense"}), epserve::Error);
}

TEST(CpuModel, StepGrowsWithBatchContextAndLayers) {
  const Hardware h = fixed_cpu();
  auto cfg = epserve::model::ModelConfig::preset("bench");
  auto t = [&](const std::string& c) { return predict_engine_step_ms(h, cfg, parse_engine_cases(c).front()); };
  EXPECT_LT(t("decode:1@128"), t("decode:8@128"));
  EXPECT_LT(t("decode:8@128"), t("decode:32@128"));
  EXPECT_LT(t("decode:8@128"), t("decode:8@512"));
  EXPECT_LT(t("prefill:1x128"), t("prefill:1x256"));
  const double eight = t("decode:8@128");
  cfg.num_hidden_layers = 3;
  EXPECT_LT(t("decode:8@128"), eight);
  // Batch 1 at bench size streams the BF16 lm_head (265 MB) and 8 + 1 experts per MoE layer:
  cfg.num_hidden_layers = 8;
  // the step is about their bytes over the read bandwidth · hbm_dot_eff (lm_head) and · hbm_eff.
  const double stream_s = 129280.0 * 1024 * 2 / (40e9 * h.hbm_dot_eff) + 7 * 9 * 3 * 1024 * 256.0 / (40e9 * h.hbm_eff);
  EXPECT_GT(t("decode:1@128"), 1e3 * stream_s);
  EXPECT_LT(t("decode:1@128"), 1.5e3 * stream_s);
}

TEST(CpuModel, GpuPresetsUntouched) {
  EXPECT_FALSE(hardware_preset("h800").cpu_kernels);
  EXPECT_FALSE(hardware_preset("h100").cpu_kernels);
  EXPECT_TRUE(fixed_cpu().cpu_kernels);
}

TEST(CpuModel, BadCases) {
  for (const char* bad : {"decode:8", "prefill:256", "train:1x2", "decode:0@128", "decode:x@1", "", "decode:8@128x"}) {
    try {
      parse_engine_cases(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const epserve::Error& e) {
      SUCCEED();
    }
  }
  const auto c = parse_engine_cases("prefill:2x256,decode:8@512");
  ASSERT_EQ(c.size(), 2u);
  EXPECT_EQ(c[0].label(), "prefill 2x256");
  EXPECT_EQ(c[1].label(), "decode 8 @512");
  const auto r = epserve::testing::run_command(epserve::testing::epserve_binary().string() +
                                               " sim engine --model /nonexistent --cases decode:8");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("decode:8"), std::string::npos) << r.output;
  const auto m = epserve::testing::run_command(epserve::testing::epserve_binary().string() + " sim comm");
  EXPECT_EQ(m.exit_code, 1) << m.output;
  EXPECT_NE(m.output.find("mpirun"), std::string::npos) << m.output;
}

}  // namespace
