// Deployment files (serve/deployment.h): a full prefill/decode file, defaults and default names,
// single_mixed, and every mistake the parser catches, each message checked for the file name and the
// offending key or value (the point of the messages is that a user can find the line to fix).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "base/error.h"
#include "serve/deployment.h"

namespace epserve::testing {
namespace {

namespace fs = std::filesystem;
using serve::Deployment;
using serve::UnitRole;
using ::testing::AllOf;
using ::testing::HasSubstr;

// A fresh directory per test, so that relative placements resolve against a known place.
fs::path test_dir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const fs::path dir = fs::path(::testing::TempDir()) / "deployment_file" / info->name();
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void write(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  ASSERT_TRUE(out.good()) << path;
}

// The message of the Error that parsing `toml` (named "deploy.toml") throws; "" when none.
std::string parse_error(const std::string& toml) {
  try {
    Deployment::parse(toml, "deploy.toml");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

constexpr const char* kPd = "[[unit]]\nrole = \"prefill\"\nranks = 2\n[[unit]]\nrole = \"decode\"\nranks = 2\n";

TEST(DeploymentFile, FullPrefillDecodeFile) {
  const fs::path dir = test_dir();
  fs::create_directories(dir / "conf");
  write(dir / "conf" / "placement.json", "{}");
  write(dir / "conf" / "deploy.toml", R"(
router_address = "10.0.0.1"
[[unit]]
role = "prefill"
ranks = 2
name = "p0"
hosts = ["nodeA:1", "nodeB:1"]
placement = "placement.json"
redundant = 3
mpirun_args = ["--mca", "btl_tcp_if_include", "veth0"]
kv_blocks = 512
max_running = 64
step_tokens = 256
restart = false
[[unit]]
role = "decode"
ranks = 4
)");
  const Deployment d = Deployment::load(dir / "conf" / "deploy.toml");
  EXPECT_EQ(d.router_address, "10.0.0.1");
  ASSERT_EQ(d.units.size(), 2u);
  const auto& p = d.units[0];
  EXPECT_EQ(p.name, "p0");
  EXPECT_EQ(p.role, UnitRole::kPrefill);
  EXPECT_EQ(p.ranks, 2);
  EXPECT_EQ(p.hosts, (std::vector<std::string>{"nodeA:1", "nodeB:1"}));
  EXPECT_TRUE(fs::path(p.placement).is_absolute()) << p.placement;
  EXPECT_TRUE(fs::equivalent(p.placement, dir / "conf" / "placement.json")) << p.placement;
  EXPECT_EQ(p.redundant, 3);
  EXPECT_EQ(p.mpirun_args, (std::vector<std::string>{"--mca", "btl_tcp_if_include", "veth0"}));
  EXPECT_EQ(p.kv_blocks, 512);
  EXPECT_EQ(p.max_running, 64);
  EXPECT_EQ(p.step_tokens, 256);
  EXPECT_FALSE(p.restart);
  const auto& dec = d.units[1];
  EXPECT_TRUE(dec.restart);
  EXPECT_EQ(dec.name, "decode-0");
  EXPECT_EQ(dec.role, UnitRole::kDecode);
  EXPECT_EQ(dec.ranks, 4);
  EXPECT_TRUE(d.disaggregated());
  EXPECT_EQ(d.summary(), "p0 (prefill, 2 ranks), decode-0 (decode, 4 ranks)");
}

TEST(DeploymentFile, DefaultsAndDefaultNames) {
  // Names count the units of each role, named ones included: the second prefill unit is prefill-1.
  const Deployment d = Deployment::parse(R"(
[[unit]]
role = "prefill"
ranks = 1
name = "first"
[[unit]]
role = "decode"
ranks = 2
[[unit]]
role = "prefill"
ranks = 3
)", "deploy.toml");
  EXPECT_EQ(d.router_address, "127.0.0.1");
  ASSERT_EQ(d.units.size(), 3u);
  EXPECT_EQ(d.units[0].name, "first");
  EXPECT_EQ(d.units[1].name, "decode-0");
  EXPECT_EQ(d.units[2].name, "prefill-1");
  const auto& u = d.units[1];
  EXPECT_TRUE(u.hosts.empty());
  EXPECT_TRUE(u.placement.empty());
  EXPECT_EQ(u.redundant, 0);
  EXPECT_TRUE(u.mpirun_args.empty());
  EXPECT_EQ(u.kv_blocks, 0);
  EXPECT_EQ(u.max_running, 0);
  EXPECT_EQ(u.step_tokens, 0);
  EXPECT_EQ(d.summary(), "first (prefill, 1 rank), decode-0 (decode, 2 ranks), prefill-1 (prefill, 3 ranks)");

  const Deployment mixed = Deployment::parse("[[unit]]\nrole = \"mixed\"\nranks = 2\n[[unit]]\nrole = \"mixed\"\nranks = 1\n",
                                             "deploy.toml");
  EXPECT_FALSE(mixed.disaggregated());
  EXPECT_EQ(mixed.summary(), "mixed-0 (mixed, 2 ranks), mixed-1 (mixed, 1 rank)");
}

TEST(DeploymentFile, SingleMixed) {
  const Deployment d = Deployment::single_mixed(4);
  EXPECT_EQ(d.router_address, "127.0.0.1");
  ASSERT_EQ(d.units.size(), 1u);
  EXPECT_EQ(d.units[0].role, UnitRole::kMixed);
  EXPECT_EQ(d.units[0].ranks, 4);
  EXPECT_EQ(d.units[0].name, "mixed-0");
  EXPECT_FALSE(d.disaggregated());
  EXPECT_EQ(d.summary(), "mixed-0 (mixed, 4 ranks)");
  EXPECT_THROW(Deployment::single_mixed(0), Error);
  EXPECT_STREQ(serve::to_string(UnitRole::kPrefill), "prefill");
}

TEST(DeploymentFile, HostsWithExplicitRouterAddress) {
  const Deployment d = Deployment::parse(
      "router_address = \"127.0.0.1\"\n[[unit]]\nrole = \"mixed\"\nranks = 2\nhosts = [\"localhost:2\"]\n", "deploy.toml");
  EXPECT_EQ(d.units[0].hosts, (std::vector<std::string>{"localhost:2"}));
}

TEST(DeploymentFile, FileErrors) {
  const fs::path dir = test_dir();
  const fs::path missing = dir / "nope.toml";
  try {
    Deployment::load(missing);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), AllOf(HasSubstr(missing.string()), HasSubstr("cannot read")));
  }
  try {
    Deployment::load(dir);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), AllOf(HasSubstr(dir.string()), HasSubstr("cannot read")));
  }
  // A relative placement that is not there, named as resolved against the file's directory.
  write(dir / "deploy.toml", "[[unit]]\nrole = \"mixed\"\nranks = 1\nplacement = \"missing.json\"\n");
  try {
    Deployment::load(dir / "deploy.toml");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), AllOf(HasSubstr((dir / "deploy.toml").string()), HasSubstr("unit 1 (mixed-0)"),
                                HasSubstr("'placement'"), HasSubstr((dir / "missing.json").string()),
                                HasSubstr("does not exist")));
  }
}

