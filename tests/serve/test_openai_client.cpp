// The official `openai` npm client against a real server: chat (plain and streamed, with usage),
// completions, 64 concurrent streams that all complete with correct usage, errors as APIError.
#include <gtest/gtest.h>

#include "serve/server.h"

namespace epserve::testing {
namespace {

using nlohmann::json;

TEST(OpenAiClient, WorksUnchangedIncludingStreamsAndConcurrency) {
  const auto nm = node_modules();
  if (!std::filesystem::exists(nm / "openai")) GTEST_SKIP() << "run scripts/fetch-node-deps.sh (no " << nm << "/openai)";
  const auto model = generated_model("tiny");
  const auto dir = scratch_dir("serve-openai");
  ServerProcess s(model, dir);
  const auto script = source_dir() / "tests" / "serve" / "openai_client.cjs";
  const auto r = run_command("NODE_PATH='" + nm.string() + "' timeout 300 node '" + script.string() + "' " + s.url() + "/v1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json out = json::parse(r.output.substr(r.output.find('{')));

  EXPECT_EQ(out["models"], json::array({"tiny"}));
  const json& chat = out["chat"];
  EXPECT_EQ(chat["finish_reason"], "length");
  EXPECT_EQ(chat["usage"]["completion_tokens"], 12);
  const int prompt = chat["usage"]["prompt_tokens"];
  EXPECT_GT(prompt, 5);
  EXPECT_EQ(chat["usage"]["total_tokens"], prompt + 12);
  const json& st = out["chat_stream"];
  EXPECT_EQ(st["content"], chat["content"]);  // greedy: streamed and plain agree
  EXPECT_EQ(st["finish_reason"], "length");
  EXPECT_EQ(st["usage"]["completion_tokens"], 12);
  EXPECT_EQ(st["usage"]["prompt_tokens"], prompt);
  // The second identical prompt is too short for a whole cached block: no hit, consistently.
  EXPECT_EQ(st["usage"]["prompt_tokens_details"]["cached_tokens"].get<int>() % 64, 0);
  EXPECT_EQ(out["completion"]["usage"]["completion_tokens"], 5);

  ASSERT_EQ(out["concurrent"].size(), 64u);
  for (const auto& c : out["concurrent"]) {
    EXPECT_EQ(c["finish_reason"], "length");
    EXPECT_EQ(c["usage"]["completion_tokens"], 16);
    EXPECT_EQ(c["usage"]["total_tokens"], c["usage"]["prompt_tokens"].get<int>() + 16);
  }
  EXPECT_EQ(out["error"]["status"], 400);
  EXPECT_EQ(out["error"]["param"], "n");
  EXPECT_EQ(out["not_found"]["status"], 404);
  EXPECT_EQ(out["not_found"]["code"], "model_not_found");
  EXPECT_EQ(s.stop(), 0);
}

}  // namespace
}  // namespace epserve::testing
