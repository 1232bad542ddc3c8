// The router: the OpenAI-compatible HTTP front end. It owns HTTP (cpp-httplib), authentication,
// request validation, the chat template and tokenizer, text assembly (detokenization, stop
// sequences, reasoning split), the ledger and /metrics; generation itself is the Worker's.
#pragma once
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "serve/ledger.h"
#include "serve/worker.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace httplib {
class Server;
}

namespace epserve::serve {

struct RouterOptions {
  std::string host = "127.0.0.1";
  int port = 8000;  // 0: any free port
  std::string model_name;
  std::string api_key;  // empty: no authentication
  size_t max_body_bytes = 4 << 20;
  int default_max_tokens = 256;
  double request_timeout_s = 600;
  int http_threads = 160;
  int bos_token_id = 0;
};

class Router {
 public:
  Router(Worker& worker, const tokenizer::Tokenizer& tok, const tokenizer::ChatTemplate* chat, Ledger& ledger,
         RouterOptions options);
  ~Router();
  // Binds the listening socket; returns the port (useful with port 0).
  int bind();
  // Serves until stop(); returns false when listening failed.
  bool serve();
  // New generation requests get 503 from now on; requests in flight go on.
  void begin_drain() { draining_ = true; }
  bool draining() const { return draining_; }
  int in_flight() const { return in_flight_; }
  void stop();

  // Public for the handlers' helpers.
  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
  std::atomic<bool> draining_{false};
  std::atomic<int> in_flight_{0};
};

// Prometheus text exposition of the ledger, the worker and the HTTP counters.
std::string render_metrics(const std::string& model, const LedgerTotals& t, const Ledger& ledger, const WorkerStats& w,
                           const std::vector<UnitStatus>& units, const std::map<int, uint64_t>& http_status_counts,
                           int in_flight, bool draining);

}  // namespace epserve::serve
