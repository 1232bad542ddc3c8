// The single-rank worker: one model, one bounded BF16 KV block pool with its prefix index and disk
// tier, and a scheduler thread doing continuous batching. Each step runs every running decode plus
// prefill chunks up to a token budget (chunked prefill: a long prompt never stalls the decodes).
// Requests wait in a bounded queue and are admitted while the pool has room for their prompt; when
// a step cannot get blocks the prefix cache gives up unused blocks first, then the newest running
// request is preempted (its blocks freed, recomputed later, cached prefixes making that cheap).
// In a disaggregated deployment the same worker runs a prefill rank (hand_off: requests end after
// their first token, handing their KV on) or a decode rank (continuations adopt the KV they bring).
#pragma once
#include <filesystem>
#include <functional>
#include <string>
#include <memory>
#include <thread>

#include "kernels/matmul.h"
#include "model/model.h"
#include "serve/worker.h"
#include "tokenizer/tokenizer.h"

namespace epserve::serve {

struct EngineWorkerOptions {
  kernels::Numerics numerics = kernels::Numerics::kDeepSeek;
  int kv_blocks = 0;           // pool capacity in 64-token blocks
  int step_tokens = 256;       // tokens per model step (decodes + prefill chunks)
  int max_running = 64;
  int max_waiting = 256;
  int max_context = 0;         // 0: the model's max_position_embeddings
  std::vector<bool> allowed;   // token ids that may be sampled (ids the tokenizer knows); empty: all
  bool disk = true;
  std::filesystem::path disk_dir;
  uint64_t disk_capacity_bytes = 10ull << 30;
  uint64_t model_id = 0;
  // Lockstep across the ranks of a unit (expert parallelism): when set, every scheduler iteration
  // calls lockstep(local) with local = (has work ? 1 : 0) | (keeps running ? 2 : 0) and gets the
  // maximum over the ranks (an all-reduce). A rank steps when any rank has work, with an empty
  // forward when it has none (the MoE exchanges are collective); the loop ends when every rank is
  // stopping and none has work. Idle ranks wait `idle_poll` between all-reduces (no hot spin).
  std::function<long(long)> lockstep;
  std::chrono::milliseconds idle_poll{2};
  // Prefill role (disaggregation): a request that is not finished after its first token ends with
  // kHandedOff, the event carrying its prompt's full KV blocks (KvHandOff) for a decode unit.
  bool hand_off = false;
  // Called on the scheduler thread when stats are published (e.g. the expert exchange's counters).
  std::function<void(WorkerStats&)> add_stats;
};

// The options every worker over the checkpoint in `model_dir` shares, whether it runs in `serve`'s
// process or as a rank of a unit: the numerics, the ids sampling may pick (those the tokenizer
// knows) and the model identity that names KV blocks (it includes the cache's element type, which
// the numerics decide). The caller adds the pool, limits and disk tier.
EngineWorkerOptions model_worker_options(const std::filesystem::path& model_dir, kernels::Numerics numerics,
                                         const tokenizer::Tokenizer& tok, int vocab_size);

class EngineWorker final : public Worker {
 public:
  EngineWorker(model::Model& model, EngineWorkerOptions options);
  ~EngineWorker() override;
  SubmitResult submit(GenerateRequest request, std::shared_ptr<EventStream> events) override;
  WorkerLimits limits() const override;
  WorkerStats stats() const override;
  void drain(std::chrono::steady_clock::time_point deadline) override;
  // With lockstep: a step or the all-reduce failed (a peer died). Every request was ended with
  // kError and the scheduler stopped; the message says why. Empty while healthy.
  std::string fatal_error() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace epserve::serve
