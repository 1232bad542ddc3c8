// R ranks as threads of one process, for unit tests of the distributed code without mpirun.
#pragma once
#include <barrier>
#include <memory>
#include <mutex>
#include <vector>

#include "dist/comm.h"

namespace epserve::dist {

class InProcessGroup {
 public:
  explicit InProcessGroup(int size);
  // The endpoint of rank r; each must be used by one thread.
  Comm& rank(int r) { return *endpoints_[r]; }
  int size() const { return size_; }

 private:
  friend class InProcessComm;
  int size_;
  std::barrier<> barrier_;
  std::vector<std::vector<Bytes>> mailbox_;  // [from][to]
  std::vector<long> values_;
  std::vector<std::unique_ptr<Comm>> endpoints_;
};

}  // namespace epserve::dist
