// The seam between the router (HTTP, tokens, text, ledger) and the ranks that run the model. The
// router submits token-level requests; the worker answers each with a stream of events (tokens,
// then one finish). A single-rank worker (engine_worker.h) runs the scheduler, model and KV cache
// in this process; a multi-rank unit can stand behind the same interface.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "model/sampler.h"

namespace epserve::serve {

struct GenerateRequest {
  uint64_t id = 0;
  std::vector<int> prompt;
  int max_tokens = 16;
  model::SamplingParams sampling;
  uint64_t seed = 0;
  bool stop_at_eos = true;
  int top_logprobs = -1;  // -1: no logprobs; 0..20: the chosen token's logprob and this many alternatives
  double timeout_s = 600;
  // Set on a continuation: a decode unit taking over from a prefill unit, which sent the prompt's
  // KV blocks, the tokens it generated (already streamed) and its sampler's state. The blocks go into
  // the KV pool and prefix index at admission; what they do not cover is recomputed.
  std::shared_ptr<const struct KvHandOff> continues;
};

// kHandedOff: a prefill unit's request is done there and goes on in a decode unit (never seen by
// the HTTP side; the deployment worker takes it).
enum class FinishReason { kNone, kStop, kLength, kCancelled, kTimeout, kError, kHandedOff };
const char* to_string(FinishReason r);

// What one request cost the worker, sent with its last event.
struct RequestStats {
  int prompt_tokens = 0, cached_tokens = 0, disk_cached_tokens = 0, completion_tokens = 0;
  double queue_s = 0;         // submitted → admitted
  double ttft_s = 0;          // submitted → first token
  double decode_s = 0;        // first token → last token
  double rank_seconds = 0;    // its share of each step's time (by tokens in the step)
  double kv_tokens_sum = 0;   // sum over output tokens of the KV length it attended over
  int preemptions = 0;
};

// Calls f(field...) for every field of the given RequestStats, in one fixed order (the wire form).
template <class F, class... S>
void for_each_request_stat(F&& f, S&... s) {
  f(s.prompt_tokens...), f(s.cached_tokens...), f(s.disk_cached_tokens...), f(s.completion_tokens...);
  f(s.queue_s...), f(s.ttft_s...), f(s.decode_s...), f(s.rank_seconds...), f(s.kv_tokens_sum...);
  f(s.preemptions...);
}

// What a prefill rank hands to a decode rank: the prompt's full KV blocks (the disk tier's payload
// layout: every layer's rows of the block, layer after layer) named by their chained hashes, the
// token(s) it generated and its sampler's state.
struct KvHandOff {
  std::vector<uint64_t> hashes;
  std::vector<std::vector<uint8_t>> blocks;
  std::vector<int> generated;
  std::string sampler_state;
};

struct TokenEvent {
  enum class Kind { kToken, kFinished } kind = Kind::kToken;
  int token = -1;
  bool is_eos = false;
  float logprob = 0;
  std::vector<std::pair<int, float>> top;  // top_logprobs alternatives
  FinishReason finish = FinishReason::kNone;
  std::string error;  // with kError
  RequestStats stats; // with kFinished
  std::shared_ptr<const KvHandOff> handoff;  // with kHandedOff
};

// One request's events, from the worker's thread to the router's. The router sets `cancelled`
// when its client goes away; the worker then ends the request and frees its KV blocks.
class EventStream {
 public:
  void push(TokenEvent e) {
    {
      std::lock_guard lk(mu_);
      events_.push_back(std::move(e));
    }
    cv_.notify_all();
  }
  // Waits up to `timeout` for events; returns whatever is there (maybe nothing).
  std::vector<TokenEvent> pop_all(std::chrono::milliseconds timeout) {
    std::unique_lock lk(mu_);
    cv_.wait_for(lk, timeout, [&] { return !events_.empty(); });
    std::vector<TokenEvent> out(std::make_move_iterator(events_.begin()), std::make_move_iterator(events_.end()));
    events_.clear();
    return out;
  }
  void cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<TokenEvent> events_;
  std::atomic<bool> cancelled_{false};
};

struct WorkerLimits {
  int max_context = 0;        // prompt + output tokens per request
  int vocab_size = 0;
  int eos_token_id = 1;
};

struct WorkerStats {
  int running = 0, waiting = 0;
  int kv_blocks_used = 0, kv_blocks_total = 0, prefix_blocks = 0;
  uint64_t steps = 0, step_tokens = 0, preemptions = 0, ram_hit_tokens = 0, disk_hit_tokens = 0;
  double busy_s = 0;
  uint64_t disk_hits = 0, disk_misses = 0, disk_corrupt = 0, disk_writes = 0, disk_write_errors = 0, disk_files = 0,
           disk_bytes = 0;
  bool disk_enabled = false;
  // Expert parallelism (units of several ranks): bytes this rank sent in MoE dispatch / combine and
  // seconds spent in them, over `moe_layers` layer passes.
  uint64_t dispatch_bytes = 0, combine_bytes = 0, moe_layers = 0;
  double dispatch_s = 0, combine_s = 0;
  uint64_t kv_handoff_blocks_sent = 0, kv_handoff_blocks_received = 0, kv_handoff_bytes = 0;
};

// Calls f(field...) for every field of the given WorkerStats, in one fixed order: the unit
// protocol's wire form and a unit's sums over its ranks both go through it, so a new field is
// added here once.
template <class F, class... S>
void for_each_worker_stat(F&& f, S&... w) {
  f(w.running...), f(w.waiting...), f(w.kv_blocks_used...), f(w.kv_blocks_total...), f(w.prefix_blocks...);
  f(w.steps...), f(w.step_tokens...), f(w.preemptions...), f(w.ram_hit_tokens...), f(w.disk_hit_tokens...);
  f(w.busy_s...), f(w.disk_hits...), f(w.disk_misses...), f(w.disk_corrupt...), f(w.disk_writes...);
  f(w.disk_write_errors...), f(w.disk_files...), f(w.disk_bytes...), f(w.disk_enabled...);
  f(w.dispatch_bytes...), f(w.combine_bytes...), f(w.moe_layers...), f(w.dispatch_s...), f(w.combine_s...);
  f(w.kv_handoff_blocks_sent...), f(w.kv_handoff_blocks_received...), f(w.kv_handoff_bytes...);
}

// One unit of a deployment as /health and /metrics show it.
struct UnitStatus {
  std::string name, role;
  std::string state;     // "up", "starting" (launched, ranks not all registered) or "failed"
  int ranks = 0, in_flight = 0;
  uint64_t retried = 0;  // requests moved to another unit when this one failed
  uint64_t restarts = 0;
  std::string failed;    // why it last failed (kept while it restarts)
};

enum class SubmitResult { kAccepted, kQueueFull, kShuttingDown };

class Worker {
 public:
  virtual ~Worker() = default;
  virtual SubmitResult submit(GenerateRequest request, std::shared_ptr<EventStream> events) = 0;
  virtual WorkerLimits limits() const = 0;
  virtual WorkerStats stats() const = 0;
  // Stops admitting; requests in flight run on. drain() returns once none are left or the deadline
  // passed (then they are ended with kCancelled); afterwards the cache tier is flushed.
  virtual void drain(std::chrono::steady_clock::time_point deadline) = 0;
  // Why the worker can serve no more (a unit whose rank died); empty while it can. /health says it.
  virtual std::string failure() const { return {}; }
  // The units behind the worker (none for a worker in this process).
  virtual std::vector<UnitStatus> units() const { return {}; }
};

}  // namespace epserve::serve
