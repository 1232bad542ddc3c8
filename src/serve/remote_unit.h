// A unit of R ranks (one `mpirun -n R epserve unit ...` job) behind the serve::Worker seam, on the
// router's side. The router binds a ZeroMQ ROUTER socket on loopback, launches mpirun with its
// address, and waits until every rank has registered. Requests go to the ranks round robin (data
// parallel attention); token events stream back (unit_protocol.h). One I/O thread owns the socket.
//
// Faults: a rank silent for `heartbeat_timeout_s`, or mpirun exiting, fails the unit: every request
// in flight ends at once with kError, mpirun's process group is ended, and later submits get
// kShuttingDown (HTTP 503). Nothing waits on a dead peer.
#pragma once
#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "serve/worker.h"

namespace epserve::serve {

struct RemoteUnitOptions {
  int ranks = 2;
  // argv of one rank (the `epserve unit` command line) without --router, which is appended.
  std::vector<std::string> rank_command;
  std::vector<std::string> mpirun_args;  // extra mpirun flags (e.g. a hostfile)
  double start_timeout_s = 180;          // all ranks registered
  double heartbeat_timeout_s = 10;
  int max_per_rank = 256 + 64;           // requests in flight per rank (running + waiting) before 429
};

class RemoteUnit final : public Worker {
 public:
  // Launches the unit and returns once every rank registered; throws epserve::Error when it exits
  // or does not register in time (its output went to this process's stderr).
  explicit RemoteUnit(RemoteUnitOptions options);
  // Stops the ranks (a stop message, then SIGTERM / SIGKILL to mpirun's process group if needed).
  ~RemoteUnit() override;
  SubmitResult submit(GenerateRequest request, std::shared_ptr<EventStream> events) override;
  WorkerLimits limits() const override;
  WorkerStats stats() const override;
  void drain(std::chrono::steady_clock::time_point deadline) override;
  // Empty while healthy; why the unit failed otherwise.
  std::string failure() const override;
  pid_t mpirun_pid() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace epserve::serve
