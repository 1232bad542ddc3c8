// A 2-rank unit across two hosts: two network namespaces joined by a veth pair, one rank in each,
// over OpenMPI's TCP transport (mpirun starts the remote rank through an `rsh` agent that enters
// the other namespace). The outputs must equal a single process's, bit for bit (DeepSeek numerics).
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <random>

#include "support/paths.h"

using namespace epserve;
namespace fs = std::filesystem;
using epserve::testing::run_command;

namespace {

class TwoHosts {
 public:
  TwoHosts() : a_("epsA" + std::to_string(::getpid())), b_("epsB" + std::to_string(::getpid())) {
    const std::string va = "va" + std::to_string(::getpid()), vb = "vb" + std::to_string(::getpid());
    const std::string script =
        "set -e; ip netns add " + a_ + "; ip netns add " + b_ + "; ip link add " + va + " type veth peer name " + vb +
        "; ip link set " + va + " netns " + a_ + "; ip link set " + vb + " netns " + b_ + "; ip -n " + a_ +
        " addr add 10.231.7.1/24 dev " + va + "; ip -n " + b_ + " addr add 10.231.7.2/24 dev " + vb + "; ip -n " + a_ +
        " link set " + va + " up; ip -n " + b_ + " link set " + vb + " up; ip -n " + a_ + " link set lo up; ip -n " + b_ +
        " link set lo up";
    const auto r = run_command(script);
    ok_ = r.exit_code == 0;
    error_ = r.output;
  }
  ~TwoHosts() { run_command("ip netns del " + a_ + "; ip netns del " + b_); }
  bool ok() const { return ok_; }
  const std::string& error() const { return error_; }
  const std::string& a() const { return a_; }
  const std::string& b() const { return b_; }

 private:
  std::string a_, b_, error_;
  bool ok_ = false;
};

TEST(TwoHosts, TwoRankUnitOverTcpMatchesOneProcess) {
  if (::geteuid() != 0) GTEST_SKIP() << "network namespaces need root (CI runs as root)";
  TwoHosts hosts;
  ASSERT_TRUE(hosts.ok()) << hosts.error();
  const auto model = epserve::testing::generated_model("tiny");
  const auto dir = epserve::testing::scratch_dir("two-hosts");
  // The rsh agent: `agent [options] host command...` runs the command inside that host's namespace.
  std::ofstream(dir / "netns-rsh") << "#!/bin/sh\nwhile [ \"${1#-}\" != \"$1\" ]; do shift; done\nhost=$1; shift\n"
                                   << "case $host in 10.231.7.1) ns=" << hosts.a() << ";; 10.231.7.2) ns=" << hosts.b()
                                   << ";; *) echo \"unknown host $host\" >&2; exit 1;; esac\n"
                                   << "exec ip netns exec $ns sh -c \"$*\"\n";
  fs::permissions(dir / "netns-rsh", fs::perms::owner_all);
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
      " mpirun --host 10.231.7.1,10.231.7.2 -n 2 --mca plm_rsh_agent " + (dir / "netns-rsh").string() +
      " --mca btl tcp,self --mca btl_tcp_if_include 10.231.7.0/24 --mca oob_tcp_if_include 10.231.7.0/24 -x PATH " +
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
