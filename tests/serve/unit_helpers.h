// Helpers for the tests that run units behind a router (test_unit.cpp, test_deployment.cpp): chat
// bodies, streams through curl, and finding a unit's processes by the router endpoint in their argv.
#pragma once
#include <gtest/gtest.h>
#include <sys/types.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "serve/server.h"

namespace epserve::testing {

using clock_type = std::chrono::steady_clock;

inline nlohmann::json chat_body(const std::string& text, int max_tokens, bool stream = false) {
  return {{"model", "tiny"},
          {"messages", nlohmann::json::array({{{"role", "user"}, {"content", text}}})},
          {"max_tokens", max_tokens},
          {"temperature", 0},
          {"ignore_eos", true},
          {"stream", stream}};
}

// The router's ZeroMQ endpoint, from the server log; the unit's processes carry it in their argv.
inline std::string unit_endpoint(const ServerProcess& s) {
  std::istringstream in(s.log());
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_object() && j.value("event", "") == "unit_launch") return j["router"];
  }
  return "";
}

// Pids of the processes whose command line holds `text` (mpirun and the ranks), this test excluded.
inline std::vector<int> pids_with(const std::string& text) {
  const auto r = run_command("pgrep -f -- '" + text + "$' || true");
  std::vector<int> out;
  std::istringstream in(r.output);
  for (int pid; in >> pid;)
    if (pid != ::getpid()) out.push_back(pid);
  return out;
}

inline bool wait_until_gone(const std::string& text, double timeout_s) {
  const auto deadline = clock_type::now() + std::chrono::duration<double>(timeout_s);
  while (clock_type::now() < deadline) {
    if (pids_with(text).empty()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return pids_with(text).empty();
}

inline std::filesystem::path temp_file(const std::string& what, const std::string& text) {
  return std::filesystem::path(::testing::TempDir()) /
         (what + "-" + std::to_string(::getpid()) + "-" + std::to_string(std::hash<std::string>{}(text)));
}

// A streamed chat completion through curl (bounded by --max-time): the SSE body, which is also
// written to temp_file("sse", text) as it arrives.
inline std::string stream_chat(const ServerProcess& s, const std::string& text, int max_tokens, int max_time_s = 60) {
  const auto f = temp_file("body", text), out = temp_file("sse", text);
  std::ofstream(f) << chat_body(text, max_tokens, true).dump();
  run_command("curl -s -N --max-time " + std::to_string(max_time_s) + " -H 'Content-Type: application/json' -d @" +
              f.string() + " -o " + out.string() + " " + s.url() + "/v1/chat/completions");
  return read_file(out);
}

// Waits (bounded) until the stream of `text` has delivered its first token.
inline bool wait_first_token(const std::string& text, double timeout_s = 30) {
  const auto deadline = clock_type::now() + std::chrono::duration<double>(timeout_s);
  while (clock_type::now() < deadline) {
    if (read_file(temp_file("sse", text)).find("\"content\"") != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

}  // namespace epserve::testing
