// The same prompts through 1, 2 and 4 MPI ranks (and 2 ranks with redundant experts, and a
// shuffled placement): identical greedy tokens and bit-identical logits in both numerics (exact: FP32
// rows, and the kernels give a row the same bits whatever the batch; DeepSeek: FP8 dispatch, BF16
// combine, fixed-order weighted sum).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <random>

#include "support/paths.h"

using namespace epserve;
namespace fs = std::filesystem;
using epserve::testing::run_command;

namespace {

std::vector<float> read_floats(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::vector<float> v(fs::file_size(p) / 4);
  in.read(reinterpret_cast<char*>(v.data()), std::streamsize(v.size() * 4));
  return v;
}

double worst_row_error(const std::vector<float>& got, const std::vector<float>& want, size_t vocab) {
  double worst = 0;
  for (size_t r = 0; r * vocab < want.size(); ++r) {
    double num = 0, den = 0;
    for (size_t i = r * vocab; i < (r + 1) * vocab; ++i) {
      num += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
      den += double(want[i]) * want[i];
    }
    worst = std::max(worst, std::sqrt(num / den));
  }
  return worst;
}

class MpirunTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = epserve::testing::generated_model("tiny");
    dir_ = epserve::testing::scratch_dir("mpirun");
    // Six prompts of different lengths, fresh each run.
    std::mt19937 rng(std::random_device{}());
    std::ofstream batch(dir_ / "batch.txt");
    for (int len : {1, 3, 8, 2, 13, 5}) {
      for (int i = 0; i < len; ++i) batch << (i ? "," : "") << rng() % 129280;
      batch << "\n";
    }
  }
  // Runs `epserve run` on `ranks` processes (0: without mpirun); returns stdout.
  std::string run(int ranks, const std::string& numerics, const std::string& logits, const std::string& extra = "") {
    std::string cmd;
    if (ranks > 0)
      cmd = "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 "
            "mpirun --oversubscribe -n " + std::to_string(ranks) + " ";
    cmd += epserve::testing::epserve_binary().string() + " run --model " + model_.string() + " --batch-file " +
           (dir_ / "batch.txt").string() + " --max-tokens 8 --ignore-eos --numerics " + numerics +
           " --dump-logits " + (dir_ / logits).string() + " " + extra + " > " + (dir_ / "stdout.txt").string();
    const auto r = run_command(cmd);
    EXPECT_EQ(r.exit_code, 0) << cmd << "\n" << r.output;
    // The generated tokens and text; not the timing line.
    std::ifstream in(dir_ / "stdout.txt");
    std::string line, out;
    while (std::getline(in, line))
      if (!line.starts_with("prefill ")) out += line + "\n";
    return out;
  }
  fs::path model_, dir_;
};

TEST_F(MpirunTest, ExactNumericsAgreeAcrossRankCounts) {
  const auto one = run(0, "exact", "one.bin");
  const auto want = read_floats(dir_ / "one.bin");
  ASSERT_EQ(want.size(), 6u * 8 * 129280);
  for (auto [ranks, extra] : std::vector<std::pair<int, std::string>>{{1, ""}, {2, ""}, {4, ""}, {2, "--redundant 8"}}) {
    SCOPED_TRACE(std::to_string(ranks) + " ranks " + extra);
    EXPECT_EQ(run(ranks, "exact", "many.bin", extra), one);
    const auto got = read_floats(dir_ / "many.bin");
    EXPECT_LT(worst_row_error(got, want, 129280), 1e-6);
    EXPECT_TRUE(got == want) << "exact-numerics logits differ in the last bits";
  }
}

TEST_F(MpirunTest, DeepSeekNumericsIdenticalAcrossRankCountsAndPlacements) {
  const auto one = run(0, "deepseek", "one.bin");
  const auto want = read_floats(dir_ / "one.bin");
  // A shuffled placement with 8 redundant slots.
  std::string layout;
  std::vector<int> slots(40);
  for (int s = 0; s < 40; ++s) slots[s] = s % 32;
  std::shuffle(slots.begin(), slots.end(), std::mt19937(5));
  for (int s = 0; s < 40; ++s) layout += (s ? "," : "") + std::to_string(slots[s]);
  std::ofstream(dir_ / "placement.json") << "{\"ranks\": 4, \"layers\": {\"1\": [" << layout << "], \"2\": [" << layout << "]}}";
  for (auto [ranks, extra] : std::vector<std::pair<int, std::string>>{
           {2, ""}, {4, ""}, {2, "--redundant 8"}, {4, "--placement " + (dir_ / "placement.json").string()}}) {
    SCOPED_TRACE(std::to_string(ranks) + " ranks " + extra);
    EXPECT_EQ(run(ranks, "deepseek", "many.bin", extra), one);
    EXPECT_EQ(read_floats(dir_ / "many.bin"), want);
  }
}

TEST_F(MpirunTest, BadPlacementStopsTheUnitWithAMessage) {
  std::ofstream(dir_ / "bad.json") << "{\"layers\": {\"1\": [0, 1]}}";
  const auto r = run_command("OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun --oversubscribe -n 2 " +
                             epserve::testing::epserve_binary().string() + " run --model " + model_.string() +
                             " --tokens 1,2 --placement " + (dir_ / "bad.json").string());
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("bad.json"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("has no slot"), std::string::npos) << r.output;
}

}  // namespace
