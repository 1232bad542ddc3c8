// A disaggregated deployment across two hosts: the router and a prefill unit on host A, a decode
// unit on host B (two network namespaces joined by a veth pair; mpirun reaches B through an rsh
// agent). The decode rank binds its KV socket on B's address, the prefill rank on A sends it the
// prompt's blocks over TCP, and the answer equals the single-process server's.
#include <gtest/gtest.h>
#include <unistd.h>

#include "serve/server.h"
#include "serve/unit_helpers.h"
#include "support/two_hosts.h"

namespace epserve::testing {
namespace {

using nlohmann::json;

std::string toml_strings(const std::string& flags) {
  std::istringstream in(flags);
  std::string out;
  for (std::string w; in >> w;) out += (out.empty() ? "\"" : ", \"") + w + "\"";
  return "[" + out + "]";
}

TEST(DeploymentTwoHosts, DecodeUnitOnAnotherHostTakesTheKvOverTcp) {
  if (::geteuid() != 0) GTEST_SKIP() << "network namespaces need root (CI runs as root)";
  TwoHosts hosts;
  ASSERT_TRUE(hosts.ok()) << hosts.error();
  const auto model = generated_model("tiny");
  const auto dir = scratch_dir("deployment-two-hosts");
  const auto agent = hosts.write_rsh_agent(dir);
  std::string prompt;
  for (int i = 0; i < 150; ++i) prompt += "across" + std::to_string(i) + " ";
  const json body = chat_body(prompt, 10);
  std::ofstream(dir / "body.json") << body.dump();

  json reference;
  {
    ServerProcess s(model, dir / "single", "--no-kv-disk --kv-blocks 256");
    int status = 0;
    reference = post_json(s, "/v1/chat/completions", body, &status);
    ASSERT_EQ(status, 200) << reference.dump();
    EXPECT_EQ(s.stop(), 0);
  }

  const std::string mpi = toml_strings(std::string("--mca plm_rsh_agent ") + agent.string() + " " + TwoHosts::kMpiNetwork);
  std::ofstream(dir / "two-hosts.toml") << "router_address = \"" << TwoHosts::kAddressA << "\"\n\n"
                                        << "[[unit]]\nname = \"prefill-a\"\nrole = \"prefill\"\nranks = 1\nhosts = [\""
                                        << TwoHosts::kAddressA << "\"]\nmpirun_args = " << mpi << "\n\n"
                                        << "[[unit]]\nname = \"decode-b\"\nrole = \"decode\"\nranks = 1\nhosts = [\""
                                        << TwoHosts::kAddressB << "\"]\nmpirun_args = " << mpi << "\n";
  const std::string d = dir.string();
  const std::string script =
      epserve_binary().string() + " serve --model " + model.string() + " --served-model-name tiny --deployment " + d +
      "/two-hosts.toml --host " + TwoHosts::kAddressA + " --port 0 --port-file " + d + "/port --no-kv-disk --kv-blocks 256" +
      " --ledger " + d + "/ledger.jsonl > " + d + "/server.log 2>&1 & pid=$!; " +
      "for i in $(seq 900); do [ -s " + d + "/port ] && break; kill -0 $pid 2>/dev/null || exit 3; sleep 0.2; done; " +
      "url=http://" + TwoHosts::kAddressA + ":$(cat " + d + "/port); " +
      "for i in $(seq 100); do curl -sf $url/health >/dev/null && break; sleep 0.2; done; " +
      "curl -s --max-time 120 $url/v1/chat/completions -H 'Content-Type: application/json' -d @" + d +
      "/body.json > " + d + "/answer.json; sleep 0.6; curl -s $url/metrics > " + d + "/metrics.txt; " +
      "kill -TERM $pid; wait $pid";
  std::ofstream(dir / "run.sh") << script << "\n";
  const auto r = run_command("timeout 300 ip netns exec " + hosts.a() + " sh " + d + "/run.sh");
  const std::string log = read_file(dir / "server.log");
  ASSERT_EQ(r.exit_code, 0) << r.output << log;

  const auto answer = json::parse(read_file(dir / "answer.json"), nullptr, false);
  ASSERT_TRUE(answer.is_object()) << read_file(dir / "answer.json") << log;
  EXPECT_EQ(answer["choices"][0]["message"]["content"], reference["choices"][0]["message"]["content"]) << answer.dump();
  EXPECT_EQ(answer["usage"], reference["usage"]);
  // The decode rank took KV over the veth: it registered an endpoint on host B, and took blocks.
  EXPECT_NE(log.find(std::string("\"kv_endpoint\":\"tcp://") + TwoHosts::kAddressB + ":"), std::string::npos) << log;
  const std::string metrics = read_file(dir / "metrics.txt");
  const auto at = metrics.find("epserve_kv_handoff_blocks_received_total{");
  ASSERT_NE(at, std::string::npos) << metrics;
  EXPECT_GE(std::stod(metrics.substr(metrics.find(' ', at) + 1)), 2) << "150 words: several full blocks";
}

}  // namespace
}  // namespace epserve::testing
