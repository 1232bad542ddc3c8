// `serve --unit-ranks 2`: the router in one process, the model in a unit of two MPI ranks (expert
// parallel, lockstep) reached over ZeroMQ. The same greedy requests give the same completions and
// usage as the single-process server; concurrent streams complete; SIGTERM drains and stops the
// unit (no process left); a rank killed with kill -9 ends the requests in flight with an error at
// once, the router goes on answering, and the unit is launched again and serves.
#include <gtest/gtest.h>
#include <signal.h>

#include <future>
#include <sstream>

#include "serve/server.h"
#include "serve/unit_helpers.h"

namespace epserve::testing {
namespace {

using nlohmann::json;

const std::vector<std::string> kPrompts = {"Hello there", "What is the capital of France? Answer briefly.",
                                           "Write a haiku about expert parallelism", "1 2 3 4 5 6 7 8"};

std::vector<json> sequential_answers(const ServerProcess& s) {
  std::vector<json> out;
  for (const auto& p : kPrompts) {
    int status = 0;
    auto j = post_json(s, "/v1/chat/completions", chat_body(p, 12), &status);
    EXPECT_EQ(status, 200) << j.dump();
    out.push_back({{"content", j["choices"][0]["message"]["content"]}, {"usage", j["usage"]},
                   {"finish", j["choices"][0]["finish_reason"]}});
  }
  // Logprobs travel too (the same logits give the same values).
  auto body = chat_body(kPrompts[0], 6);
  body["logprobs"] = true;
  body["top_logprobs"] = 3;
  int status = 0;
  auto j = post_json(s, "/v1/chat/completions", body, &status);
  EXPECT_EQ(status, 200) << j.dump();
  EXPECT_EQ(j["choices"][0]["logprobs"]["content"].size(), 6u) << j.dump();
  out.push_back({{"logprobs", j["choices"][0]["logprobs"]}});
  return out;
}

TEST(Unit, TwoRanksMatchSingleProcessThenDrainOnSigterm) {
  const auto dir = scratch_dir("unit-match");
  std::vector<json> single;
  {
    ServerProcess s(tiny_model(), dir / "single", "--no-kv-disk --kv-blocks 512");
    single = sequential_answers(s);
    EXPECT_EQ(s.stop(), 0);
  }
  ServerProcess s(tiny_model(), dir / "unit", "--no-kv-disk --kv-blocks 512 --unit-ranks 2");
  const std::string endpoint = unit_endpoint(s);
  ASSERT_FALSE(endpoint.empty()) << s.log();
  EXPECT_EQ(pids_with(endpoint).size(), 3u) << "mpirun and two ranks";
  const auto unit = sequential_answers(s);
  ASSERT_EQ(unit.size(), single.size());
  for (size_t i = 0; i < unit.size(); ++i) EXPECT_EQ(unit[i], single[i]) << i;
  for (size_t i = 0; i < kPrompts.size(); ++i) {
    EXPECT_EQ(unit[i]["usage"]["completion_tokens"], 12) << unit[i].dump();
    EXPECT_FALSE(unit[i]["content"].get<std::string>().empty()) << unit[i].dump();
  }

  // Concurrent streams, spread over both ranks.
  std::vector<std::future<std::string>> streams;
  for (int i = 0; i < 6; ++i)
    streams.push_back(std::async(std::launch::async, [&, i] { return stream_chat(s, "stream " + std::to_string(i), 16); }));
  for (auto& f : streams) {
    const auto body = f.get();
    EXPECT_NE(body.find("data: [DONE]"), std::string::npos) << body;
    EXPECT_NE(body.find("\"finish_reason\":\"length\""), std::string::npos) << body;
  }
  const double steps = s.metric("epserve_steps_total");
  EXPECT_TRUE(steps > 0 || steps == -1);

  // SIGTERM with a stream in flight: it runs to its end, then the unit stops and nothing is left.
  std::filesystem::remove(temp_file("sse", "drain me"));
  auto in_flight = std::async(std::launch::async, [&] { return stream_chat(s, "drain me", 200); });
  EXPECT_TRUE(wait_first_token("drain me"));
  EXPECT_EQ(s.stop(60), 0) << s.log();
  const auto body = in_flight.get();
  EXPECT_NE(body.find("data: [DONE]"), std::string::npos) << body;
  EXPECT_NE(body.find("\"finish_reason\":\"length\""), std::string::npos) << body;
  EXPECT_TRUE(wait_until_gone(endpoint, 10)) << "unit processes left behind";
}

TEST(Unit, RankKilledEndsRequestsWithErrorThenTheUnitRestarts) {
  const auto dir = scratch_dir("unit-kill");
  ServerProcess s(tiny_model(), dir, "--no-kv-disk --kv-blocks 512 --unit-ranks 2");
  const std::string endpoint = unit_endpoint(s);
  ASSERT_FALSE(endpoint.empty()) << s.log();
  // Two long streams (one per rank), then kill -9 one rank while they run.
  std::vector<std::future<std::string>> streams;
  for (int i = 0; i < 2; ++i) {
    std::filesystem::remove(temp_file("sse", "long " + std::to_string(i)));
    streams.push_back(std::async(std::launch::async, [&, i] { return stream_chat(s, "long " + std::to_string(i), 4000, 90); }));
  }
  for (int i = 0; i < 2; ++i) EXPECT_TRUE(wait_first_token("long " + std::to_string(i)));
  const auto ranks = pids_with("^[^ ]*epserve unit .*" + endpoint);
  ASSERT_EQ(ranks.size(), 2u);
  const auto killed = clock_type::now();
  ::kill(ranks[1], SIGKILL);
  for (auto& f : streams) {
    ASSERT_EQ(f.wait_for(std::chrono::seconds(20)), std::future_status::ready) << "a stream hangs";
    const auto body = f.get();
    EXPECT_NE(body.find("unit mixed-0 failed: mpirun"), std::string::npos) << body.substr(body.size() > 2000 ? body.size() - 2000 : 0);
  }
  const double took = std::chrono::duration<double>(clock_type::now() - killed).count();
  EXPECT_LT(took, 15) << "requests ended " << took << " s after the kill";
  std::printf("requests ended %.2f s after the kill\n", took);
  // The router still answers, and the unit is launched again (restart is on by default): /health
  // says 200 once its ranks registered, and requests are served as before.
  const auto deadline = clock_type::now() + std::chrono::seconds(90);
  int health_status = 0;
  while (clock_type::now() < deadline) {
    auto health = s.client().Get("/health");
    ASSERT_TRUE(health);
    health_status = health->status;
    if (health_status == 200) {
      EXPECT_NE(health->body.find("\"restarts\":1"), std::string::npos) << health->body;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(health_status, 200) << s.log();
  int status = 0;
  const auto j = post_json(s, "/v1/chat/completions", chat_body("after", 4), &status);
  EXPECT_EQ(status, 200) << j.dump();
  EXPECT_NE(s.log().find("\"event\":\"unit_restart\""), std::string::npos);
  EXPECT_EQ(s.stop(30), 0) << s.log();
  EXPECT_TRUE(wait_until_gone(endpoint, 10)) << "unit processes left behind";
}

TEST(Unit, UnitThatCannotStartSaysWhy) {
  const auto dir = scratch_dir("unit-bad");
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "bad.json") << "{\"layers\": {\"1\": [0, 1]}}";
  const auto t0 = clock_type::now();
  std::string message;
  try {
    ServerProcess s(tiny_model(), dir, "--no-kv-disk --kv-blocks 64 --unit-ranks 2 --placement " + (dir / "bad.json").string());
  } catch (const std::exception& e) {
    message = e.what();
  }
  EXPECT_NE(message.find("serve exited at start"), std::string::npos) << message;
  EXPECT_NE(message.find("unit mixed-0 did not start"), std::string::npos) << message;
  EXPECT_NE(message.find("has no slot"), std::string::npos) << message;
  EXPECT_LT(std::chrono::duration<double>(clock_type::now() - t0).count(), 60);
  EXPECT_TRUE(wait_until_gone((dir / "bad.json").string() + " --router tcp://[0-9.:]*", 10)) << "unit processes left behind";
}

}  // namespace
}  // namespace epserve::testing
