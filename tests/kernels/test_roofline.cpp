// The run-time ceilings: plausible, positive, and the BF16 figure present exactly when compiled in.
#include <gtest/gtest.h>

#include "kernels/roofline.h"

using namespace epserve::kernels;

TEST(Roofline, MeasuresPlausibleCeilings) {
  const double bw = measure_read_bandwidth_gbps(size_t(64) << 20);  // smaller than bench's: a quick check
  EXPECT_GT(bw, 0.5);
  EXPECT_LT(bw, 5000.0);
  const double fma = measure_fp32_fma_gflops();
  EXPECT_GT(fma, 1.0);
  EXPECT_LT(fma, 100000.0);
  const double dot = measure_bf16_dot_gflops();
#if defined(__AVX512F__) && defined(__AVX512BF16__)
  EXPECT_GT(dot, fma * 0.5);  // two products per lane per instruction: about twice the FMA rate
#else
  EXPECT_EQ(dot, 0.0);
#endif
}
