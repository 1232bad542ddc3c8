// `serve --deployment FILE` with prefill and decode units: a request is prefilled on a prefill rank,
// its KV blocks go straight to a decode rank, and the decode rank streams the rest. The same
// requests (greedy, sampled with a seed, with logprobs, prompts shorter and longer than a KV block)
// give exactly the completions, logprobs and usage of one mixed unit: the prompt's KV is the same
// bits wherever it is computed (batch-invariant kernels, per-row attention), the decode rank only
// recomputes the partial last block, and the sampler's state travels with the request.
//
// Faults: a prefill unit killed while it computes a prompt has its request retried on the other
// prefill unit (no token was sent yet), which completes it, and is launched again; a decode unit
// killed mid-stream ends that stream with an error (its tokens were sent) while the other decode
// unit serves on; with no decode unit left, a request in prefill ends with an error and /health
// says 503.
#include <gtest/gtest.h>
#include <signal.h>

#include <future>

#include "serve/server.h"
#include "serve/unit_helpers.h"

namespace epserve::testing {
namespace {

using nlohmann::json;

std::filesystem::path write_deployment(const std::filesystem::path& dir, const std::string& name, const std::string& toml) {
  std::filesystem::create_directories(dir);
  const auto f = dir / name;
  std::ofstream(f) << toml;
  return f;
}

std::string words(int n, const std::string& stem) {
  std::string s;
  for (int i = 0; i < n; ++i) s += stem + std::to_string(i) + " ";
  return s;
}

// The requests both deployments answer, one at a time, and what is compared of each answer.
std::vector<json> answers(const ServerProcess& s) {
  std::vector<json> bodies = {chat_body("Hello there", 12), chat_body("Write a haiku about expert parallelism", 12),
                              chat_body(words(150, "block"), 12),     // several full blocks hand over
                              chat_body(words(32, "exact"), 10)};     // the prompt shorter than a block
  auto sampled = chat_body(words(100, "sample"), 16);
  sampled["temperature"] = 0.9;
  sampled["top_p"] = 0.95;
  sampled["seed"] = 7;
  bodies.push_back(sampled);
  auto logprobs = chat_body(words(80, "logprob"), 6);
  logprobs["logprobs"] = true;
  logprobs["top_logprobs"] = 3;
  bodies.push_back(logprobs);
  std::vector<json> out;
  for (const auto& b : bodies) {
    int status = 0;
    auto j = post_json(s, "/v1/chat/completions", b, &status);
    EXPECT_EQ(status, 200) << j.dump();
    out.push_back({{"content", j["choices"][0]["message"]["content"]},
                   {"finish", j["choices"][0]["finish_reason"]},
                   {"logprobs", j["choices"][0]["logprobs"]},
                   {"usage", j["usage"]}});
  }
  return out;
}

TEST(Deployment, PrefillAndDecodeUnitsAnswerAsOneMixedUnit) {
  const auto dir = scratch_dir("deployment-pd");
  const auto mixed_file = write_deployment(dir, "mixed.toml", "[[unit]]\nrole = \"mixed\"\nranks = 2\n");
  const auto pd_file = write_deployment(
      dir, "pd.toml", "[[unit]]\nrole = \"prefill\"\nranks = 2\n\n[[unit]]\nrole = \"decode\"\nranks = 2\n");
  std::vector<json> mixed;
  {
    ServerProcess s(tiny_model(), dir / "mixed", "--no-kv-disk --kv-blocks 256 --deployment " + mixed_file.string());
    mixed = answers(s);
    EXPECT_EQ(s.stop(), 0);
  }
  ServerProcess s(tiny_model(), dir / "pd", "--no-kv-disk --kv-blocks 256 --deployment " + pd_file.string());
  const std::string endpoint = unit_endpoint(s);
  ASSERT_FALSE(endpoint.empty()) << s.log();
  EXPECT_EQ(pids_with(endpoint).size(), 6u) << "two mpiruns and four ranks";
  const auto pd = answers(s);
  ASSERT_EQ(pd.size(), mixed.size());
  for (size_t i = 0; i < pd.size(); ++i) EXPECT_EQ(pd[i], mixed[i]) << i;
  EXPECT_EQ(pd[2]["usage"]["prompt_tokens"].get<int>() > 128, true) << pd[2].dump();
  EXPECT_EQ(pd[5]["logprobs"]["content"].size(), 6u) << pd[5].dump();

  // The KV went over: every block a prefill rank sent, a decode rank took (stats come every 250 ms).
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  const double sent = s.metric("epserve_kv_handoff_blocks_sent_total");
  EXPECT_GE(sent, 2 + 1 + 1);  // the 150-, 100- and 80-word prompts: at least 2, 1 and 1 full blocks
  EXPECT_EQ(s.metric("epserve_kv_handoff_blocks_received_total"), sent);
  EXPECT_GT(s.metric("epserve_dispatch_bytes_total"), 0);

  // A prompt seen before goes to the prefill rank it went to (prefix-cache affinity) and hits there.
  int status = 0;
  auto repeat = post_json(s, "/v1/chat/completions", chat_body(words(150, "block"), 12), &status);
  EXPECT_EQ(status, 200);
  EXPECT_EQ(repeat["choices"][0]["message"]["content"], pd[2]["content"]);
  EXPECT_EQ(repeat["usage"]["prompt_tokens_details"]["cached_tokens"].get<int>(),
            (pd[2]["usage"]["prompt_tokens"].get<int>() - 1) / 64 * 64) << repeat.dump();

  // Concurrent streams over both decode ranks.
  std::vector<std::future<std::string>> streams;
  for (int i = 0; i < 8; ++i)
    streams.push_back(std::async(std::launch::async, [&, i] { return stream_chat(s, words(20 + 10 * i, "s"), 16, 90); }));
  for (auto& f : streams) {
    const auto body = f.get();
    EXPECT_NE(body.find("data: [DONE]"), std::string::npos) << body;
    EXPECT_NE(body.find("\"finish_reason\":\"length\""), std::string::npos) << body;
  }
  EXPECT_EQ(s.stop(60), 0) << s.log();
  EXPECT_TRUE(wait_until_gone(endpoint, 10)) << "unit processes left behind";
}

// The unit (by name) holding a request, from /health; empty when none does.
std::string busy_unit(const ServerProcess& s, const std::string& role) {
  auto r = s.client().Get("/health");
  if (!r) return "";
  const auto j = json::parse(r->body, nullptr, false);
  if (!j.is_object() || !j.contains("units")) return "";
  for (const auto& u : j["units"])
    if (u["role"] == role && u["in_flight"].get<int>() > 0 && u["status"] == "up") return u["name"];
  return "";
}

std::string wait_busy_unit(const ServerProcess& s, const std::string& role, double timeout_s = 30) {
  const auto deadline = clock_type::now() + std::chrono::duration<double>(timeout_s);
  while (clock_type::now() < deadline) {
    if (auto u = busy_unit(s, role); !u.empty()) return u;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return "";
}

// Kills (-9) the rank of a one-rank unit; the unit's index is its place in the file.
bool kill_rank(const std::string& endpoint, int unit_index) {
  const auto pids = pids_with("^[^ ]*epserve unit .*--unit-id " + std::to_string(unit_index) + " .*" + endpoint);
  if (pids.size() != 1) return false;
  return ::kill(pids[0], SIGKILL) == 0;
}

std::string unit_metric_line(const ServerProcess& s, const std::string& name, const std::string& unit) {
  auto r = s.client().Get("/metrics");
  if (!r) return "";
  std::istringstream in(r->body);
  for (std::string line; std::getline(in, line);)
    if (line.rfind(name + "{unit=\"" + unit + "\"", 0) == 0) return line;
  return "";
}

bool wait_unit_up_again(const ServerProcess& s, const std::string& unit, double timeout_s) {
  const auto deadline = clock_type::now() + std::chrono::duration<double>(timeout_s);
  while (clock_type::now() < deadline) {
    if (auto r = s.client().Get("/health")) {
      const auto j = json::parse(r->body, nullptr, false);
      if (j.is_object() && j.contains("units"))
        for (const auto& u : j["units"])
          if (u["name"] == unit && u["status"] == "up" && u["restarts"].get<int>() >= 1) return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

std::future<std::pair<int, json>> post_async(const ServerProcess& s, json body) {
  return std::async(std::launch::async, [&s, body] {
    int status = 0;
    auto j = post_json(s, "/v1/chat/completions", body, &status);
    return std::make_pair(status, j);
  });
}

TEST(Deployment, FailedUnitsRetryRestartOrEndTheirRequests) {
  const auto dir = scratch_dir("deployment-faults");
  // prefill-a is launched again when it fails; the others are not (restart = false).
  const auto file = write_deployment(dir, "four.toml",
                                     "[[unit]]\nname = \"prefill-a\"\nrole = \"prefill\"\nranks = 1\n\n"
                                     "[[unit]]\nname = \"prefill-b\"\nrole = \"prefill\"\nranks = 1\nrestart = false\n\n"
                                     "[[unit]]\nname = \"decode-a\"\nrole = \"decode\"\nranks = 1\nrestart = false\n\n"
                                     "[[unit]]\nname = \"decode-b\"\nrole = \"decode\"\nranks = 1\nrestart = false\n");
  ServerProcess s(tiny_model(), dir, "--no-kv-disk --kv-blocks 512 --step-tokens 128 --deployment " + file.string());
  const std::string endpoint = unit_endpoint(s);
  ASSERT_FALSE(endpoint.empty()) << s.log();
  const std::vector<std::string> names = {"prefill-a", "prefill-b", "decode-a", "decode-b"};
  auto index_of = [&](const std::string& n) { return int(std::find(names.begin(), names.end(), n) - names.begin()); };

  // 1. prefill-a (the first in round robin) dies while it computes a long prompt: the request moves
  // to prefill-b, which completes it, and prefill-a is launched again.
  // (8,000 tokens: a prefill of about a second here, so that the kill lands inside it on a machine
  // several times as fast too; the prefill got 1.5x faster this session and CI runs faster still.)
  const std::string long_prompt = words(8000, "x");
  auto first = post_async(s, chat_body(long_prompt, 8));
  ASSERT_EQ(wait_busy_unit(s, "prefill"), "prefill-a") << s.log();
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // into the prompt's chunks
  ASSERT_TRUE(kill_rank(endpoint, index_of("prefill-a")));
  ASSERT_EQ(first.wait_for(std::chrono::seconds(120)), std::future_status::ready) << "the retried request hangs";
  const auto [status1, answer1] = first.get();
  EXPECT_EQ(status1, 200) << answer1.dump();
  EXPECT_EQ(answer1["usage"]["completion_tokens"], 8) << answer1.dump();
  EXPECT_NE(unit_metric_line(s, "epserve_unit_retried_total", "prefill-a").find("} 1"), std::string::npos)
      << unit_metric_line(s, "epserve_unit_retried_total", "prefill-a");
  EXPECT_NE(s.log().find("request_retried"), std::string::npos);
  EXPECT_TRUE(wait_unit_up_again(s, "prefill-a", 90)) << s.log();
  EXPECT_NE(unit_metric_line(s, "epserve_unit_restarts_total", "prefill-a").find("} 1"), std::string::npos);
  // The same prompt again goes where it was cached (prefill-b) and gives the same answer.
  int status = 0;
  auto again = post_json(s, "/v1/chat/completions", chat_body(long_prompt, 8), &status);
  EXPECT_EQ(status, 200);
  EXPECT_EQ(again["choices"][0]["message"]["content"], answer1["choices"][0]["message"]["content"]);
  EXPECT_GT(again["usage"]["prompt_tokens_details"]["cached_tokens"].get<int>(), 0) << again.dump();

  // 2. A decode unit dies mid-stream: that stream ends with an error (its tokens were sent), promptly.
  std::filesystem::remove(temp_file("sse", "decode me"));
  auto stream = std::async(std::launch::async, [&] { return stream_chat(s, "decode me", 4000, 90); });
  ASSERT_TRUE(wait_first_token("decode me"));
  const std::string decode_unit = wait_busy_unit(s, "decode");
  ASSERT_FALSE(decode_unit.empty());
  const auto killed = clock_type::now();
  ASSERT_TRUE(kill_rank(endpoint, index_of(decode_unit)));
  ASSERT_EQ(stream.wait_for(std::chrono::seconds(20)), std::future_status::ready) << "the stream hangs";
  const auto body = stream.get();
  EXPECT_NE(body.find("unit " + decode_unit + " failed"), std::string::npos) << body.substr(body.size() > 2000 ? body.size() - 2000 : 0);
  EXPECT_LT(std::chrono::duration<double>(clock_type::now() - killed).count(), 15);
  // The other decode unit takes the next requests.
  auto after = post_json(s, "/v1/chat/completions", chat_body("after the decode unit died", 6), &status);
  EXPECT_EQ(status, 200) << after.dump();
  EXPECT_EQ(after["usage"]["completion_tokens"], 6);

  // 3. Whichever prefill unit computes the next long prompt dies: the other one (prefill-a back up,
  // or prefill-b) completes it.
  auto third = post_async(s, chat_body(words(4000, "y"), 8));
  const std::string busy = wait_busy_unit(s, "prefill");
  ASSERT_FALSE(busy.empty());
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ASSERT_TRUE(kill_rank(endpoint, index_of(busy)));
  ASSERT_EQ(third.wait_for(std::chrono::seconds(120)), std::future_status::ready) << "the retried request hangs";
  const auto [status3, answer3] = third.get();
  EXPECT_EQ(status3, 200) << answer3.dump();

  // 4. The last decode unit dies while a request is in flight (its decode rank reserved, usually
  // still in prefill): nowhere to retry, so it ends with an error, and the deployment says it
  // cannot serve (503). If the prefill finished first (a fast machine), the request was already on
  // the dead unit and ends with that unit's failure instead: either way an error that says why.
  if (busy == "prefill-a") {
    ASSERT_TRUE(wait_unit_up_again(s, "prefill-a", 90));
  }
  auto fourth = post_async(s, chat_body(words(4000, "z"), 8));
  ASSERT_FALSE(wait_busy_unit(s, "prefill").empty());
  const std::string last_decode = decode_unit == "decode-a" ? "decode-b" : "decode-a";
  ASSERT_TRUE(kill_rank(endpoint, index_of(last_decode)));
  ASSERT_EQ(fourth.wait_for(std::chrono::seconds(30)), std::future_status::ready) << "the request hangs";
  const auto [status4, answer4] = fourth.get();
  EXPECT_EQ(status4, 500) << answer4.dump();
  const std::string why = answer4.dump();
  EXPECT_TRUE(why.find("no other unit could take the request") != std::string::npos ||
              why.find("unit " + last_decode + " failed") != std::string::npos)
      << why;
  auto health = s.client().Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 503) << health->body;
  auto refused = post_json(s, "/v1/chat/completions", chat_body("nobody home", 4), &status);
  EXPECT_EQ(status, 503) << refused.dump();

  EXPECT_EQ(s.stop(30), 0) << s.log();
  EXPECT_TRUE(wait_until_gone(endpoint, 10)) << "unit processes left behind";
}

TEST(Deployment, BadDeploymentFileIsNamedAtStart) {
  const auto dir = scratch_dir("deployment-bad");
  const auto file = write_deployment(dir, "typo.toml", "[[unit]]\nrole = \"prefill\"\nrank = 2\n");
  std::string message;
  try {
    ServerProcess s(tiny_model(), dir, "--no-kv-disk --kv-blocks 64 --deployment " + file.string());
  } catch (const std::exception& e) {
    message = e.what();
  }
  EXPECT_NE(message.find("typo.toml"), std::string::npos) << message;
  EXPECT_NE(message.find("'rank'"), std::string::npos) << message;
}

}  // namespace
}  // namespace epserve::testing
