// The 8-wide vector math of kernels/vmath_avx2.h (the AVX2 softmax, SwiGLU and router): e^x, sigmoid
// and SiLU against double on fresh random inputs and the edges (zeros, the ends of exp's range,
// infinities), a value the same in every lane, and, on AVX-512 hosts, bit for bit the 16-wide
// functions of simd.h (the two widths are meant to agree).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/simd.h"
#include "kernels/vmath_avx2.h"

namespace {

#if defined(__AVX2__) && defined(__FMA__)
using namespace epserve::kernels;

uint64_t fresh_seed() {
  std::random_device rd;
  return (uint64_t(rd()) << 32) | rd();
}

// |got - want| in units of the float spacing at want (want normal), or 0 / a huge value for
// results below the normal range (absolute check there).
double ulps(float got, double want) {
  if (std::abs(want) < 1.17549435e-38) return std::abs(got - want) <= 1e-40 ? 0 : 1e9;
  const double ulp = std::abs(double(std::nextafter(float(want), INFINITY)) - double(float(want)));
  return std::abs(got - want) / ulp;
}

// f over `in` (padded to whole vectors), each result with its input.
template <class F>
std::vector<float> apply8(const std::vector<float>& in, F f) {
  std::vector<float> out(in.size());
  for (size_t i = 0; i + 8 <= in.size(); i += 8) _mm256_storeu_ps(&out[i], f(_mm256_loadu_ps(&in[i])));
  return out;
}

std::vector<float> inputs(std::vector<float> edges, float lo, float hi, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> wide(lo, hi), narrow(-4, hi < 4 ? hi : 4);
  for (int i = 0; i < 100000; ++i) edges.push_back(i % 2 ? wide(rng) : narrow(rng));
  while (edges.size() % 16) edges.push_back(0.5f * lo);
  return edges;
}

TEST(Vmath8, ExpNonpositiveWithinTwoUlpsOfDouble) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const auto in = inputs({0.0f, -0.0f, -1e-30f, -1e-7f, -0.34657359f, -0.5f, -1.0f, -87.0f, -87.3f}, -87.3f, 0.0f, seed);
  const auto out = apply8(in, simd::exp_nonpositive8);
  double worst = 0;
  for (size_t i = 0; i < in.size(); ++i) {
    const double err = ulps(out[i], std::exp(double(in[i])));
    worst = std::max(worst, err);
    ASSERT_LE(err, 2.0) << "exp(" << in[i] << ") = " << out[i];
  }
  RecordProperty("worst_ulps", std::to_string(worst));
  // Below the clamp: e^-87.3 (the smallest value the softmax can meet after subtracting the max is
  // far below any probability that matters); -inf too (a masked score).
  for (float x : {-87.31f, -100.0f, -1e30f, -INFINITY}) {
    alignas(32) float r[8];
    _mm256_store_ps(r, simd::exp_nonpositive8(_mm256_set1_ps(x)));
    EXPECT_LE(ulps(r[0], std::exp(double(-87.3f))), 2.0) << "exp(" << x << ")";
  }
}

TEST(Vmath8, SigmoidAndSiluWithinFourUlpsOfDouble) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const auto in = inputs({0.0f, -0.0f, 1e-30f, -1e-30f, 1e-6f, -1e-6f, 87.0f, -87.0f, 88.0f, -88.0f, 100.0f, -100.0f,
                          170.0f, -170.0f, 1e30f, -1e30f, INFINITY, -INFINITY},
                         -30, 30, seed);
  const auto sig = apply8(in, simd::sigmoid8), silu = apply8(in, simd::silu8);
  double worst_sig = 0, worst_silu = 0;
  for (size_t i = 0; i < in.size(); ++i) {
    const double z = in[i], s = 1.0 / (1.0 + std::exp(-z));
    const double e_sig = ulps(sig[i], s);
    worst_sig = std::max(worst_sig, e_sig);
    ASSERT_LE(e_sig, 4.0) << "sigmoid(" << z << ") = " << sig[i] << ", want " << s;
    if (std::isinf(z)) continue;  // z · sigmoid(z): -inf · 0
    const double e_silu = ulps(silu[i], z * s);
    worst_silu = std::max(worst_silu, e_silu);
    ASSERT_LE(e_silu, 4.0) << "silu(" << z << ") = " << silu[i] << ", want " << z * s;
  }
  RecordProperty("worst_ulps_sigmoid", std::to_string(worst_sig));
  RecordProperty("worst_ulps_silu", std::to_string(worst_silu));
}

TEST(Vmath8, ValueDoesNotDependOnTheLane) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(-100, 100);
  for (int i = 0; i < 1000; ++i) {
    const float z = dist(rng);
    alignas(32) float lanes[8], alone[8];
    for (float& v : lanes) v = dist(rng);
    _mm256_store_ps(alone, simd::silu8(_mm256_set1_ps(z)));
    for (int l = 0; l < 8; ++l) {
      alignas(32) float in[8], out[8];
      std::memcpy(in, lanes, sizeof in);
      in[l] = z;
      _mm256_store_ps(out, simd::silu8(_mm256_load_ps(in)));  // (the far-range branch may run here only)
      ASSERT_EQ(std::memcmp(&out[l], &alone[0], sizeof(float)), 0) << "silu(" << z << ") in lane " << l;
    }
  }
}

#if defined(__AVX512F__) && defined(__AVX512BW__)
TEST(Vmath8, MatchesTheSixteenWideFunctionsBitForBit) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const auto in = inputs({0.0f, -0.0f, 88.0f, -88.0f, 1e30f, -1e30f, INFINITY, -INFINITY, NAN}, -100, 100, seed);
  for (size_t i = 0; i < in.size(); i += 16) {
    alignas(64) float w16[3][16], w8[3][16];
    const __m512 z = _mm512_loadu_ps(&in[i]);
    _mm512_store_ps(w16[0], simd::exp_nonpositive(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(z))));
    _mm512_store_ps(w16[1], simd::sigmoid16(z));
    _mm512_store_ps(w16[2], simd::silu16(z));
    for (int h = 0; h < 16; h += 8) {
      const __m256 z8 = _mm256_loadu_ps(&in[i + h]);
      _mm256_store_ps(w8[0] + h, simd::exp_nonpositive8(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_andnot_ps(_mm256_set1_ps(-0.0f), z8))));
      _mm256_store_ps(w8[1] + h, simd::sigmoid8(z8));
      _mm256_store_ps(w8[2] + h, simd::silu8(z8));
    }
    ASSERT_EQ(std::memcmp(w16, w8, sizeof w16), 0) << "inputs " << i << "..";
  }
}
#endif

#else
TEST(Vmath8, NeedsAvx2) { GTEST_SKIP() << "no AVX2 + FMA on this target"; }
#endif

}  // namespace
