// A real `epserve serve` process for the server tests: started on a free loopback port (--port 0,
// --port-file), ready once /health answers, stopped with a signal and its exit status collected.
#pragma once
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>

#include "support/paths.h"

namespace epserve::testing {

inline std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// The checkpoint the server tests serve (generated once per build tree), as "tiny".
inline const std::filesystem::path& tiny_model() {
  static const auto m = generated_model("tiny");
  return m;
}

class ServerProcess {
 public:
  // extra: more `serve` flags. The disk tier goes to dir/kv unless extra names another.
  ServerProcess(const std::filesystem::path& model, const std::filesystem::path& dir, const std::string& extra = "") : dir_(dir) {
    std::filesystem::create_directories(dir);
    const auto port_file = dir / "port";
    std::filesystem::remove(port_file);
    log_ = dir / ("server-" + std::to_string(++starts()) + ".log");
    std::string cmd = "exec '" + epserve_binary().string() + "' serve --model '" + model.string() +
                      "' --served-model-name tiny --port 0 --port-file '" + port_file.string() + "' --ledger '" +
                      (dir / "ledger.jsonl").string() + "'";
    if (extra.find("--kv-disk-dir") == std::string::npos && extra.find("--no-kv-disk") == std::string::npos)
      cmd += " --kv-disk-dir '" + (dir / "kv").string() + "'";
    cmd += " " + extra + " > '" + log_.string() + "' 2>&1";
    pid_ = ::fork();
    if (pid_ == 0) {
      ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(90);
    while (std::chrono::steady_clock::now() < deadline) {
      int status;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        throw std::runtime_error("serve exited at start:\n" + log());
      }
      if (std::filesystem::exists(port_file)) {
        port_ = std::stoi(read_file(port_file));
        httplib::Client c("127.0.0.1", port_);
        if (auto r = c.Get("/health"); r && r->status == 200) return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    throw std::runtime_error("serve did not become ready:\n" + log());
  }
  ~ServerProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  std::string log() const { return read_file(log_); }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(120, 0);
    return c;
  }
  void signal(int sig) const { ::kill(pid_, sig); }
  // Waits (bounded) for the process to end; its exit status, or -1 on a crash / timeout.
  int wait(double timeout_s = 60) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    while (std::chrono::steady_clock::now() < deadline) {
      int status;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return -1;
  }
  int stop(double timeout_s = 60) {
    signal(SIGTERM);
    return wait(timeout_s);
  }
  // A Prometheus sample's value (first line with this name and no other labels than model).
  double metric(const std::string& name) const {
    auto r = client().Get("/metrics");
    if (!r) return -1;
    std::istringstream in(r->body);
    std::string line;
    while (std::getline(in, line))
      if (line.rfind(name + "{", 0) == 0) return std::stod(line.substr(line.rfind(' ') + 1));
    return -1;
  }

 private:
  static int& starts() {
    static int n = 0;
    return n;
  }
  std::filesystem::path dir_, log_;
  pid_t pid_ = -1;
  int port_ = 0;
};

inline nlohmann::json post_json(const ServerProcess& s, const std::string& path, const nlohmann::json& body, int* status) {
  auto r = s.client().Post(path, body.dump(), "application/json");
  if (!r) {
    *status = -1;
    return nullptr;
  }
  *status = r->status;
  return nlohmann::json::parse(r->body, nullptr, false);
}

inline std::filesystem::path node_modules() {
  const char* c = std::getenv("EPSERVE_CACHE");
  const char* home = std::getenv("HOME");
  const std::filesystem::path cache = c && *c ? c : std::filesystem::path(home ? home : "/tmp") / ".cache" / "epserve";
  return cache / "node" / "node_modules";
}

}  // namespace epserve::testing
