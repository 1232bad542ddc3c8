#include <gtest/gtest.h>
#include <omp.h>

#include <atomic>
#include <vector>

#include "base/parallel.h"

using namespace epserve;

// Every index exactly once, whether spread over the threads or not; serial loops never enter
// OpenMP (so they run on the calling thread, in order).
TEST(Parallel, ForVisitsEveryIndexOnce) {
  for (bool parallel : {false, true})
    for (long n : {0L, 1L, 2L, 7L, 1000L}) {
      std::vector<std::atomic<int>> seen(static_cast<size_t>(n));
      parallel_for(n, parallel, [&](long i) { seen[size_t(i)]++; });
      for (long i = 0; i < n; ++i) EXPECT_EQ(seen[size_t(i)].load(), 1) << "n " << n << " parallel " << parallel;
      std::vector<std::atomic<int>> seen_dynamic(static_cast<size_t>(n));
      parallel_for_dynamic(int(n), parallel, [&](int i) { seen_dynamic[size_t(i)]++; });
      for (long i = 0; i < n; ++i) EXPECT_EQ(seen_dynamic[size_t(i)].load(), 1) << "n " << n << " parallel " << parallel;
    }
}

TEST(Parallel, SerialLoopsStayOnTheCallingThreadInOrder) {
  std::vector<int> order;
  parallel_for(5, false, [&](int i) {
    EXPECT_FALSE(omp_in_parallel());
    order.push_back(i);
  });
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3, 4}));
}

TEST(Parallel, RangesSplitIntoContiguousPiecesCoveringAll) {
  for (bool parallel : {false, true})
    for (int n : {0, 1, 3, 64, 1001}) {
      std::vector<std::atomic<int>> seen(static_cast<size_t>(n));
      std::atomic<int> calls{0};
      parallel_ranges(n, parallel, [&](int begin, int end) {
        EXPECT_LT(begin, end);
        calls++;
        for (int i = begin; i < end; ++i) seen[size_t(i)]++;
      });
      for (int i = 0; i < n; ++i) EXPECT_EQ(seen[size_t(i)].load(), 1) << "n " << n << " parallel " << parallel;
      EXPECT_LE(calls.load(), parallel ? omp_get_max_threads() : 1);
      if (n > 0 && !parallel) {
        EXPECT_EQ(calls.load(), 1);
      }
    }
}
