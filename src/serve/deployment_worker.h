// The units of a deployment (deployment.h) behind the serve::Worker seam, on the router's side. It
// binds one ZeroMQ ROUTER socket, launches each unit as `mpirun -n R epserve unit ...` with that
// address, and returns once every rank of every unit has registered. One I/O thread owns the socket.
//
// Requests: with mixed units, a request goes to one rank of one unit: the rank its prompt's longest
// cached prefix was last sent to, when that rank has room (prefix-cache affinity); otherwise units,
// then their ranks, round robin (data-parallel attention). Disaggregated, it goes to a prefill rank together with the
// address of the decode rank chosen for it; the prefill rank computes the prompt and the first
// token, sends the KV straight to that decode rank (not through here), and reports kHandedOff; the
// decode rank's events then stream back through here. Events a decode rank sends before the
// prefill rank's report are held, so the client sees tokens in order.
//
// Faults: a unit whose mpirun exits or whose rank is silent for `heartbeat_timeout_s` fails: its
// process group is ended; each request it held that has sent no token yet is retried on another
// unit of the same role, the others end at once with kError. The deployment serves on while a unit
// of each role it needs is up; then submits get kShuttingDown (HTTP 503) and failure() says why.
#pragma once
#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "serve/deployment.h"
#include "serve/worker.h"

namespace epserve::serve {

struct DeploymentWorkerOptions {
  Deployment deployment;
  // argv of one rank of a unit (`<binary> unit --model ...` with the unit's pool and limits), without
  // --router, --unit-id and --role, which are appended.
  std::function<std::vector<std::string>(const UnitSpec&)> rank_command;
  double start_timeout_s = 180;  // every rank registered
  double heartbeat_timeout_s = 10;
  int max_per_rank = 256 + 64;   // requests in flight per rank (running + waiting) before 429
  // The KV block names' seed (kvcache::model_identity), as the ranks compute it: the router names a
  // prompt's blocks the same way to send it where its prefix is cached.
  uint64_t model_id = 0;
  size_t affinity_blocks = 1 << 20;  // block names remembered for that
};

class DeploymentWorker final : public Worker {
 public:
  // Launches the units; throws epserve::Error naming the unit that exits or does not register in
  // time (its output went to this process's stderr). Units already started are stopped.
  explicit DeploymentWorker(DeploymentWorkerOptions options);
  // Stops every unit (a stop message, then SIGTERM / SIGKILL to each mpirun's process group).
  ~DeploymentWorker() override;
  SubmitResult submit(GenerateRequest request, std::shared_ptr<EventStream> events) override;
  WorkerLimits limits() const override;
  WorkerStats stats() const override;
  void drain(std::chrono::steady_clock::time_point deadline) override;
  std::string failure() const override;
  std::vector<UnitStatus> units() const override;
  pid_t mpirun_pid(int unit) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace epserve::serve
