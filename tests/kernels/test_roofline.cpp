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
  // Two products per lane per instruction: twice the FMA rate on Zen 5, half of it on an Intel Xeon
  // with AMX (one vdpbf16ps every other cycle against two FMAs a cycle).
  EXPECT_GT(dot, fma * 0.2);
  EXPECT_LT(dot, fma * 5);
  // The kernels' one-thread choice agrees with the all-thread peaks where these are clearly apart.
  if (dot > 1.5 * fma) {
    EXPECT_TRUE(bf16_dot_at_least_fma_rate());
  }
  if (dot < fma / 1.5) {
    EXPECT_FALSE(bf16_dot_at_least_fma_rate());
  }
#else
  EXPECT_EQ(dot, 0.0);
  EXPECT_FALSE(bf16_dot_at_least_fma_rate());
#endif
  // AMX: 0 where absent (or refused by the kernel); where present, a 16 × 16 × 32 product per
  // instruction is far beyond the vector FMA peak (12-14× on an Intel Xeon, 2026-12-03).
  const double amx = measure_amx_bf16_gflops();
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
  EXPECT_TRUE(amx == 0 || amx > 2 * fma) << amx << " vs FMA " << fma;
#else
  EXPECT_EQ(amx, 0.0);
#endif
}