TEST(DeploymentFile, SyntaxError) {
  EXPECT_THAT(parse_error("[[unit]]\nrole = \"mixed\nranks = 1\n"),
              AllOf(HasSubstr("deploy.toml: line 2, column"), HasSubstr("not valid TOML")));
}

TEST(DeploymentFile, UnknownKeys) {
  EXPECT_THAT(parse_error("router = \"10.0.0.1\"\n[[unit]]\nrole = \"mixed\"\nranks = 1\n"),
              AllOf(HasSubstr("deploy.toml: "), HasSubstr("unknown top-level key 'router'"),
                    HasSubstr("(known: router_address, unit)")));
  EXPECT_THAT(parse_error("[[unit]]\nrole = \"mixed\"\nrank = 1\n"),
              AllOf(HasSubstr("deploy.toml: unit 1 (mixed-0): unknown key 'rank'"),
                    HasSubstr("(known: role, ranks, name, hosts, placement, redundant, mpirun_args, kv_blocks, "
                              "max_running, step_tokens, restart)")));
  EXPECT_THAT(parse_error("[[unit]]\nrole = \"mixed\"\nranks = 1\n[unit.extra]\nx = 1\n"),
              HasSubstr("deploy.toml: unit 1 (mixed-0): unknown key 'extra'"));
}

TEST(DeploymentFile, WrongTypes) {
  EXPECT_THAT(parse_error("[[unit]]\nrole = \"mixed\"\nranks = \"2\"\n"),
              HasSubstr("deploy.toml: unit 1 (mixed-0): 'ranks' must be an integer >= 1, got \"2\""));
  EXPECT_THAT(parse_error("[[unit]]\nrole = \"mixed\"\nranks = 1.5\n"),
              HasSubstr("deploy.toml: unit 1 (mixed-0): 'ranks' must be an integer >= 1, got 1.5"));
  EXPECT_THAT(parse_error("[[unit]]\nrole = \"mixed\"\nranks = 1\nhosts = \"nodeA\"\n"),
              HasSubstr("deploy.toml: unit 1 (mixed-0): 'hosts' must be an array of strings, got \"nodeA\""));
  EXPECT_THAT(parse_error("[[unit]]\nrole = \"mixed\"\nranks = 1\nmpirun_args = [\"-x\", 3]\n"),
              HasSubstr("deploy.toml: unit 1 (mixed-0): 'mpirun_args' must hold non-empty strings, got 3"));
  EXPECT_THAT(parse_error("[[unit]]\nrole = \"mixed\"\nranks = 1\nname = 7\n"),
              HasSubstr("deploy.toml: unit 1: 'name' must be a non-empty string, got 7"));
  EXPECT_THAT(parse_error("[[unit]]\nrole = \"mixed\"\nranks = 1\nplacement = true\n"),
              HasSubstr("deploy.toml: unit 1 (mixed-0): 'placement' must be a non-empty string, got true"));
  EXPECT_THAT(parse_error("router_address = 10\n[[unit]]\nrole = \"mixed\"\nranks = 1\n"),
              HasSubstr("deploy.toml: 'router_address' must be a non-empty string, got 10"));
  EXPECT_THAT(parse_error("[unit]\nrole = \"mixed\"\nranks = 1\n"),
              HasSubstr("deploy.toml: 'unit' must be an array of tables ([[unit]]), got a table"));
  EXPECT_THAT(parse_error("unit = [1]\n"), HasSubstr("deploy.toml: unit 1: must be a table ([[unit]]), got 1"));
  EXPECT_THAT(parse_error("[[unit]]\nrole = \"mixed\"\nranks = 1\nrestart = \"yes\"\n"),
              HasSubstr("deploy.toml: unit 1 (mixed-0): 'restart' must be true or false, got \"yes\""));
}

