#include "dist/mpi_comm.h"

#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "base/error.h"

namespace epserve::dist {

namespace {
void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  throw Error(std::string(what) + " failed: " + std::string(text, len));
}

class MpiExchange : public Comm::Exchange {
 public:
  MpiExchange(std::vector<Bytes> send, int size) : send_(std::move(send)), size_(size) {
    std::vector<int> send_counts(size), recv_counts(size);
    for (int r = 0; r < size; ++r) send_counts[r] = int(send_[r].size());
    check(MPI_Alltoall(send_counts.data(), 1, MPI_INT, recv_counts.data(), 1, MPI_INT, MPI_COMM_WORLD), "MPI_Alltoall");
    send_displs_.resize(size);
    recv_displs_.resize(size);
    size_t send_total = 0, recv_total = 0;
    for (int r = 0; r < size; ++r) {
      send_displs_[r] = int(send_total);
      recv_displs_[r] = int(recv_total);
      send_total += send_counts[r];
      recv_total += recv_counts[r];
    }
    send_flat_.reserve(send_total);
    for (auto& b : send_) send_flat_.insert(send_flat_.end(), b.begin(), b.end());
    recv_flat_.resize(recv_total);
    send_counts_ = std::move(send_counts);
    recv_counts_ = std::move(recv_counts);
    check(MPI_Ialltoallv(send_flat_.data(), send_counts_.data(), send_displs_.data(), MPI_BYTE, recv_flat_.data(),
                         recv_counts_.data(), recv_displs_.data(), MPI_BYTE, MPI_COMM_WORLD, &request_),
          "MPI_Ialltoallv");
  }
  ~MpiExchange() override {
    if (request_ != MPI_REQUEST_NULL) MPI_Wait(&request_, MPI_STATUS_IGNORE);
  }
  std::vector<Bytes> wait() override {
    check(MPI_Wait(&request_, MPI_STATUS_IGNORE), "MPI_Wait (all-to-all)");
    std::vector<Bytes> out(size_);
    for (int r = 0; r < size_; ++r)
      out[r].assign(recv_flat_.begin() + recv_displs_[r], recv_flat_.begin() + recv_displs_[r] + recv_counts_[r]);
    return out;
  }

 private:
  std::vector<Bytes> send_;
  int size_;
  Bytes send_flat_, recv_flat_;
  std::vector<int> send_counts_, recv_counts_, send_displs_, recv_displs_;
  MPI_Request request_ = MPI_REQUEST_NULL;
};
}  // namespace

bool launched_by_mpirun() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMIX_RANK") != nullptr;
}

void abort_job_if_running(const std::string& message) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) return;
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  std::fprintf(stderr, "epserve: error (rank %d): %s\n", rank, message.c_str());
  MPI_Abort(MPI_COMM_WORLD, 1);
}

MpiComm::MpiComm() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided);  // a serving rank calls MPI from its scheduler thread
  }
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
  if (const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE")) local_size_ = std::max(1, std::atoi(local));
}

MpiComm::~MpiComm() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

std::unique_ptr<Comm::Exchange> MpiComm::start_all_to_all(std::vector<Bytes> send) {
  EPS_REQUIRE(int(send.size()) == size_, "all_to_all: one buffer per rank expected");
  return std::make_unique<MpiExchange>(std::move(send), size_);
}

long MpiComm::allreduce_max(long value) {
  long out = 0;
  check(MPI_Allreduce(&value, &out, 1, MPI_LONG, MPI_MAX, MPI_COMM_WORLD), "MPI_Allreduce");
  return out;
}

std::vector<Bytes> MpiComm::gather_to_root(Bytes bytes) {
  int count = int(bytes.size());
  std::vector<int> counts(size_), displs(size_);
  check(MPI_Gather(&count, 1, MPI_INT, counts.data(), 1, MPI_INT, 0, MPI_COMM_WORLD), "MPI_Gather");
  Bytes flat;
  if (rank_ == 0) {
    size_t total = 0;
    for (int r = 0; r < size_; ++r) displs[r] = int(total), total += counts[r];
    flat.resize(total);
  }
  check(MPI_Gatherv(bytes.data(), count, MPI_BYTE, flat.data(), counts.data(), displs.data(), MPI_BYTE, 0,
                    MPI_COMM_WORLD),
        "MPI_Gatherv");
  std::vector<Bytes> out;
  if (rank_ == 0)
    for (int r = 0; r < size_; ++r) out.emplace_back(flat.begin() + displs[r], flat.begin() + displs[r] + counts[r]);
  return out;
}

}  // namespace epserve::dist
