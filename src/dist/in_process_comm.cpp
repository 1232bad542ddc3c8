#include "dist/in_process_comm.h"

#include <algorithm>

#include "base/error.h"

namespace epserve::dist {

class InProcessComm : public Comm {
 public:
  InProcessComm(InProcessGroup& group, int rank) : group_(group), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return group_.size_; }

  std::unique_ptr<Exchange> start_all_to_all(std::vector<Bytes> send) override {
    EPS_REQUIRE(int(send.size()) == group_.size_, "all_to_all: one buffer per rank expected");
    group_.mailbox_[rank_] = std::move(send);
    group_.barrier_.arrive_and_wait();  // everyone has posted
    std::vector<Bytes> received(group_.size_);
    for (int r = 0; r < group_.size_; ++r) received[r] = group_.mailbox_[r][rank_];
    group_.barrier_.arrive_and_wait();  // everyone has read: the mailbox may be reused
    struct Done : Exchange {
      std::vector<Bytes> data;
      std::vector<Bytes> wait() override { return std::move(data); }
    };
    auto done = std::make_unique<Done>();
    done->data = std::move(received);
    return done;
  }

  long allreduce_max(long value) override {
    group_.values_[rank_] = value;
    group_.barrier_.arrive_and_wait();
    const long out = *std::max_element(group_.values_.begin(), group_.values_.end());
    group_.barrier_.arrive_and_wait();
    return out;
  }

  std::vector<Bytes> gather_to_root(Bytes bytes) override {
    std::vector<Bytes> send(group_.size_);
    send[0] = std::move(bytes);
    auto received = all_to_all(std::move(send));
    if (rank_ != 0) return {};
    return received;
  }

 private:
  InProcessGroup& group_;
  int rank_;
};

InProcessGroup::InProcessGroup(int size)
    : size_(size), barrier_(size), mailbox_(size, std::vector<Bytes>(size)), values_(size) {
  for (int r = 0; r < size; ++r) endpoints_.push_back(std::make_unique<InProcessComm>(*this, r));
}

}  // namespace epserve::dist
