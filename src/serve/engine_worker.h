// The single-rank worker: one model, one bounded BF16 KV block pool with its prefix index and disk
// tier, and a scheduler thread doing continuous batching. Each step runs every running decode plus
// prefill chunks up to a token budget (chunked prefill: a long prompt never stalls the decodes).
// Requests wait in a bounded queue and are admitted while the pool has room for their prompt; when
// a step cannot get blocks the prefix cache gives up unused blocks first, then the newest running
// request is preempted (its blocks freed, recomputed later, cached prefixes making that cheap).
#pragma once
#include <filesystem>
#include <memory>
#include <thread>

#include "kernels/matmul.h"
#include "model/model.h"
#include "serve/worker.h"

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
};

class EngineWorker final : public Worker {
 public:
  EngineWorker(model::Model& model, EngineWorkerOptions options);
  ~EngineWorker() override;
  SubmitResult submit(GenerateRequest request, std::shared_ptr<EventStream> events) override;
  WorkerLimits limits() const override;
  WorkerStats stats() const override;
  void drain(std::chrono::steady_clock::time_point deadline) override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace epserve::serve
