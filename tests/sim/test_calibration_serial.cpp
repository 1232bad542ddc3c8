// Trust: the cpu preset's prediction of engine steps, on one rank and on two, against the real engine, timed
// here and now (serial: nothing else of ours runs meanwhile). The efficiencies in the preset were
// fitted once to the 8-layer `bench` preset and a 5-layer variant (docs/PERFORMANCE.md,
// "Simulator"); this test runs a
// configuration the fit never saw, a 3-layer `bench` architecture (1 dense + 2 MoE layers, no MTP
// block), at batch sizes and prompt lengths partly outside the fit, with the ceilings
// (bandwidth, FMA and dot-product peaks) measured at test time, so that it holds on whichever CPU
// runs it. One thread, timed by CPU time: robust to the other processes of a shared machine.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "support/paths.h"

namespace {

using epserve::testing::epserve_binary;
using epserve::testing::generated_model;
using epserve::testing::run_command;
using epserve::testing::scratch_dir;

constexpr double kTolerance = 0.25;  // the issue's: predicted vs measured step time within 25%
// Measurements again while a case is out of tolerance, and the pause before each: a slow spell of
// these shared hosts can last minutes (a clean-clone run on a Zen 3 guest, 2026-12-02 18:40 UTC,
// read 14 GB/s and measured the decode-16 cases 25-35% slower than in the minutes before and after
// through four retries 5 s apart), so the retries spread over about four minutes.
constexpr int kRetries = 6;
constexpr auto kRetryPause = std::chrono::seconds(15);

TEST(Calibration, CpuPresetPredictsEngineStepsOfAnUnfittedConfig) {
  // ~1.2 GB, generated once per build tree (about 30 s the first time).
  const auto model = generated_model("bench", "--set num_hidden_layers=3 --no-mtp");
  const auto out = scratch_dir("calibration") / "engine.json";
  // Fit cases (8 and 5 layers): prefill 1x256, 2x256; decode 1, 32, 64 @128, 8 @512, 1 @1024. Here:
  // another layer count throughout, and a prompt length (192), batch sizes (8, 16) and a context
  // (256) the fit did not use.
  const std::string cases = "prefill:1x192,decode:1@128,decode:8@256,decode:16@128,decode:32@128";
  const std::string cmd = "OMP_NUM_THREADS=1 " + epserve_binary().string() + " sim engine --model " +
                          model.string() + " --cases " + cases + " --reps 4 --json > " + out.string();
  auto measure = [&] {
    const auto r = run_command(cmd);
    EXPECT_EQ(r.exit_code, 0) << cmd << "\n" << r.output;
    nlohmann::json m;
    std::ifstream(out) >> m;
    return m;
  };
  nlohmann::json j = measure();
  ASSERT_EQ(j["cases"].size(), 5u) << j.dump(1);
  // A best time is only ever made worse by noise (another tenant of this VM taking memory bandwidth
  // for a while): while a case is out of tolerance, it is measured again (kRetries times at most,
  // after a pause: on a PVM guest such spells slowed prefill by 30-50% for a minute, docs/PERFORMANCE.md)
  // and the faster measurement counts, with the prediction made from that run's ceilings. A model
  // error stays out of tolerance every time.
  auto outside = [&] {
    for (const auto& c : j["cases"])
      if (std::fabs(c["error"].get<double>()) >= kTolerance) return true;
    return false;
  };
  for (int attempt = 0; attempt < kRetries && outside(); ++attempt) {
    std::this_thread::sleep_for(kRetryPause);
    const nlohmann::json again = measure();
    ASSERT_EQ(again["cases"].size(), 5u) << again.dump(1);
    for (size_t i = 0; i < 5; ++i)
      if (again["cases"][i]["measured_ms"].get<double>() < j["cases"][i]["measured_ms"].get<double>())
        j["cases"][i] = again["cases"][i];
  }
  const auto& ceil = j["ceilings"];
  EXPECT_EQ(ceil["threads"], 1);
  EXPECT_GT(ceil["read_gbps"].get<double>(), 0);
  EXPECT_GT(ceil["fp32_fma_gflops"].get<double>(), 0);
  std::string table;
  for (const auto& c : j["cases"]) {
    char line[200];
    std::snprintf(line, sizeof line, "%-16s measured %8.1f ms  predicted %8.1f ms  %+6.1f%%\n",
                  c["case"].get<std::string>().c_str(), c["measured_ms"].get<double>(),
                  c["predicted_ms"].get<double>(), 100 * c["error"].get<double>());
    table += line;
  }
  std::printf("ceilings: read %.1f GB/s, FP32 FMA %.0f GFLOP/s, dot %.0f GFLOP/s\n%s",
              ceil["read_gbps"].get<double>(), ceil["fp32_fma_gflops"].get<double>(),
              ceil["bf16_dot_gflops"].get<double>(), table.c_str());
  for (const auto& c : j["cases"]) {
    EXPECT_FALSE(c["fitted"].get<bool>());
    EXPECT_LT(std::fabs(c["error"].get<double>()), kTolerance) << c["case"] << "\n" << table;
    // The routing the prediction assumes: B tokens × 8 choices over 256 experts, uniformly.
    const double B = c["role"] == "prefill" ? c["batch"].get<double>() * c["length"].get<double>()
                                            : c["batch"].get<double>();
    const double expected = 256 * (1 - std::pow(1 - 8.0 / 256, B));
    EXPECT_NEAR(c["distinct_experts_per_layer"].get<double>(), expected, 0.2 * expected + 1) << c["case"];
  }
}

// The rank count: a decode step of 16 sequences on one rank, and of 8 per rank on two ranks (expert
// parallel over MPI, one thread each: a core per rank on a 2-core machine), against `sim unit` with
// EP 1 and EP 2 on the cpu preset (ranks on one host exchanging through shared memory). Wall time of
// the steady steps (`run --json`'s decode_step_s), the best of three runs: the two ranks wait on
// each other, which is part of what is predicted.
TEST(Calibration, CpuPresetPredictsDecodeStepsAtOneAndTwoRanks) {
  const auto model = generated_model("bench", "--set num_hidden_layers=3 --no-mtp");
  const auto dir = scratch_dir("calibration-ranks");
  {
    std::ofstream batch(dir / "batch.txt");  // 16 prompts of 32 tokens (context ~37 while decoding)
    for (int p = 0; p < 16; ++p)
      for (int i = 0; i < 32; ++i) batch << (i ? "," : "") << 1000 + (p * 7919 + i * 104729) % 120000 << (i == 31 ? "\n" : "");
  }
  const std::string env = "OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 ";
  const std::string run = epserve_binary().string() + " run --model " + model.string() + " --batch-file " +
                          (dir / "batch.txt").string() + " --max-tokens 9 --ignore-eos --json";
  // The best step of three runs, and with it the ranks' imbalance in routed-expert work (max / mean
  // of their expert seconds): the unit model's EPLB input, measured, since the tokens' routing
  // decides it and the prediction is of this routing.
  auto best_step_ms = [&](const std::string& launcher, double* imbalance) {
    double best = 1e30;
    for (int rep = 0; rep < 3; ++rep) {
      const auto r = run_command(env + launcher + run + " 2>/dev/null");
      EXPECT_EQ(r.exit_code, 0) << r.output;
      const auto j = nlohmann::json::parse(r.output.substr(r.output.find('{')), nullptr, false);
      if (j.is_discarded()) continue;
      // The steady step the model predicts: the median of the decode steps after the first (7 of 8);
      // the first carries one-time costs (2-3x the others on a PVM guest, with no page faults to
      // show for it).
      auto steps = j["timings"]["decode_step_s"].get<std::vector<double>>();
      EXPECT_EQ(steps.size(), 8u);
      if (steps.size() < 2) continue;
      steps.erase(steps.begin());
      std::sort(steps.begin(), steps.end());
      const double step = 1e3 * steps[steps.size() / 2];
      if (step >= best) continue;
      best = step;
      if (imbalance && j["timings"].contains("expert_parallel")) {
        double mx = 0, sum = 0;
        for (const auto& rank : j["timings"]["expert_parallel"]) {
          mx = std::max(mx, rank["experts_s"].get<double>());
          sum += rank["experts_s"].get<double>();
        }
        *imbalance = mx / (sum / double(j["timings"]["expert_parallel"].size()));
      }
    }
    return best;
  };
  auto predicted_ms = [&](int ep, int batch, double imbalance) {
    const auto r = run_command(env + epserve_binary().string() + " sim unit --hw cpu --model " + model.string() +
                               " --role decode --ep " + std::to_string(ep) + " --ranks-per-node " + std::to_string(ep) +
                               " --batch-per-gpu " + std::to_string(batch) + " --eplb-imbalance " +
                               std::to_string(imbalance) + " --kv-len 37 --redundant 0 --overlap off --json 2>/dev/null");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return nlohmann::json::parse(r.output.substr(r.output.find('{')))["step_ms"].get<double>();
  };
  const std::string mpirun = "mpirun --oversubscribe -n 2 -x OMP_NUM_THREADS ";
  double imbalance = 1;
  double one = best_step_ms("", nullptr), two = best_step_ms(mpirun, &imbalance);
  double p1 = predicted_ms(1, 16, 1), p2 = predicted_ms(2, 8, imbalance);
  // As above: noise only slows a run down, so a case out of tolerance gets three more runs,
  // kRetries times at most, after a pause.
  for (int attempt = 0; attempt < kRetries && std::fabs(p1 / one - 1) >= kTolerance; ++attempt) {
    std::this_thread::sleep_for(kRetryPause);
    one = std::min(one, best_step_ms("", nullptr));
    p1 = predicted_ms(1, 16, 1);
  }
  for (int attempt = 0; attempt < kRetries && std::fabs(p2 / two - 1) >= kTolerance; ++attempt) {
    std::this_thread::sleep_for(kRetryPause);
    double again_imbalance = imbalance;
    const double again = best_step_ms(mpirun, &again_imbalance);
    if (again < two) two = again, imbalance = again_imbalance;
    p2 = predicted_ms(2, 8, imbalance);
  }
  std::printf("decode 16 sequences: 1 rank measured %.1f ms, predicted %.1f ms (%+.1f%%); 2 ranks measured %.1f ms, "
              "predicted %.1f ms (%+.1f%%) at the measured expert imbalance %.3f\n",
              one, p1, 100 * (p1 / one - 1), two, p2, 100 * (p2 / two - 1), imbalance);
  EXPECT_LT(std::fabs(p1 / one - 1), kTolerance);
  EXPECT_LT(std::fabs(p2 / two - 1), kTolerance);
  EXPECT_LT(two, one) << "two ranks, a core each, should take less time per step than one";
}

}  // namespace
