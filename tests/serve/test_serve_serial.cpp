// End to end against a real `epserve serve` process on the tiny checkpoint (which carries the real
// DeepSeek-V3 tokenizer): curl and an HTTP client, streaming and not; usage against the tokenizer;
// stop sequences across token boundaries; cached tokens on a repeated prefix; every bad request's
// status and body while streams go on; a fuzzer over request bodies; disconnects free KV blocks;
// API key and queue limits; SIGTERM drain; the disk tier across restarts and corrupt files.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <random>

#include "serve/server.h"

namespace epserve::testing {
namespace {

using nlohmann::json;

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// curl: the body, then the status on the last line.
std::pair<int, std::string> curl(const ServerProcess& s, const std::string& args) {
  const auto r = run_command("curl -s -N -w '\\n%{http_code}' " + args);
  const size_t nl = r.output.rfind('\n');
  return {std::stoi(r.output.substr(nl + 1)), r.output.substr(0, nl)};
}

std::pair<int, std::string> curl_post(const ServerProcess& s, const std::string& path, const json& body) {
  return curl(s, "-H 'Content-Type: application/json' -d " + shell_quote(body.dump()) + " " + s.url() + path);
}

// The JSON of each `data:` event of an SSE body; "[DONE]" becomes the string "[DONE]".
std::vector<json> sse_events(const std::string& body) {
  std::vector<json> out;
  size_t at = 0;
  while ((at = body.find("data: ", at)) != std::string::npos) {
    const size_t end = body.find("\n\n", at);
    const std::string data = body.substr(at + 6, end - at - 6);
    out.push_back(data == "[DONE]" ? json("[DONE]") : json::parse(data));
    at = end;
  }
  return out;
}

int count_prompt_tokens(const std::string& user_text, const std::filesystem::path& dir) {
  const auto f = dir / "messages.json";
  std::ofstream(f) << json::array({{{"role", "user"}, {"content", user_text}}}).dump();
  const auto r = run_command(epserve_binary().string() + " tokenize --model " + tiny_model().string() + " --chat " + f.string() +
                             " --add-generation-prompt");
  return int(json::parse(r.output).size());
}

json chat_body(const std::string& text, int max_tokens, bool stream = false) {
  return {{"model", "tiny"},
          {"messages", json::array({{{"role", "user"}, {"content", text}}})},
          {"max_tokens", max_tokens},
          {"ignore_eos", true},
          {"stream", stream}};
}

void expect_error_body(const json& j, const std::string& what) {
  ASSERT_TRUE(j.is_object()) << what;
  ASSERT_TRUE(j.contains("error")) << what << ": " << j.dump();
  const json& e = j["error"];
  EXPECT_TRUE(e["message"].is_string() && !e["message"].get<std::string>().empty()) << what;
  EXPECT_TRUE(e["type"].is_string()) << what;
  EXPECT_TRUE(e.contains("param") && e.contains("code")) << what;
}

TEST(Serve, CurlChatCompletionsStreamingAndMetrics) {
  const auto dir = scratch_dir("serve-curl");
  ServerProcess s(tiny_model(), dir);
  auto [hs, health] = curl(s, s.url() + "/health");
  EXPECT_EQ(hs, 200);
  EXPECT_EQ(json::parse(health)["status"], "ok");
  auto [ms, models] = curl(s, s.url() + "/v1/models");
  EXPECT_EQ(ms, 200);
  EXPECT_EQ(json::parse(models)["data"][0]["id"], "tiny");

  const std::string text = "Hello there, how are you today?";
  json body = chat_body(text, 8);
  body["temperature"] = 0;
  auto [cs, chat] = curl_post(s, "/v1/chat/completions", body);
  ASSERT_EQ(cs, 200) << chat;
  const json c = json::parse(chat);
  EXPECT_EQ(c["object"], "chat.completion");
  EXPECT_EQ(c["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(c["choices"][0]["finish_reason"], "length");
  EXPECT_FALSE(c["choices"][0].contains("finish_details"));  // max_tokens, not a timeout
  const int prompt_tokens = count_prompt_tokens(text, dir);
  EXPECT_EQ(c["usage"]["prompt_tokens"], prompt_tokens);
  EXPECT_EQ(c["usage"]["completion_tokens"], 8);
  EXPECT_EQ(c["usage"]["total_tokens"], prompt_tokens + 8);
  EXPECT_EQ(c["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
  EXPECT_EQ(c["usage"]["prompt_cache_hit_tokens"], 0);
  EXPECT_EQ(c["usage"]["prompt_cache_miss_tokens"], prompt_tokens);

  // The same request streamed gives the same text (greedy), in chunks, with usage and [DONE].
  body["stream"] = true;
  body["stream_options"] = {{"include_usage", true}};
  auto [ss, stream] = curl_post(s, "/v1/chat/completions", body);
  ASSERT_EQ(ss, 200);
  const auto events = sse_events(stream);
  ASSERT_GE(events.size(), 4u);
  EXPECT_EQ(events.back(), "[DONE]");
  std::string streamed;
  for (size_t i = 0; i + 2 < events.size(); ++i) {
    EXPECT_EQ(events[i]["object"], "chat.completion.chunk");
    streamed += events[i]["choices"][0]["delta"].value("content", "");
  }
  EXPECT_EQ(events[events.size() - 3]["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(streamed, c["choices"][0]["message"]["content"]);
  const json usage = events[events.size() - 2]["usage"];
  EXPECT_EQ(usage["completion_tokens"], 8);
  EXPECT_EQ(usage["prompt_tokens"], prompt_tokens);

  // Completions with a seed repeat; logprobs come per token.
  json comp = {{"model", "tiny"}, {"prompt", "Once upon a time"}, {"max_tokens", 6}, {"temperature", 0.8},
               {"seed", 42}, {"ignore_eos", true}, {"logprobs", 2}};
  auto [c1s, c1] = curl_post(s, "/v1/completions", comp);
  auto [c2s, c2] = curl_post(s, "/v1/completions", comp);
  ASSERT_EQ(c1s, 200);
  ASSERT_EQ(c2s, 200);
  const json j1 = json::parse(c1), j2 = json::parse(c2);
  EXPECT_EQ(j1["choices"][0]["text"], j2["choices"][0]["text"]);
  EXPECT_EQ(j1["choices"][0]["logprobs"]["tokens"].size(), 6u);
  EXPECT_EQ(j1["choices"][0]["logprobs"]["top_logprobs"][0].size(), 2u);
  for (const auto& lp : j1["choices"][0]["logprobs"]["token_logprobs"]) EXPECT_LE(lp.get<double>(), 0.0);

  auto [mets, metrics] = curl(s, s.url() + "/metrics");
  EXPECT_EQ(mets, 200);
  EXPECT_NE(metrics.find("# TYPE epserve_completion_tokens_total counter"), std::string::npos);
  EXPECT_EQ(s.metric("epserve_completion_tokens_total"), 8 + 8 + 6 + 6);
  EXPECT_EQ(s.metric("epserve_requests_total"), 4);
  EXPECT_EQ(s.stop(), 0) << s.log();
  // Ledger: one line per request and the totals at shutdown.
  std::ifstream in(dir / "ledger.jsonl");
  std::string line;
  int requests = 0, totals = 0;
  while (std::getline(in, line)) {
    const json l = json::parse(line);
    if (l["type"] == "request") {
      ++requests;
      EXPECT_GT(l["revenue"].get<double>(), 0);
      EXPECT_GT(l["rank_seconds"].get<double>(), 0);
    }
    totals += l["type"] == "totals";
  }
  EXPECT_EQ(requests, 4);
  EXPECT_EQ(totals, 1);
}

TEST(Serve, StopSequencesAcrossTokenBoundaries) {
  ServerProcess s(tiny_model(), scratch_dir("serve-stop"));
  json body = {{"model", "tiny"}, {"prompt", "The quick brown fox"}, {"max_tokens", 24},
               {"temperature", 0}, {"ignore_eos", true}, {"logprobs", 0}};
  int status;
  const json full = post_json(s, "/v1/completions", body, &status);
  ASSERT_EQ(status, 200);
  const std::string text = full["choices"][0]["text"];
  const auto& toks = full["choices"][0]["logprobs"]["tokens"];
  // A stop sequence made of two whole neighbouring tokens' text: it spans a token boundary.
  std::string stop;
  for (size_t i = 4; i + 1 < toks.size() && stop.empty(); ++i) {
    const std::string a = toks[i], b = toks[i + 1];
    if (a.empty() || b.empty() || (a + b).find("\xEF\xBF\xBD") != std::string::npos) continue;
    if (text.find(a + b) != std::string::npos) stop = a + b;
  }
  ASSERT_FALSE(stop.empty()) << text;
  const std::string expected = text.substr(0, text.find(stop));
  body["stop"] = json::array({"\x01never", stop});
  body.erase("logprobs");
  const json cut = post_json(s, "/v1/completions", body, &status);
  ASSERT_EQ(status, 200);
  EXPECT_EQ(cut["choices"][0]["text"], expected);
  EXPECT_EQ(cut["choices"][0]["finish_reason"], "stop");
  EXPECT_LT(cut["usage"]["completion_tokens"].get<int>(), 24);
  // Streamed: the held-back text never leaks the stop sequence.
  body["stream"] = true;
  auto r = s.client().Post("/v1/completions", body.dump(), "application/json");
  ASSERT_TRUE(r);
  std::string streamed;
  const auto events = sse_events(r->body);
  for (const auto& e : events)
    if (e.is_object() && !e["choices"].empty()) streamed += e["choices"][0]["text"].get<std::string>();
  EXPECT_EQ(streamed, expected);
  EXPECT_EQ(events[events.size() - 2]["choices"][0]["finish_reason"], "stop");
}

TEST(Serve, RepeatedLongPrefixIsCachedAndFaster) {
  ServerProcess s(tiny_model(), scratch_dir("serve-prefix"), "--step-tokens 128 --no-kv-disk");
  std::string prompt;
  for (int i = 0; i < 120; ++i) prompt += "Sentence number " + std::to_string(i) + " talks about caching. ";
  const json body = {{"model", "tiny"}, {"prompt", prompt}, {"max_tokens", 1}, {"temperature", 0}};
  int status;
  const auto t0 = std::chrono::steady_clock::now();
  const json first = post_json(s, "/v1/completions", body, &status);
  const double cold = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_EQ(status, 200);
  const int n = first["usage"]["prompt_tokens"];
  ASSERT_GT(n, 900);
  EXPECT_EQ(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
  const auto t1 = std::chrono::steady_clock::now();
  const json second = post_json(s, "/v1/completions", body, &status);
  const double warm = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  ASSERT_EQ(status, 200);
  const int hit = (n - 1) / 64 * 64;  // whole blocks, the last token always computed
  EXPECT_EQ(second["usage"]["prompt_tokens_details"]["cached_tokens"], hit);
  EXPECT_EQ(second["usage"]["prompt_cache_hit_tokens"], hit);
  EXPECT_EQ(second["usage"]["prompt_cache_miss_tokens"], n - hit);
  EXPECT_EQ(second["choices"][0]["text"], first["choices"][0]["text"]);
  EXPECT_LT(warm, cold) << "cold " << cold << " s, cached " << warm << " s";
  // The server's own time to first token (the ledger's figure, in /metrics) shows the same.
  EXPECT_EQ(s.metric("epserve_prompt_cache_hit_tokens_total"), hit);
  // A prompt that shares only the start hits only the shared whole blocks.
  json other = body;
  other["prompt"] = prompt.substr(0, prompt.size() / 2) + "A different ending that changes everything after it.";
  const json third = post_json(s, "/v1/completions", other, &status);
  ASSERT_EQ(status, 200);
  const int cached3 = third["usage"]["prompt_tokens_details"]["cached_tokens"];
  EXPECT_GT(cached3, 0);
  EXPECT_LT(cached3, hit);
  EXPECT_EQ(cached3 % 64, 0);
}

TEST(Serve, BadRequestsGetOpenAIErrorsWhileStreamsContinue) {
  ServerProcess s(tiny_model(), scratch_dir("serve-errors"), "--max-context 512 --max-body-bytes 65536");
  // Streams in flight the whole time.
  std::vector<std::thread> streams;
  std::vector<std::string> bodies(3);
  for (int i = 0; i < 3; ++i)
    streams.emplace_back([&, i] {
      auto r = s.client().Post("/v1/chat/completions", chat_body("stream " + std::to_string(i), 40, true).dump(),
                               "application/json");
      if (r) bodies[i] = r->body;
    });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  struct Case {
    std::string path, body;
    int status;
    std::string param, code;
  };
  const json ok = chat_body("hi", 2);
  auto with = [&](const char* key, json v) {
    json b = ok;
    b[key] = std::move(v);
    return b.dump();
  };
  std::string long_prompt;
  for (int i = 0; i < 300; ++i) long_prompt += " word" + std::to_string(i);
  const std::vector<Case> cases = {
      {"/v1/chat/completions", "{bad json", 400, "", "invalid_json"},
      {"/v1/chat/completions", "[1, 2]", 400, "", "invalid_json"},
      {"/v1/chat/completions", R"({"model": "tiny"})", 400, "messages", "missing_required_parameter"},
      {"/v1/chat/completions", with("messages", json::array()), 400, "messages", "invalid_value"},
      {"/v1/chat/completions", with("messages", "hello"), 400, "messages", "invalid_type"},
      {"/v1/chat/completions", with("messages", json::array({{{"role", "wizard"}, {"content", "x"}}})), 400, "messages[0].role", "invalid_value"},
      {"/v1/chat/completions", with("temperature", "hot"), 400, "temperature", "invalid_type"},
      {"/v1/chat/completions", with("temperature", 3), 400, "temperature", "invalid_value"},
      {"/v1/chat/completions", with("top_p", 0), 400, "top_p", "invalid_value"},
      {"/v1/chat/completions", with("max_tokens", -1), 400, "max_tokens", "invalid_value"},
      {"/v1/chat/completions", with("max_tokens", 1.5), 400, "max_tokens", "invalid_type"},
      {"/v1/chat/completions", with("max_tokens", 100000), 400, "max_tokens", "context_length_exceeded"},
      {"/v1/chat/completions", with("n", 2), 400, "n", "unsupported_value"},
      {"/v1/chat/completions", with("stop", 5), 400, "stop", "invalid_type"},
      {"/v1/chat/completions", with("top_logprobs", 3), 400, "top_logprobs", "invalid_value"},
      {"/v1/chat/completions", with("stream_options", json{{"include_usage", true}}), 400, "stream_options", "invalid_value"},
      {"/v1/chat/completions", with("model", "gpt-4"), 404, "model", "model_not_found"},
      {"/v1/completions", json{{"model", "tiny"}, {"prompt", long_prompt}}.dump(), 400, "prompt", "context_length_exceeded"},
      {"/v1/completions", json{{"model", "tiny"}, {"prompt", json::array({1, -5})}}.dump(), 400, "prompt", "invalid_type"},
      {"/v1/completions", json{{"model", "tiny"}, {"prompt", json::array({1, 999999})}}.dump(), 400, "prompt", ""},
      {"/v1/completions", json{{"model", "tiny"}, {"prompt", ""}}.dump(), 400, "prompt", "invalid_value"},
      {"/v1/nothing", ok.dump(), 404, "", "not_found"},
      {"/v1/chat/completions", std::string(70000, ' '), 413, "", "request_too_large"},
  };
  for (const auto& k : cases) {
    auto r = s.client().Post(k.path, k.body, "application/json");
    ASSERT_TRUE(r) << k.body.substr(0, 80);
    EXPECT_EQ(r->status, k.status) << k.body.substr(0, 200) << " -> " << r->body;
    const json j = json::parse(r->body, nullptr, false);
    expect_error_body(j, k.body.substr(0, 80));
    if (!k.param.empty()) {
      EXPECT_EQ(j["error"]["param"], k.param) << r->body;
    }
    if (!k.code.empty()) {
      EXPECT_EQ(j["error"]["code"], k.code) << r->body;
    }
  }
  auto g = s.client().Get("/v1/chat/completions");
  ASSERT_TRUE(g);
  EXPECT_EQ(g->status, 405);
  EXPECT_EQ(g->get_header_value("Allow"), "POST");
  expect_error_body(json::parse(g->body), "GET chat");
  auto p = s.client().Post("/health", "", "application/json");
  ASSERT_TRUE(p);
  EXPECT_EQ(p->status, 405);
  for (auto& t : streams) t.join();
  for (const auto& b : bodies) {
    const auto ev = sse_events(b);
    ASSERT_GE(ev.size(), 2u) << b;
    EXPECT_EQ(ev.back(), "[DONE]");
    EXPECT_EQ(ev[ev.size() - 2]["choices"][0]["finish_reason"], "length");
  }
  // The ledger records a stream once its last byte is written: allow it a moment.
  for (int i = 0; i < 250 && s.metric("epserve_completion_tokens_total") != 3 * 40; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(s.metric("epserve_completion_tokens_total"), 3 * 40);
}

// Blocks held by nothing but the prefix cache once the server is idle: no sequence leaked any.
void expect_no_leaked_blocks(const ServerProcess& s) {
  for (int i = 0; i < 200 && (s.metric("epserve_running_requests") != 0 || s.metric("epserve_waiting_requests") != 0); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(s.metric("epserve_running_requests"), 0);
  EXPECT_EQ(s.metric("epserve_waiting_requests"), 0);
  EXPECT_EQ(s.metric("epserve_kv_blocks_used"), s.metric("epserve_prefix_cache_blocks"));
}

TEST(Serve, FuzzedBodiesNeverCrashHangOrLeak) {
  ServerProcess s(tiny_model(), scratch_dir("serve-fuzz"), "--max-context 256 --default-max-tokens 3 --max-body-bytes 65536");
  std::mt19937_64 rng(12345);
  const std::vector<json> values = {nullptr, true, false, 0, -1, 1, 3, 2.5, -1e308, 1e308, 1e9, "", "x", "tiny",
                                    json::array(), json::array({1, 2}), json::array({"a"}), json::object(),
                                    json{{"role", "user"}}, std::string(3000, 'a'), "\xff\xfe", 18446744073709551615ull};
  const std::vector<std::string> keys = {"model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature",
                                         "top_p", "seed", "stop", "n", "stream", "stream_options", "logprobs",
                                         "top_logprobs", "user", "ignore_eos"};
  std::map<int, int> statuses;
  for (int i = 0; i < 250; ++i) {
    const bool chat = rng() % 2;
    json b = chat ? json{{"model", "tiny"}, {"messages", json::array({{{"role", "user"}, {"content", "fuzz"}}})}, {"max_tokens", 2}}
                  : json{{"model", "tiny"}, {"prompt", "fuzz"}, {"max_tokens", 2}};
    const int edits = 1 + int(rng() % 3);
    for (int e = 0; e < edits; ++e) {
      const auto& key = keys[rng() % keys.size()];
      switch (rng() % 4) {
        case 0: b.erase(key); break;
        case 3:
          if (chat) b["messages"] = json::array({{{"role", values[rng() % values.size()]}, {"content", values[rng() % values.size()]}}});
          break;
        default: b[key] = values[rng() % values.size()];
      }
    }
    if (b.contains("max_tokens") && b["max_tokens"].is_number_integer() && b["max_tokens"].get<int64_t>() > 3) b["max_tokens"] = 3;
    if (b.contains("max_completion_tokens")) b.erase("max_completion_tokens");
    std::string text = b.dump(-1, ' ', false, json::error_handler_t::replace);
    switch (rng() % 5) {  // byte-level damage
      case 0: text = text.substr(0, rng() % (text.size() + 1)); break;
      case 1: text[rng() % text.size()] = char(rng() % 256); break;
      default: break;
    }
    auto r = s.client().Post(chat ? "/v1/chat/completions" : "/v1/completions", text, "application/json");
    ASSERT_TRUE(r) << "no answer to " << text;
    ++statuses[r->status];
    EXPECT_TRUE(r->status == 200 || r->status == 400 || r->status == 404) << r->status << " for " << text << " -> " << r->body;
    if (r->status != 200) expect_error_body(json::parse(r->body, nullptr, false), text);
  }
  EXPECT_GT(statuses[200], 10);
  EXPECT_GT(statuses[400], 50);
  auto h = s.client().Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  expect_no_leaked_blocks(s);
  EXPECT_EQ(s.stop(), 0);
}

// A streaming request on a raw socket (so that a test can hang up mid-stream); returns the socket.
int open_stream(const ServerProcess& s, const json& body, const std::string& extra_headers = "") {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(s.port()));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return -1;
  const std::string b = body.dump();
  const std::string req = "POST /v1/" + std::string(body.contains("messages") ? "chat/completions" : "completions") +
                          " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + extra_headers +
                          "Content-Length: " + std::to_string(b.size()) + "\r\n\r\n" + b;
  if (::send(fd, req.data(), req.size(), 0) != ssize_t(req.size())) return -1;
  return fd;
}

TEST(Serve, DisconnectedClientCancelsAndFreesBlocks) {
  const auto dir = scratch_dir("serve-disconnect");
  ServerProcess s(tiny_model(), dir, "--no-kv-disk");
  std::string prompt;
  for (int i = 0; i < 50; ++i) prompt += "long prompt to hold blocks ";
  const int fd = open_stream(s, {{"model", "tiny"}, {"prompt", prompt}, {"max_tokens", 2000}, {"ignore_eos", true}, {"stream", true}});
  ASSERT_GE(fd, 0);
  char buf[4096];
  size_t got = 0;
  while (got < 2000) {  // a few chunks of tokens
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    ASSERT_GT(n, 0);
    got += size_t(n);
  }
  EXPECT_EQ(s.metric("epserve_running_requests"), 1);
  EXPECT_GT(s.metric("epserve_kv_blocks_used"), s.metric("epserve_prefix_cache_blocks"));
  ::close(fd);
  expect_no_leaked_blocks(s);
  EXPECT_LT(s.metric("epserve_completion_tokens_total"), 2000);
  EXPECT_EQ(s.stop(), 0);
  EXPECT_NE(read_file(dir / "ledger.jsonl").find("\"status\":499"), std::string::npos);
}

// A non-streaming client that hangs up: the handler watches its connection while it waits for the
// worker, cancels the request (ledger status 499, finish "cancelled") and the KV blocks come back.
TEST(Serve, NonStreamingDisconnectCancelsAndFreesBlocks) {
  const auto dir = scratch_dir("serve-disconnect-plain");
  ServerProcess s(tiny_model(), dir, "--no-kv-disk");
  std::string prompt;
  for (int i = 0; i < 50; ++i) prompt += "long prompt to hold blocks ";
  const json body = {{"model", "tiny"}, {"prompt", prompt}, {"max_tokens", 20000}, {"ignore_eos", true}};
  // On a raw socket: the request runs and holds blocks, then the client closes.
  const int fd = open_stream(s, body);
  ASSERT_GE(fd, 0);
  for (int i = 0; i < 1500 && s.metric("epserve_running_requests") != 1; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_EQ(s.metric("epserve_running_requests"), 1) << s.log();
  for (int i = 0; i < 500 && !(s.metric("epserve_kv_blocks_used") > s.metric("epserve_prefix_cache_blocks")); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_GT(s.metric("epserve_kv_blocks_used"), s.metric("epserve_prefix_cache_blocks"));
  ::close(fd);
  expect_no_leaked_blocks(s);
  // With curl giving up after a second.
  const auto r = run_command("curl -s --max-time 1 -H 'Content-Type: application/json' -d " +
                             shell_quote(json{{"model", "tiny"}, {"messages", json::array({{{"role", "user"}, {"content", prompt}}})},
                                              {"max_tokens", 20000}, {"ignore_eos", true}}.dump()) +
                             " " + s.url() + "/v1/chat/completions");
  EXPECT_EQ(r.exit_code, 28) << r.output;  // curl's "operation timed out"
  expect_no_leaked_blocks(s);
  EXPECT_LT(s.metric("epserve_completion_tokens_total"), 10000);  // far from the 2 × 20000 asked for
  // Both were noticed, and the server goes on serving.
  for (int i = 0; i < 250 && s.metric("epserve_requests_total") < 2; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(s.metric("epserve_requests_total"), 2);
  int status;
  const json ok = post_json(s, "/v1/completions", {{"model", "tiny"}, {"prompt", "still here"}, {"max_tokens", 2}}, &status);
  EXPECT_EQ(status, 200) << ok.dump();
  EXPECT_EQ(s.stop(), 0);
  const std::string log = s.log();
  size_t disconnects = 0;
  for (size_t at = 0; (at = log.find("\"client_disconnected\"", at)) != std::string::npos; ++at) ++disconnects;
  EXPECT_EQ(disconnects, 2u) << log;
  int cancelled = 0;
  std::ifstream in(dir / "ledger.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    const json l = json::parse(line);
    if (l["type"] != "request" || l["status"] != 499) continue;
    ++cancelled;
    EXPECT_EQ(l["finish_reason"], "cancelled");
    EXPECT_LT(l["completion_tokens"].get<int>(), 20000);
  }
  EXPECT_EQ(cancelled, 2);
}

// --request-timeout: the request ends with what it has, finish_reason "length", and
// finish_details {type: "timeout"} on the choice (plain and streamed); the ledger says "timeout".
TEST(Serve, RequestTimeoutEndsWithLengthAndFinishDetails) {
  const auto dir = scratch_dir("serve-timeout");
  ServerProcess s(tiny_model(), dir, "--no-kv-disk --request-timeout 0.3");
  const json body = {{"model", "tiny"}, {"prompt", "Tell me a long story"}, {"max_tokens", 20000}, {"ignore_eos", true}};
  int status;
  const json plain = post_json(s, "/v1/completions", body, &status);
  ASSERT_EQ(status, 200) << plain.dump();
  const json& choice = plain["choices"][0];
  EXPECT_EQ(choice["finish_reason"], "length");
  ASSERT_TRUE(choice.contains("finish_details")) << plain.dump();
  EXPECT_EQ(choice["finish_details"]["type"], "timeout");
  EXPECT_NE(choice["finish_details"]["message"].get<std::string>().find("0.3 s"), std::string::npos);
  EXPECT_LT(plain["usage"]["completion_tokens"].get<int>(), 20000);
  EXPECT_EQ(plain["usage"]["completion_tokens"].get<int>() + plain["usage"]["prompt_tokens"].get<int>(),
            plain["usage"]["total_tokens"].get<int>());

  json chat = chat_body("Tell me a long story", 20000, true);
  chat["stream_options"] = {{"include_usage", true}};
  auto r = s.client().Post("/v1/chat/completions", chat.dump(), "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  const auto ev = sse_events(r->body);
  ASSERT_GE(ev.size(), 3u) << r->body;
  EXPECT_EQ(ev.back(), "[DONE]");
  const json& last = ev[ev.size() - 3]["choices"][0];
  EXPECT_EQ(last["finish_reason"], "length");
  EXPECT_EQ(last["finish_details"]["type"], "timeout");
  EXPECT_LT(ev[ev.size() - 2]["usage"]["completion_tokens"].get<int>(), 20000);
  expect_no_leaked_blocks(s);
  EXPECT_EQ(s.stop(), 0);
  int timeouts = 0;
  std::ifstream in(dir / "ledger.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    const json l = json::parse(line);
    if (l["type"] == "request") {
      EXPECT_EQ(l["finish_reason"], "timeout");
      EXPECT_EQ(l["status"], 200);
      ++timeouts;
    }
  }
  EXPECT_EQ(timeouts, 2);
}

TEST(Serve, ApiKeyAndQueueLimit) {
  ServerProcess s(tiny_model(), scratch_dir("serve-auth"), "--api-key s3cret --max-running 1 --max-queue 1 --no-kv-disk");
  const std::string body = chat_body("hi", 2).dump();
  auto c = s.client();
  auto none = c.Post("/v1/chat/completions", body, "application/json");
  ASSERT_TRUE(none);
  EXPECT_EQ(none->status, 401);
  EXPECT_EQ(json::parse(none->body)["error"]["code"], "invalid_api_key");
  auto wrong = c.Post("/v1/chat/completions", httplib::Headers{{"Authorization", "Bearer s3cre"}}, body, "application/json");
  ASSERT_TRUE(wrong);
  EXPECT_EQ(wrong->status, 401);
  const httplib::Headers key{{"Authorization", "Bearer s3cret"}};
  auto right = c.Post("/v1/chat/completions", key, body, "application/json");
  ASSERT_TRUE(right);
  EXPECT_EQ(right->status, 200);
  EXPECT_EQ(c.Get("/health")->status, 200);  // health needs no key
  // One running, one waiting: the third is turned away with 429. Both held requests are streams on
  // raw sockets, long enough never to end here even on a fast machine (a 5,000-token hold once
  // finished in 9 s in CI), and closed at the end, which cancels them.
  const json hold = chat_body("hold", 150000, true);
  const int running = open_stream(s, hold, "Authorization: Bearer s3cret\r\n");
  ASSERT_GE(running, 0);
  char buf[512];
  ASSERT_GT(::recv(running, buf, sizeof buf, 0), 0);
  for (int i = 0; i < 1500 && s.metric("epserve_running_requests") != 1; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_EQ(s.metric("epserve_running_requests"), 1) << s.log();
  const int waiting = open_stream(s, chat_body("wait", 150000, true), "Authorization: Bearer s3cret\r\n");
  ASSERT_GE(waiting, 0);
  for (int i = 0; i < 1500 && s.metric("epserve_waiting_requests") != 1; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  if (s.metric("epserve_waiting_requests") != 1) {  // say what the queued request got instead
    const ssize_t n = ::recv(waiting, buf, sizeof buf - 1, MSG_DONTWAIT);
    ADD_FAILURE() << "the second request never waited; its socket holds: " << (n > 0 ? std::string(buf, size_t(n)) : "nothing")
                  << "\nrunning=" << s.metric("epserve_running_requests") << "\n" << s.log();
    ::close(running);
    ::close(waiting);
    return;
  }
  auto busy = c.Post("/v1/chat/completions", key, body, "application/json");
  ASSERT_TRUE(busy);
  EXPECT_EQ(busy->status, 429);
  EXPECT_EQ(json::parse(busy->body)["error"]["code"], "queue_full");
  ::close(running);
  ::close(waiting);
  expect_no_leaked_blocks(s);
}

TEST(Serve, SigtermDrainsInFlightAndExitsZero) {
  const auto dir = scratch_dir("serve-drain");
  ServerProcess s(tiny_model(), dir);
  std::string streamed;
  std::thread t([&] {
    auto r = s.client().Post("/v1/chat/completions", chat_body("drain me", 60, true).dump(), "application/json");
    if (r) streamed = r->body;
  });
  for (int i = 0; i < 100 && s.metric("epserve_running_requests") != 1; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  s.signal(SIGTERM);
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  auto late = s.client().Post("/v1/chat/completions", chat_body("too late", 2).dump(), "application/json");
  if (late) {  // the listener may already be gone; if it answers, it says 503
    EXPECT_EQ(late->status, 503);
    EXPECT_EQ(json::parse(late->body)["error"]["code"], "shutting_down");
  }
  t.join();
  EXPECT_EQ(s.wait(), 0) << s.log();
  const auto ev = sse_events(streamed);
  ASSERT_GE(ev.size(), 3u);
  EXPECT_EQ(ev.back(), "[DONE]");
  EXPECT_EQ(ev[ev.size() - 2]["choices"][0]["finish_reason"], "length");
  EXPECT_NE(read_file(dir / "ledger.jsonl").find("\"why\":\"shutdown\""), std::string::npos);
}

TEST(Serve, DiskTierHitsAfterRestartAndCorruptFilesAreMisses) {
  const auto dir = scratch_dir("serve-disk");
  std::string prompt;
  for (int i = 0; i < 40; ++i) prompt += "Disk cached sentence " + std::to_string(i) + ". ";
  const json body = {{"model", "tiny"}, {"prompt", prompt}, {"max_tokens", 8}, {"temperature", 0}, {"ignore_eos", true}};
  int status, n;
  std::string reference;
  {
    ServerProcess a(tiny_model(), dir);
    const json r = post_json(a, "/v1/completions", body, &status);
    ASSERT_EQ(status, 200);
    n = r["usage"]["prompt_tokens"];
    reference = r["choices"][0]["text"];
    EXPECT_EQ(r["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    ASSERT_EQ(a.stop(), 0);  // flushes the write-through queue
  }
  const int hit = (n - 1) / 64 * 64;
  ASSERT_GE(hit, 128);
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(dir / "kv")) files.push_back(e.path());
  EXPECT_GE(int(files.size()), hit / 64);
  {
    ServerProcess b(tiny_model(), dir);  // fresh RAM: only the disk has the prefix
    const json r = post_json(b, "/v1/completions", body, &status);
    ASSERT_EQ(status, 200);
    EXPECT_EQ(r["usage"]["prompt_tokens_details"]["cached_tokens"], hit);
    EXPECT_EQ(r["choices"][0]["text"], reference);
    EXPECT_EQ(b.metric("epserve_cache_disk_hit_tokens_total"), hit);
    ASSERT_EQ(b.stop(), 0);
  }
  // Damage every file: flip a byte in half of them, truncate the others.
  for (size_t i = 0; i < files.size(); ++i) {
    if (i % 2) {
      std::filesystem::resize_file(files[i], std::filesystem::file_size(files[i]) / 2);
    } else {
      std::fstream f(files[i], std::ios::in | std::ios::out | std::ios::binary);
      f.seekp(long(std::filesystem::file_size(files[i]) - 100));
      f.put('\x42');
      f.seekp(long(std::filesystem::file_size(files[i]) - 99));
      f.put('\x24');
    }
  }
  ServerProcess c(tiny_model(), dir);
  const json r = post_json(c, "/v1/completions", body, &status);
  ASSERT_EQ(status, 200);
  EXPECT_EQ(r["choices"][0]["text"], reference);  // recomputed, never a wrong answer
  EXPECT_EQ(r["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
  EXPECT_GE(c.metric("epserve_kv_disk_corrupt_total"), 1);
  EXPECT_NE(c.log().find("kv_disk_bad_file"), std::string::npos);
  ASSERT_EQ(c.stop(), 0);
}

}  // namespace
}  // namespace epserve::testing
