// A 2-rank unit across two hosts: two network namespaces joined by a veth pair, one rank in each,
// over OpenMPI's TCP transport (mpirun starts the remote rank through an `rsh` agent that enters
// the other namespace). The outputs must equal a single process's, bit for bit (DeepSeek numerics).
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <random>

#include "support/paths.h"
#include "support/two_hosts.h"

using namespace epserve;
namespace fs = std::filesystem;
using epserve::testing::run_command;
using epserve::testing::TwoHosts;

namespace {

TEST(TwoHosts, TwoRankUnitOverTcpMatchesOneProcess) {
  if (::geteuid() != 0) GTEST_SKIP() << "network namespaces need root (CI runs as root)";
  TwoHosts hosts;
  ASSERT_TRUE(hosts.ok()) << hosts.error();
  const auto model = epserve::testing::generated_model("tiny");
  const auto dir = epserve::testing::scratch_dir("two-hosts");
  const auto agent = hosts.write_rsh_agent(dir);
  std::mt19937 rng(std::random_device{}());
  {
    std::ofstream batch(dir / "batch.txt");
    for (int len : {4, 9, 2})
      for (int i = 0; i < len; ++i) batch << (i ? "," : "") << rng() % 129280 << (i == len - 1 ? "\n" : "");
  }
  const std::string args = " run --model " + model.string() + " --batch-file " + (dir / "batch.txt").string() +
                           " --max-tokens 6 --ignore-eos --dump-logits ";
  const auto one = run_command(epserve::testing::epserve_binary().string() + args + (dir / "one.bin").string() +
                               " > " + (dir / "one.txt").string());
  ASSERT_EQ(one.exit_code, 0) << one.output;
  const auto two = run_command(
      "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 120 ip netns exec " + hosts.a() +
      " mpirun --host 10.231.7.1,10.231.7.2 -n 2 --mca plm_rsh_agent " + agent.string() + " " + TwoHosts::kMpiNetwork + " " +
      epserve::testing::epserve_binary().string() + args + (dir / "two.bin").string() + " --json > " +
      (dir / "two.json").string());
  ASSERT_EQ(two.exit_code, 0) << two.output;
  auto slurp = [](const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  EXPECT_EQ(slurp(dir / "one.bin"), slurp(dir / "two.bin"));
  // Both ranks exchanged rows with each other (the expert-parallel statistics name two ranks).
  const auto json = slurp(dir / "two.json");
  EXPECT_NE(json.find("\"expert_parallel\""), std::string::npos) << json;
  EXPECT_NE(json.find("\"ranks\":2"), std::string::npos) << json;
}

}  // namespace
