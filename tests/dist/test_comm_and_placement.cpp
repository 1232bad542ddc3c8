// The in-process Comm (the MPI one is exercised through mpirun in test_mpirun.cpp) and expert
// placement.
#include <gtest/gtest.h>

#include <fstream>
#include <thread>

#include "base/error.h"
#include "dist/expert_placement.h"
#include "dist/in_process_comm.h"
#include "model/config.h"
#include "support/paths.h"

using namespace epserve;
using namespace epserve::dist;

TEST(InProcessComm, AllToAllAllreduceGather) {
  const int R = 3;
  InProcessGroup group(R);
  std::vector<std::thread> threads;
  std::vector<std::vector<Bytes>> received(R);
  std::vector<long> maxes(R);
  std::vector<std::vector<Bytes>> gathered(R);
  for (int r = 0; r < R; ++r)
    threads.emplace_back([&, r] {
      Comm& c = group.rank(r);
      for (int round = 0; round < 3; ++round) {  // reuse of the mailbox across rounds
        std::vector<Bytes> send(R);
        for (int d = 0; d < R; ++d) send[d] = Bytes(size_t(r + d + round), uint8_t(10 * r + d));
        received[r] = c.all_to_all(send);
      }
      maxes[r] = c.allreduce_max(r * 7);
      gathered[r] = c.gather_to_root(Bytes(size_t(r + 1), uint8_t(r)));
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < R; ++r) {
    for (int s = 0; s < R; ++s) EXPECT_EQ(received[r][s], Bytes(size_t(s + r + 2), uint8_t(10 * s + r)));
    EXPECT_EQ(maxes[r], 14);
  }
  ASSERT_EQ(gathered[0].size(), 3u);
  for (int s = 0; s < R; ++s) EXPECT_EQ(gathered[0][s], Bytes(size_t(s + 1), uint8_t(s)));
  EXPECT_TRUE(gathered[1].empty());
}

TEST(ExpertPlacement, EvenSplitAndReplicas) {
  auto c = model::ModelConfig::preset("tiny");  // 32 experts, MoE layers 1 and 2
  const auto p = ExpertPlacement::even(c, 4);
  EXPECT_EQ(p.slots_per_rank(), 8);
  EXPECT_TRUE(p.rank_owns(0, 1, 7));
  EXPECT_FALSE(p.rank_owns(0, 1, 8));
  EXPECT_TRUE(p.rank_owns(3, 2, 31));
  // 8 redundant slots over 2 ranks: experts 0..7 have a second replica on rank 1.
  const auto q = ExpertPlacement::even(c, 2, 8);
  EXPECT_EQ(q.slots_per_rank(), 20);
  EXPECT_TRUE(q.rank_owns(0, 1, 0));
  EXPECT_TRUE(q.rank_owns(1, 1, 0));
  // Tokens of one source spread over both replicas of expert 3.
  std::set<int> used;
  for (int t = 0; t < 4; ++t) used.insert(q.choose_slot(1, 3, 0, t));
  EXPECT_EQ(used, (std::set<int>{3, 35}));
  EXPECT_THROW(ExpertPlacement::even(c, 3), Error);  // 32 slots over 3 ranks
}

TEST(ExpertPlacement, FileErrorsNameTheProblem) {
  const auto c = model::ModelConfig::preset("tiny");
  const auto dir = epserve::testing::scratch_dir("placement");
  auto expect = [&](const std::string& text, const std::string& needle) {
    const auto path = dir / "p.json";
    std::ofstream(path) << text;
    try {
      ExpertPlacement::load(path, c, 2);
      ADD_FAILURE() << "accepted: " << text;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  std::string all, missing_one;
  for (int e = 0; e < 32; ++e) all += (e ? "," : "") + std::to_string(31 - e);
  for (int e = 0; e < 32; ++e) missing_one += (e ? "," : "") + std::to_string(e == 5 ? 4 : e);
  expect("{", "not valid JSON");
  expect("{\"layers\": {\"1\": [" + all + "]}}", "layer 2 is missing");
  expect("{\"layers\": {\"1\": [" + all + "], \"2\": [" + missing_one + "]}}", "expert 5 has no slot");
  expect("{\"layers\": {\"1\": [" + all + "], \"2\": [" + all + ",99,0]}}", "99 is not an expert id");
  expect("{\"layers\": {\"1\": [" + all + "], \"2\": [" + all + ",1]}}", "do not split evenly");
  expect("{\"ranks\": 4, \"layers\": {}}", "written for 4 ranks");
  // A good file: reversed order.
  const auto path = dir / "good.json";
  std::ofstream(path) << "{\"ranks\": 2, \"layers\": {\"1\": [" + all + "], \"2\": [" + all + "]}}";
  const auto p = ExpertPlacement::load(path, c, 2);
  EXPECT_TRUE(p.rank_owns(0, 1, 31));
  EXPECT_FALSE(p.rank_owns(0, 1, 0));
}
