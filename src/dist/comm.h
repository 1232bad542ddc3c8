// Communication among the ranks of one unit. The MPI implementation is the data plane across
// processes and hosts; the in-process one runs R ranks as threads for unit tests.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

namespace epserve::dist {

using Bytes = std::vector<uint8_t>;

class Comm {
 public:
  virtual ~Comm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // A started all-to-all; wait() completes it and returns what each rank sent here.
  class Exchange {
   public:
    virtual ~Exchange() = default;
    virtual std::vector<Bytes> wait() = 0;
  };
  // Variable-size all-to-all: send[r] goes to rank r. Returns once the exchange is under way, so
  // that a caller can compute while the data moves (two-micro-batch overlap).
  virtual std::unique_ptr<Exchange> start_all_to_all(std::vector<Bytes> send) = 0;
  std::vector<Bytes> all_to_all(std::vector<Bytes> send) { return start_all_to_all(std::move(send))->wait(); }

  virtual long allreduce_max(long value) = 0;
  // Every rank's bytes, in rank order, at rank 0; other ranks get an empty list.
  virtual std::vector<Bytes> gather_to_root(Bytes bytes) = 0;
};

}  // namespace epserve::dist
