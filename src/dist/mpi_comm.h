// Comm over MPI (OpenMPI): counts by MPI_Alltoall, rows by non-blocking MPI_Ialltoallv.
#pragma once
#include <memory>
#include <string>

#include "dist/comm.h"

namespace epserve::dist {

// True when this process was started by mpirun (OpenMPI or PMIx environment).
bool launched_by_mpirun();

// If MPI is running, prints the error with this rank's number and aborts every rank of the job
// (mpirun then exits non-zero); otherwise returns.
void abort_job_if_running(const std::string& message);

class MpiComm : public Comm {
 public:
  // Initializes MPI (once per process); errors return to the caller instead of aborting, so that a
  // dead peer surfaces as an epserve::Error. Finalizes in the destructor.
  MpiComm();
  ~MpiComm() override;
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::unique_ptr<Exchange> start_all_to_all(std::vector<Bytes> send) override;
  long allreduce_max(long value) override;
  std::vector<Bytes> gather_to_root(Bytes bytes) override;
  // Ranks of this job on this host (for sharing the cores among them).
  int local_size() const { return local_size_; }

 private:
  int rank_ = 0, size_ = 1, local_size_ = 1;
};

}  // namespace epserve::dist
