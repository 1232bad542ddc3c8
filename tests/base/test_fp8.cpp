#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "base/bf16.h"
#include "base/fp8.h"

using namespace epserve;

// Independent facts from the E4M3 definition (OCP FP8 spec): largest 448, smallest normal 2^-6,
// smallest subnormal 2^-9, NaN only at 0x7f/0xff.
TEST(Fp8, KnownCodes) {
  EXPECT_EQ(fp8_e4m3_to_float(0x7e), 448.0f);
  EXPECT_EQ(fp8_e4m3_to_float(0xfe), -448.0f);
  EXPECT_EQ(fp8_e4m3_to_float(0x08), std::ldexp(1.0f, -6));
  EXPECT_EQ(fp8_e4m3_to_float(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(fp8_e4m3_to_float(0x38), 1.0f);
  EXPECT_EQ(fp8_e4m3_to_float(0x00), 0.0f);
  EXPECT_TRUE(std::signbit(fp8_e4m3_to_float(0x80)));
  EXPECT_TRUE(std::isnan(fp8_e4m3_to_float(0x7f)));
  EXPECT_TRUE(std::isnan(fp8_e4m3_to_float(0xff)));
}

TEST(Fp8, EncodeRoundTripsEveryCode) {
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7f) == 0x7f) continue;
    EXPECT_EQ(float_to_fp8_e4m3(fp8_e4m3_to_float(uint8_t(c))), c) << c;
  }
}

// Brute force: the encoder picks the nearest code, ties to the even code, saturating at 448.
TEST(Fp8, EncodeIsNearestEvenOnRandomInputs) {
  std::mt19937 rng(std::random_device{}());
  std::uniform_real_distribution<float> exponent(-12, 10);
  for (int i = 0; i < 20000; ++i) {
    float x = std::exp2(exponent(rng)) * (rng() & 1 ? -1.f : 1.f);
    if (i % 97 == 0) x = fp8_e4m3_to_float(uint8_t(rng() % 126)) * 1.0f;  // exact codes too
    const uint8_t got = float_to_fp8_e4m3(x);
    const double target = std::clamp(double(x), -448.0, 448.0);
    double best = 1e30;
    int nearest_count = 0, even_nearest = -1;
    for (int c = 0; c < 256; ++c) {
      if ((c & 0x7f) == 0x7f || c == 0x80) continue;
      const double d = std::fabs(double(fp8_e4m3_to_float(uint8_t(c))) - target);
      if (d < best) { best = d; nearest_count = 0; even_nearest = -1; }
      if (d == best) { ++nearest_count; if ((c & 1) == 0) even_nearest = c; }
    }
    ASSERT_EQ(std::fabs(double(fp8_e4m3_to_float(got)) - target), best) << x;
    if (nearest_count > 1) {
      EXPECT_EQ(got & 0x7f, even_nearest & 0x7f) << "tie must go to even: " << x;
    }
  }
}

TEST(Bf16, RoundsToNearestEven) {
  EXPECT_EQ(float_to_bf16(1.0f).bits, 0x3f80);
  // 1 + 2^-8 is exactly half way between 1 and 1 + 2^-7: ties to even (1.0).
  EXPECT_EQ(round_to_bf16(1.0f + std::ldexp(1.0f, -8)), 1.0f);
  // 1 + 3*2^-8 is half way between 1+2^-7 and 1+2^-6: ties to even (1 + 2^-6).
  EXPECT_EQ(round_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 1.0f + std::ldexp(1.0f, -6));
  EXPECT_TRUE(std::isnan(round_to_bf16(NAN)));
  // Every FP8 value is exact in BF16.
  for (int c = 0; c < 256; ++c)
    if ((c & 0x7f) != 0x7f) {
      EXPECT_EQ(round_to_bf16(fp8_e4m3_to_float(uint8_t(c))), fp8_e4m3_to_float(uint8_t(c)));
    }
}