TEST(DeploymentFile, NoUnits) {
  EXPECT_THAT(parse_error(""), HasSubstr("deploy.toml: no units"));
  EXPECT_THAT(parse_error("router_address = \"10.0.0.1\"\n"), HasSubstr("deploy.toml: no units"));
  EXPECT_THAT(parse_error("unit = []\n"), HasSubstr("deploy.toml: no units"));
}

TEST(DeploymentFile, BadRoleAndMissingKeys) {
  EXPECT_THAT(parse_error("[[unit]]\nrole = \"prefil\"\nranks = 1\n"),
              HasSubstr("deploy.toml: unit 1: 'role' must be \"mixed\", \"prefill\" or \"decode\", got \"prefil\""));
  EXPECT_THAT(parse_error("[[unit]]\nranks = 1\n"), HasSubstr("deploy.toml: unit 1: 'role' is missing"));
  EXPECT_THAT(parse_error("[[unit]]\nrole = \"mixed\"\n"), HasSubstr("deploy.toml: unit 1 (mixed-0): 'ranks' is missing"));
}

TEST(DeploymentFile, BadNumbers) {
  // The example of deployment.h: the second unit, the first decode unit, with 0 ranks.
  EXPECT_THAT(parse_error("[[unit]]\nrole = \"prefill\"\nranks = 2\n[[unit]]\nrole = \"decode\"\nranks = 0\n"),
              HasSubstr("deploy.toml: unit 2 (decode-0): 'ranks' must be an integer >= 1, got 0"));
  for (const char* key : {"redundant", "kv_blocks", "max_running", "step_tokens"}) {
    EXPECT_THAT(parse_error(std::string(kPd) + key + " = -1\n"),
                HasSubstr(std::string("deploy.toml: unit 2 (decode-0): '") + key + "' must be an integer >= 0, got -1"));
  }
  EXPECT_THAT(parse_error("[[unit]]\nrole = \"mixed\"\nranks = 3000000000\n"),
              HasSubstr("deploy.toml: unit 1 (mixed-0): 'ranks' is too large, got 3000000000"));
}

TEST(DeploymentFile, DuplicateNames) {
  EXPECT_THAT(parse_error("[[unit]]\nrole = \"prefill\"\nranks = 1\nname = \"x\"\n"
                          "[[unit]]\nrole = \"decode\"\nranks = 1\nname = \"x\"\n"),
              HasSubstr("deploy.toml: unit 2 (x): name 'x' is already used by unit 1 (x)"));
  // A chosen name can collide with a default one.
  EXPECT_THAT(parse_error("[[unit]]\nrole = \"mixed\"\nranks = 1\n[[unit]]\nrole = \"mixed\"\nranks = 1\nname = \"mixed-0\"\n"),
              HasSubstr("deploy.toml: unit 2 (mixed-0): name 'mixed-0' is already used by unit 1 (mixed-0)"));
}

TEST(DeploymentFile, RoleCombinations) {
  EXPECT_THAT(parse_error("[[unit]]\nrole = \"prefill\"\nranks = 1\n"),
              HasSubstr("deploy.toml: unit 1 (prefill-0): a prefill unit needs a decode unit to hand its requests to"));
  EXPECT_THAT(parse_error("[[unit]]\nrole = \"decode\"\nranks = 1\n"),
              HasSubstr("deploy.toml: unit 1 (decode-0): a decode unit needs a prefill unit"));
  EXPECT_THAT(parse_error(std::string(kPd) + "[[unit]]\nrole = \"mixed\"\nranks = 1\n"),
              AllOf(HasSubstr("deploy.toml: units are mixed, or prefill and decode, not both"),
                    HasSubstr("unit 3 (mixed-0) is mixed"), HasSubstr("unit 1 (prefill-0) is prefill")));
}

TEST(DeploymentFile, HostsNeedRouterAddress) {
  EXPECT_THAT(parse_error(std::string(kPd) + "hosts = [\"nodeB:2\"]\n"),
              AllOf(HasSubstr("deploy.toml: unit 2 (decode-0): has 'hosts'"), HasSubstr("127.0.0.1"),
                    HasSubstr("set router_address to an address the hosts can reach")));
  EXPECT_THAT(parse_error(std::string(kPd) + "hosts = [\"\"]\n"),
              HasSubstr("deploy.toml: unit 2 (decode-0): 'hosts' must hold non-empty strings, got \"\""));
}

}  // namespace
}  // namespace epserve::testing
