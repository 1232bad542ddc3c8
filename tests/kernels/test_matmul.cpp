// The fast kernels against their scalar twins and against FP64 evaluations of the same math, on
// fresh random inputs each run (the seed is printed with every failure).
//
// Bounds asserted (u = 2^-24, FP32 unit roundoff):
// - exact numerics and BF16 weights, against FP64: |y − y64| ≤ (min(K,128) + kb + 6)·u·Σ|x·w·s|.
//   Every product passes through at most 128 roundings inside its 128-block partial sum (or K/16
//   in a 16-lane chain), kb when the scaled partials are summed, one for the scale and ≤ 5 for the
//   lane reduction: the standard (Higham) worst-case bound for that summation tree.
// - DeepSeek numerics, fast against twin: products of two FP8 values are exact in FP32, so the two
//   differ only in summation order. Each is within γ·Σ|s·qx·qw| of the exact value before its BF16
//   rounding (γ as above), and each BF16 rounding moves it by at most half a BF16 ulp of the
//   result, so |fast − twin| ≤ 2γ·Σ|s·qx·qw| + ulp_bf16(max(|fast|, |twin|)): one BF16 step when
//   the two FP32 sums straddle a rounding midpoint. In practice most outputs are bit-equal.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "base/bf16.h"
#include "base/fp8.h"
#include "kernels/matmul.h"
#include "kernels/simd_avx2.h"
#include "kernels/simd.h"

using namespace epserve;
using namespace epserve::kernels;

namespace {

uint64_t fresh_seed() {
  std::random_device rd;
  return (uint64_t(rd()) << 32) | rd();
}

struct Weight {
  std::vector<uint8_t> codes;
  std::vector<float> scales;
  std::vector<uint8_t> tiles;  // the kernels' layout, where this build's kernels read it
  Fp8Matrix m;
  void set(int N, int K) {
    m = Fp8Matrix{codes, scales, N, K, {}};
    tiles.resize(kernels::fp8_tiles_bytes(m.rows, m.cols));
    kernels::pack_fp8_tiles(m, tiles);
    m.tiles = tiles;
  }
};

// BF16 weights with their tiles, where this build's kernels read them.
struct Bf16Weight {
  std::vector<uint8_t> tiles;
  Bf16Matrix m;
  explicit Bf16Weight(const std::vector<bf16>& values, int N, int K) : m{values, N, K, {}} {
    tiles.resize(kernels::bf16_tiles_bytes(N, K));
    kernels::pack_bf16_tiles(m, tiles);
    m.tiles = tiles;
  }
};

// Random FP8 codes: mostly uniform over finite codes, with many subnormal and extreme codes.
uint8_t random_code(std::mt19937_64& rng) {
  const int kind = int(rng() % 10);
  uint8_t c;
  if (kind == 0) c = uint8_t(rng() % 8);  // subnormal (and zero)
  else if (kind == 1) {
    static const uint8_t extreme[] = {0x7e, 0x7d, 0x00, 0x01, 0x08, 0x07, 0x77, 0x78};
    c = extreme[rng() % 8];
  } else c = uint8_t(rng() % 0x7f);
  if (c == 0x7f) c = 0x7e;
  return uint8_t(c | (rng() & 1 ? 0x80 : 0));
}

Weight make_weight(int N, int K, std::mt19937_64& rng) {
  Weight w;
  w.codes.resize(size_t(N) * K);
  for (auto& c : w.codes) c = random_code(rng);
  const int nb = ceil_div(N, kQuantBlock), kb = ceil_div(K, kQuantBlock);
  w.scales.resize(size_t(nb) * kb);
  std::uniform_real_distribution<float> e(-14, 4), f(1, 2);
  for (auto& s : w.scales) s = std::exp2(std::round(e(rng))) * f(rng);  // several orders of magnitude
  w.set(N, K);
  return w;
}

// Activations: normal values, magnitude varying per row and per 128-block (2^-8 .. 2^8), some
// outliers, exact zeros, and one all-zero row when M > 2.
std::vector<float> make_x(int M, int K, std::mt19937_64& rng) {
  std::vector<float> x(size_t(M) * K);
  std::normal_distribution<float> nd;
  std::uniform_real_distribution<float> e(-8, 8);
  for (int m = 0; m < M; ++m)
    for (int b = 0; b < ceil_div(K, kQuantBlock); ++b) {
      const float mag = std::exp2(e(rng));
      for (int k = b * kQuantBlock; k < std::min(K, (b + 1) * kQuantBlock); ++k) {
        float v = nd(rng) * mag;
        const int r = int(rng() % 64);
        if (r == 0) v = 0;
        if (r == 1) v *= 100;
        x[size_t(m) * K + k] = v;
      }
    }
  if (M > 2)
    for (int k = 0; k < K; ++k) x[size_t(1) * K + k] = 0;
  return x;
}

constexpr double kU = 1.0 / (1 << 24);
// Spacing of BF16 values at |v| (v already a BF16 value or not): 2^(exponent − 7).
double bf16_ulp(double v) {
  if (v == 0) return 0;
  int e;
  std::frexp(std::fabs(v), &e);  // |v| in [2^(e-1), 2^e)
  return std::ldexp(1.0, e - 1 - 7);
}
double gamma_fast(int K) { return (std::min(K, kQuantBlock) + ceil_div(K, kQuantBlock) + 6) * kU; }

// FP64 evaluation of exact numerics: value and Σ|x·w·s|.
void fp64_exact(const std::vector<float>& x, int M, const Weight& w, std::vector<double>& y, std::vector<double>& mag) {
  const int N = w.m.rows, K = w.m.cols, kb = ceil_div(K, kQuantBlock);
  const auto& t = fp8_e4m3_table();
  y.assign(size_t(M) * N, 0);
  mag.assign(size_t(M) * N, 0);
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      double acc = 0, a = 0;
      for (int k = 0; k < K; ++k) {
        const double s = w.scales[size_t(n / kQuantBlock) * kb + k / kQuantBlock];
        const double p = double(x[size_t(m) * K + k]) * t[w.codes[size_t(n) * K + k]] * s;
        acc += p;
        a += std::fabs(p);
      }
      y[size_t(m) * N + n] = acc;
      mag[size_t(m) * N + n] = a;
    }
}

// Σ|s·qx·qw| of DeepSeek numerics (the twin's quantization of x), and the FP64 value before BF16.
void fp64_deepseek(const std::vector<float>& x, int M, const Weight& w, std::vector<double>& y,
                   std::vector<double>& mag) {
  const int N = w.m.rows, K = w.m.cols, kb = ceil_div(K, kQuantBlock);
  const auto& t = fp8_e4m3_table();
  Fp8Rows q;
  quantize_rows_fp8_reference(x, M, K, q);
  y.assign(size_t(M) * N, 0);
  mag.assign(size_t(M) * N, 0);
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      double acc = 0, a = 0;
      for (int b = 0; b < kb; ++b) {
        // The scale product as the kernels round it (FP32), the rest exact.
        const double s = float(q.scales[size_t(m) * kb + b] * w.scales[size_t(n / kQuantBlock) * kb + b]);
        double part = 0, apart = 0;
        for (int k = b * kQuantBlock; k < std::min(K, (b + 1) * kQuantBlock); ++k) {
          const double p = double(t[q.codes[size_t(m) * K + k]]) * t[w.codes[size_t(n) * K + k]];
          part += p;
          apart += std::fabs(p);
        }
        acc += part * s;
        a += apart * std::fabs(s);
      }
      y[size_t(m) * N + n] = acc;
      mag[size_t(m) * N + n] = a;
    }
}

const int kMs[] = {1, 2, 3, 7, 8, 33, 129};
const int kNs[] = {1, 48, 128, 200, 256};
const int kKs[] = {32, 64, 100, 128, 200, 256, 384};

// This target's vector encoder on 16 floats (AVX2: two 8-float halves).
#if defined(__AVX512F__) && defined(__AVX512BW__)
#define EPS_TEST_VECTOR_ENCODER 1
void vector_encode16(const float* in, int32_t* out) {
  _mm512_storeu_si512(out, simd::encode_fp8x16(_mm512_loadu_ps(in)));
}
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define EPS_TEST_VECTOR_ENCODER 1
void vector_encode16(const float* in, int32_t* out) {
  for (int h = 0; h < 2; ++h)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 8 * h), simd::encode_fp8x8(_mm256_loadu_ps(in + 8 * h)));
}
#endif

TEST(Kernels, EncodeFp8MatchesScalarBitForBit) {
#ifdef EPS_TEST_VECTOR_ENCODER
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::vector<float> in;
  // Specials and every code's neighbourhood: the value, the midpoints to its neighbours and the
  // floats one ulp either side of them (ties must go to even).
  for (float v : {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 448.0f, 464.0f, 463.99f, 480.0f, 1e30f, 1e-40f,
                  std::ldexp(1.0f, -10), 3 * std::ldexp(1.0f, -10), std::ldexp(1.0f, -6), 1e-45f})
    in.push_back(v), in.push_back(-v);
  for (int c = 0; c < 0x7e; ++c) {
    const float lo = fp8_e4m3_to_float(uint8_t(c)), hi = fp8_e4m3_to_float(uint8_t(c + 1));
    const float mid = (lo + hi) / 2;
    for (float v : {lo, mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e9f), hi}) in.push_back(v), in.push_back(-v);
  }
  std::uniform_real_distribution<float> e(-30, 12);
  for (int i = 0; i < 400000; ++i) in.push_back(std::exp2(e(rng)) * (rng() & 1 ? -1.f : 1.f));
  for (int i = 0; i < 400000; ++i) {  // arbitrary bit patterns, NaNs excluded later by the scalar's rule
    uint32_t u = uint32_t(rng());
    float f;
    std::memcpy(&f, &u, 4);
    in.push_back(f);
  }
  while (in.size() % 16) in.push_back(1.0f);
  int bad = 0;
  for (size_t i = 0; i < in.size(); i += 16) {
    alignas(64) int32_t out[16];
    vector_encode16(&in[i], out);
    for (int j = 0; j < 16; ++j) {
      const uint8_t want = float_to_fp8_e4m3(in[i + j]);
      if (uint8_t(out[j]) != want && ++bad < 10)
        ADD_FAILURE() << "encode(" << in[i + j] << ") = " << out[j] << ", scalar " << int(want);
    }
  }
  EXPECT_EQ(bad, 0);
#else
  GTEST_SKIP() << "no vector encoder on this target";
#endif
}

// The register transposes (AVX-512: the prefill activation pack's 16 × 16; AVX2: the tile's 8 × 8),
// against plain indexing on fresh random rows.
TEST(Kernels, TransposeMatchesIndexing) {
#if defined(__AVX512F__) && defined(__AVX512BW__)
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (int trial = 0; trial < 100; ++trial) {
    alignas(64) uint32_t in[16][16], out[16][16];
    for (auto& row : in)
      for (auto& v : row) v = uint32_t(rng());
    __m512i r[16];
    for (int i = 0; i < 16; ++i) r[i] = _mm512_load_si512(in[i]);
    simd::transpose16x16_epi32(r);
    for (int i = 0; i < 16; ++i) _mm512_store_si512(out[i], r[i]);
    for (int i = 0; i < 16; ++i)
      for (int j = 0; j < 16; ++j) ASSERT_EQ(out[j][i], in[i][j]) << "row " << i << ", column " << j;
  }
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
  // AVX2: the 8 × 8 float transpose behind the prefill tile's transpose-out.
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd;
  for (int trial = 0; trial < 100; ++trial) {
    alignas(32) float in[8][8], out[8][8];
    for (auto& row : in)
      for (auto& v : row) v = nd(rng);
    __m256 r[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm256_load_ps(in[i]);
    simd::transpose8x8_ps(r);
    for (int i = 0; i < 8; ++i) _mm256_store_ps(out[i], r[i]);
    for (int i = 0; i < 8; ++i)
      for (int j = 0; j < 8; ++j) ASSERT_EQ(out[j][i], in[i][j]) << "row " << i << ", column " << j;
  }
#else
  GTEST_SKIP() << "no vector transpose on this target";
#endif
}

// The vector SiLU of the SwiGLU against z / (1 + e^-z) in double, on fresh random inputs and the
// ends of the range (it must not overflow): within 4 ulp, or 1e-40 where the result is subnormal
// (below z ≈ -87, where e^z itself is subnormal and carries fewer bits).
TEST(Kernels, Silu16MatchesDoubleWithinUlps) {
#if defined(__AVX512F__) && defined(__AVX512BW__)
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::vector<float> in = {0.0f, -0.0f, 1e-30f, -1e-30f, 1e-6f, -1e-6f, 88.0f, -88.0f, 100.0f, -100.0f, 1e30f, -1e30f};
  std::uniform_real_distribution<float> wide(-30, 30), narrow(-4, 4);
  for (int i = 0; i < 100000; ++i) in.push_back(i % 2 ? wide(rng) : narrow(rng));
  while (in.size() % 16) in.push_back(1.0f);
  double worst = 0;
  for (size_t i = 0; i < in.size(); i += 16) {
    alignas(64) float out[16];
    _mm512_store_ps(out, simd::silu16(_mm512_loadu_ps(&in[i])));
    for (int j = 0; j < 16; ++j) {
      const double z = in[i + j], want = z / (1.0 + std::exp(-z));
      if (std::abs(want) < 1.17549435e-38) {
        ASSERT_LE(std::abs(out[j] - want), 1e-40) << "silu(" << z << ") = " << out[j] << ", want " << want;
        continue;
      }
      const double ulp = std::abs(double(std::nextafter(float(want), INFINITY)) - double(float(want)));
      const double err = std::abs(out[j] - want) / ulp;
      worst = std::max(worst, err);
      ASSERT_LE(err, 4.0) << "silu(" << z << ") = " << out[j] << ", want " << want;
    }
  }
  RecordProperty("worst_ulps", std::to_string(worst));
#else
  GTEST_SKIP() << "no AVX-512 on this target";
#endif
}

TEST(Kernels, QuantizeRowsMatchesTwinBitForBit) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (int rows : {1, 3, 33, 300})
    for (int cols : {1, 17, 32, 64, 100, 128, 200, 1024}) {
      SCOPED_TRACE("rows " + std::to_string(rows) + " cols " + std::to_string(cols));
      auto x = make_x(rows, cols, rng);
      if (rows > 2) x[5 % x.size()] = 1e-7f;  // a tiny block entry
      Fp8Rows want, got;
      quantize_rows_fp8_reference(x, rows, cols, want);
      quantize_rows_fp8(x, rows, cols, got);
      ASSERT_EQ(got.rows, rows);
      ASSERT_EQ(got.cols, cols);
      ASSERT_EQ(got.scales, want.scales);
      ASSERT_EQ(got.codes, want.codes);
    }
}

TEST(Kernels, MatmulFp8ExactAgainstFp64AndTwin) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (int K : kKs)
    for (int N : kNs) {
      const Weight w = make_weight(N, K, rng);
      for (int M : kMs) {
        SCOPED_TRACE("M " + std::to_string(M) + " N " + std::to_string(N) + " K " + std::to_string(K));
        const auto x = make_x(M, K, rng);
        std::vector<float> fast(size_t(M) * N, NAN), twin(size_t(M) * N);
        matmul_fp8(x, M, w.m, fast, Numerics::kExact);
        matmul_fp8_reference(x, M, w.m, twin, Numerics::kExact);
        std::vector<double> y64, mag;
        fp64_exact(x, M, w, y64, mag);
        const double g = gamma_fast(K);
        for (size_t i = 0; i < fast.size(); ++i) {
          ASSERT_LE(std::fabs(fast[i] - y64[i]), g * mag[i]) << "fast at " << i << ": " << fast[i] << " vs " << y64[i];
          ASSERT_LE(std::fabs(twin[i] - y64[i]), (K + 2) * kU * mag[i]) << "twin at " << i;
        }
      }
    }
}

TEST(Kernels, MatmulFp8DeepSeekAgainstTwin) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  size_t equal = 0, total = 0;
  for (int K : kKs)
    for (int N : kNs) {
      const Weight w = make_weight(N, K, rng);
      for (int M : kMs) {
        SCOPED_TRACE("M " + std::to_string(M) + " N " + std::to_string(N) + " K " + std::to_string(K));
        const auto x = make_x(M, K, rng);
        std::vector<float> fast(size_t(M) * N, NAN), twin(size_t(M) * N), fromq(size_t(M) * N, NAN);
        matmul_fp8(x, M, w.m, fast, Numerics::kDeepSeek);
        matmul_fp8_reference(x, M, w.m, twin, Numerics::kDeepSeek);
        Fp8Rows q;
        quantize_rows_fp8(x, M, K, q);
        matmul_fp8_quantized(q, w.m, fromq);
        std::vector<double> y64, mag;
        fp64_deepseek(x, M, w, y64, mag);
        const double g = gamma_fast(K);
        for (size_t i = 0; i < fast.size(); ++i) {
          const double bound = 2 * g * mag[i] + bf16_ulp(std::max(std::fabs(fast[i]), std::fabs(twin[i])));
          ASSERT_LE(std::fabs(fast[i] - twin[i]), bound) << "at " << i << ": " << fast[i] << " vs twin " << twin[i];
          ASSERT_LE(std::fabs(fast[i] - y64[i]), g * mag[i] + bf16_ulp(fast[i]) / 2) << "vs fp64 at " << i;
          ASSERT_EQ(fromq[i], fast[i]) << "matmul_fp8_quantized differs at " << i;
          ASSERT_EQ(fast[i], round_to_bf16(fast[i])) << "output not BF16 at " << i;
          equal += fast[i] == twin[i];
          ++total;
        }
      }
    }
  std::printf("deepseek: %zu of %zu outputs bit-equal to the twin\n", equal, total);
  EXPECT_GT(double(equal), 0.5 * double(total));  // only summation order differs
}

// Bigger shapes: several threads, several items per thread, K not a multiple of 128.
TEST(Kernels, MatmulFp8LargeShapes) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const int N = 1000, K = 1000;
  const Weight w = make_weight(N, K, rng);
  for (int M : {8, 9, 300}) {
    SCOPED_TRACE("M " + std::to_string(M));
    const auto x = make_x(M, K, rng);
    std::vector<double> y64, mag;
    for (auto mode : {Numerics::kExact, Numerics::kDeepSeek}) {
      std::vector<float> fast(size_t(M) * N, NAN);
      matmul_fp8(x, M, w.m, fast, mode);
      if (mode == Numerics::kExact) fp64_exact(x, M, w, y64, mag);
      else fp64_deepseek(x, M, w, y64, mag);
      const double g = gamma_fast(K);
      for (size_t i = 0; i < fast.size(); ++i) {
        const double slack = mode == Numerics::kDeepSeek ? bf16_ulp(fast[i]) / 2 : 0.0;
        ASSERT_LE(std::fabs(fast[i] - y64[i]), g * mag[i] + slack) << "at " << i;
      }
    }
  }
}

// Decode with activations larger than L1 (M·K floats > 32 KB) goes block by block over groups of
// 16 rows; rows outside full groups take the per-row path. Both must agree with FP64, and give the
// same bits for the same row: rows 184..191 lie in a full group of the 200-row weight (row ranges
// are multiples of 16 rows), and make up a weight of 8 rows of their own (per-row path only).
TEST(Kernels, DecodeWithLargeActivations) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const int N = 200, K = 2000, r0 = 184, rows = 8, kb = ceil_div(K, kQuantBlock);
  const Weight w = make_weight(N, K, rng);
  Weight sub;
  sub.codes.assign(w.codes.begin() + size_t(r0) * K, w.codes.begin() + size_t(r0 + rows) * K);
  sub.scales.assign(w.scales.begin() + size_t(r0 / kQuantBlock) * kb, w.scales.begin() + size_t(r0 / kQuantBlock + 1) * kb);
  sub.set(rows, K);
  for (int M : {5, 8}) {
    SCOPED_TRACE("M " + std::to_string(M));
    const auto x = make_x(M, K, rng);
    for (auto mode : {Numerics::kExact, Numerics::kDeepSeek}) {
      std::vector<float> fast(size_t(M) * N, NAN), part(size_t(M) * rows, NAN);
      matmul_fp8(x, M, w.m, fast, mode);
      matmul_fp8(x, M, sub.m, part, mode);
      std::vector<double> y64, mag;
      if (mode == Numerics::kExact) fp64_exact(x, M, w, y64, mag);
      else fp64_deepseek(x, M, w, y64, mag);
      for (size_t i = 0; i < fast.size(); ++i) {
        const double slack = mode == Numerics::kDeepSeek ? bf16_ulp(fast[i]) / 2 : 0.0;
        ASSERT_LE(std::fabs(fast[i] - y64[i]), gamma_fast(K) * mag[i] + slack) << "at " << i;
      }
      for (int m = 0; m < M; ++m)
        for (int r = 0; r < rows; ++r)
          ASSERT_EQ(std::bit_cast<uint32_t>(part[size_t(m) * rows + r]), std::bit_cast<uint32_t>(fast[size_t(m) * N + r0 + r]))
              << "row " << r0 + r << " m " << m;
    }
  }
}

TEST(Kernels, GroupedEqualsUngroupedBitForBit) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::vector<Weight> weights;
  const int shapes[][2] = {{256, 1024}, {1024, 256}, {48, 100}, {200, 384}};
  for (int i = 0; i < 24; ++i) weights.push_back(make_weight(shapes[i % 4][0], shapes[i % 4][1], rng));
  std::vector<std::vector<float>> xs, ys;
  std::vector<int> Ms;
  for (int i = 0; i < 24; ++i) {
    int M = int(rng() % 65);  // 0..64
    if (i < 3) M = i == 0 ? 0 : i == 1 ? 1 : 9;
    Ms.push_back(M);
    xs.push_back(make_x(M, weights[i].m.cols, rng));
  }
  for (auto mode : {Numerics::kExact, Numerics::kDeepSeek}) {
    std::vector<Fp8MatmulTask> tasks;
    ys.assign(24, {});
    for (int i = 0; i < 24; ++i) {
      ys[i].assign(size_t(Ms[i]) * weights[i].m.rows, NAN);
      tasks.push_back({xs[i], Ms[i], &weights[i].m, ys[i]});
    }
    matmul_fp8_grouped(tasks, mode);
    for (int i = 0; i < 24; ++i) {
      SCOPED_TRACE("task " + std::to_string(i) + " M " + std::to_string(Ms[i]));
      std::vector<float> one(ys[i].size(), NAN);
      matmul_fp8(xs[i], Ms[i], weights[i].m, one, mode);
      for (size_t j = 0; j < one.size(); ++j) ASSERT_EQ(std::bit_cast<uint32_t>(ys[i][j]), std::bit_cast<uint32_t>(one[j])) << j;
    }
    // A single task goes through the same code.
    std::vector<float> single(ys[3].size(), NAN);
    Fp8MatmulTask t{xs[3], Ms[3], &weights[3].m, single};
    matmul_fp8_grouped(std::span<const Fp8MatmulTask>(&t, 1), mode);
    EXPECT_EQ(single, ys[3]);
    // Output rows scattered through y_rows (in a shuffled order, with gaps): the same values.
    std::vector<std::vector<float>> scattered(24);
    std::vector<std::vector<float*>> row_ptrs(24);
    std::vector<Fp8MatmulTask> scatter_tasks;
    for (int i = 0; i < 24; ++i) {
      const int N = weights[i].m.rows;
      scattered[i].assign(size_t(2 * Ms[i] + 1) * N, NAN);
      std::vector<int> slots(size_t(2 * Ms[i]));
      std::iota(slots.begin(), slots.end(), 0);
      std::shuffle(slots.begin(), slots.end(), rng);
      for (int m = 0; m < Ms[i]; ++m) row_ptrs[i].push_back(scattered[i].data() + size_t(slots[size_t(m)]) * N);
      scatter_tasks.push_back({xs[i], Ms[i], &weights[i].m, {}, nullptr, row_ptrs[i]});
    }
    matmul_fp8_grouped(scatter_tasks, mode);
    for (int i = 0; i < 24; ++i)
      for (int m = 0; m < Ms[i]; ++m)
        for (int n = 0; n < weights[i].m.rows; ++n)
          ASSERT_EQ(std::bit_cast<uint32_t>(row_ptrs[i][size_t(m)][n]), std::bit_cast<uint32_t>(ys[i][size_t(m) * weights[i].m.rows + n]))
              << "task " << i << " row " << m << " col " << n;
  }
}

TEST(Kernels, MatmulBf16AgainstFp64AndTwin) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd;
  std::uniform_real_distribution<float> e(-10, 10);
  for (int K : kKs)
    for (int N : kNs) {
      std::vector<bf16> wv(size_t(N) * K);
      for (auto& v : wv) v = float_to_bf16(nd(rng) * std::exp2(e(rng)));
      const Bf16Weight packed(wv, N, K);
      const Bf16Matrix& w = packed.m;
      for (int M : kMs) {
        SCOPED_TRACE("M " + std::to_string(M) + " N " + std::to_string(N) + " K " + std::to_string(K));
        const auto x = make_x(M, K, rng);
        std::vector<float> fast(size_t(M) * N, NAN), twin(size_t(M) * N);
        matmul_bf16(x, M, w, fast);
        matmul_bf16_reference(x, M, w, twin);
        for (int m = 0; m < M; ++m)
          for (int n = 0; n < N; ++n) {
            double y64 = 0, mag = 0;
            for (int k = 0; k < K; ++k) {
              const double p = double(x[size_t(m) * K + k]) * bf16_to_float(wv[size_t(n) * K + k]);
              y64 += p;
              mag += std::fabs(p);
            }
            const size_t i = size_t(m) * N + n;
            ASSERT_LE(std::fabs(fast[i] - y64), (gamma_fast(K) + K / 16 * kU) * mag) << "fast at " << i;
            ASSERT_LE(std::fabs(fast[i] - twin[i]), (gamma_fast(K) + K / 16 * kU + (K + 1) * kU) * mag) << "twin at " << i;
          }
      }
    }
}

// DeepSeek numerics (BF16 activations, vdpbf16ps where available): the activations rounded to
// BF16, every product exact in FP32, so fast and twin differ only in the order of their FP32 sums:
// each within γ·Σ|x̂·w| of the FP64 value of the same products (x̂ the rounded activations).
TEST(Kernels, MatmulBf16DeepSeekAgainstFp64AndTwin) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd;
  std::uniform_real_distribution<float> e(-10, 10);
  std::vector<int> Ks(std::begin(kKs), std::end(kKs));
  for (int K : {1, 33, 257, 1000}) Ks.push_back(K);  // odd lengths: a half-filled last BF16 pair
  for (int K : Ks)
    for (int N : kNs) {
      std::vector<bf16> wv(size_t(N) * K);
      for (auto& v : wv) v = float_to_bf16(nd(rng) * std::exp2(e(rng)));
      const Bf16Weight packed(wv, N, K);
      const Bf16Matrix& w = packed.m;
      for (int M : kMs) {
        SCOPED_TRACE("M " + std::to_string(M) + " N " + std::to_string(N) + " K " + std::to_string(K));
        auto x = make_x(M, K, rng);
        if (M % 2) for (auto& v : x) v = round_to_bf16(v);  // already BF16 (the lm_head's case) or not
        std::vector<float> fast(size_t(M) * N, NAN), twin(size_t(M) * N, NAN);
        matmul_bf16(x, M, w, fast, Numerics::kDeepSeek);
        matmul_bf16_reference(x, M, w, twin, Numerics::kDeepSeek);
        const double g = gamma_fast(K) + K / 16 * kU;
        for (int m = 0; m < M; ++m)
          for (int n = 0; n < N; ++n) {
            double y64 = 0, mag = 0;
            for (int k = 0; k < K; ++k) {
              const double p = double(round_to_bf16(x[size_t(m) * K + k])) * bf16_to_float(wv[size_t(n) * K + k]);
              y64 += p;
              mag += std::fabs(p);
            }
            const size_t i = size_t(m) * N + n;
            ASSERT_LE(std::fabs(fast[i] - y64), g * mag) << "fast at " << i;
            ASSERT_LE(std::fabs(twin[i] - y64), K * kU * mag) << "twin at " << i;
            ASSERT_LE(std::fabs(fast[i] - twin[i]), (g + K * kU) * mag) << "fast vs twin at " << i;
          }
      }
    }
}

}  // namespace

namespace {

// Batch invariance: a row's output must be bitwise the same whether it is computed alone (M = 1,
// the decode kernels) or inside a batch of M rows (decode up to 8, prefill above) at any position,
// for every kernel and both numerics (expert parallelism puts different row counts per expert on
// different rank counts). Fresh random inputs each run.
uint32_t bits(float f) { return std::bit_cast<uint32_t>(f); }

// The suite runs these tests again with each product path forced (tests/CMakeLists.txt): the
// forcing must take, or those runs would test the default path twice.
TEST(Kernels, ProductPathIsTheOneAskedFor) {
  const char* dot = std::getenv("EPSERVE_BF16_DOT");
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512BF16__)
  if (dot) {
    EXPECT_EQ(bf16_dot_in_use(), std::string(dot) == "1");
  }
#else
  EXPECT_FALSE(bf16_dot_in_use()) << (dot ? dot : "");
#endif
  const char* amx = std::getenv("EPSERVE_AMX");
#if defined(__AVX512BF16__) && defined(__AMX_TILE__) && defined(__AMX_BF16__)
  if (amx) {
    EXPECT_EQ(amx_in_use(), std::string(amx) == "1");
  }
#else
  EXPECT_FALSE(amx_in_use()) << (amx ? amx : "");
#endif
}

TEST(Kernels, RowResultsDoNotDependOnBatch) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd;
  for (const auto& [N, K] : {std::pair{200, 100}, std::pair{256, 384}, std::pair{130, 1000}, std::pair{48, 2000}, std::pair{70, 257}}) {
    const Weight w = make_weight(N, K, rng);
    std::vector<bf16> bv(size_t(N) * K);
    for (auto& v : bv) v = float_to_bf16(nd(rng) * 0.05f);
    const Bf16Weight packed(bv, N, K);
    const Bf16Matrix& wb = packed.m;
    for (int M : {2, 3, 8, 9, 33, 129}) {
      const auto x = make_x(M, K, rng);
      for (int pos : {0, M / 2, M - 1}) {
        SCOPED_TRACE("N " + std::to_string(N) + " K " + std::to_string(K) + " M " + std::to_string(M) + " row " +
                     std::to_string(pos));
        const std::vector<float> row(x.begin() + size_t(pos) * K, x.begin() + size_t(pos + 1) * K);
        auto check = [&](const std::vector<float>& alone, const std::vector<float>& batch, const char* what) {
          for (int n = 0; n < N; ++n)
            ASSERT_EQ(bits(alone[n]), bits(batch[size_t(pos) * N + n])) << what << " output " << n;
        };
        for (auto mode : {Numerics::kExact, Numerics::kDeepSeek}) {
          SCOPED_TRACE(mode == Numerics::kExact ? "exact" : "deepseek");
          std::vector<float> alone(N, NAN), batch(size_t(M) * N, NAN);
          matmul_fp8(row, 1, w.m, alone, mode);
          matmul_fp8(x, M, w.m, batch, mode);
          check(alone, batch, "matmul_fp8");
          // Grouped, next to another task of a different M.
          std::vector<float> gb(size_t(M) * N, NAN), other(size_t(5) * N, NAN);
          const auto xo = make_x(5, K, rng);
          const Fp8MatmulTask tasks[] = {{xo, 5, &w.m, other}, {x, M, &w.m, gb}};
          matmul_fp8_grouped(tasks, mode);
          check(alone, gb, "matmul_fp8_grouped");
          std::vector<float> ga(N, NAN);
          const Fp8MatmulTask one[] = {{row, 1, &w.m, ga}};
          matmul_fp8_grouped(one, mode);
          check(ga, batch, "matmul_fp8_grouped alone");
          if (mode == Numerics::kDeepSeek) {
            Fp8Rows qa, qb;
            quantize_rows_fp8(row, 1, K, qa);
            quantize_rows_fp8(x, M, K, qb);
            std::vector<float> ya(N, NAN), yb(size_t(M) * N, NAN);
            matmul_fp8_quantized(qa, w.m, ya);
            matmul_fp8_quantized(qb, w.m, yb);
            check(ya, batch, "matmul_fp8_quantized alone");
            check(alone, yb, "matmul_fp8_quantized");
          }
        }
        std::vector<float> alone(N, NAN), batch(size_t(M) * N, NAN);
        matmul_bf16(row, 1, wb, alone);
        matmul_bf16(x, M, wb, batch);
        check(alone, batch, "matmul_bf16");
        std::vector<float> alone_d(N, NAN), batch_d(size_t(M) * N, NAN);
        matmul_bf16(row, 1, wb, alone_d, Numerics::kDeepSeek);
        matmul_bf16(x, M, wb, batch_d, Numerics::kDeepSeek);
        check(alone_d, batch_d, "matmul_bf16 deepseek");
      }
    }
  }
}

}  // namespace

namespace {

// Tasks with already-quantized rows (what the routed experts receive: views of runs of rows in one
// buffer for all experts): bit-identical to matmul_fp8_quantized per task, in either call mode,
// mixed with plain tasks.
TEST(Kernels, GroupedQuantizedEqualsPerTask) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const int shapes[][2] = {{256, 1024}, {1024, 256}, {48, 100}, {200, 384}};
  std::vector<Weight> weights;
  std::vector<Fp8Rows> qs(20);
  std::vector<std::vector<float>> xs;
  std::vector<int> Ms;
  for (int i = 0; i < 20; ++i) {
    weights.push_back(make_weight(shapes[i % 4][0], shapes[i % 4][1], rng));
    const int M = i < 4 ? std::array{0, 1, 8, 9}[i] : int(rng() % 70);
    Ms.push_back(M);
    xs.push_back(make_x(M, weights[i].m.cols, rng));
    quantize_rows_fp8(xs[i], M, weights[i].m.cols, qs[i]);
  }
  // Every task's quantized rows back to back in one buffer, each task a view of its run.
  std::vector<uint8_t> all_codes;
  std::vector<float> all_scales;
  std::vector<std::pair<size_t, size_t>> at;
  for (const auto& q : qs) {
    at.push_back({all_codes.size(), all_scales.size()});
    all_codes.insert(all_codes.end(), q.codes.begin(), q.codes.end());
    all_scales.insert(all_scales.end(), q.scales.begin(), q.scales.end());
  }
  std::vector<Fp8RowsView> views;
  for (size_t i = 0; i < qs.size(); ++i) {
    Fp8RowsView v;
    v.codes = std::span<const uint8_t>(all_codes).subspan(at[i].first, qs[i].codes.size());
    v.scales = std::span<const float>(all_scales).subspan(at[i].second, qs[i].scales.size());
    v.rows = qs[i].rows;
    v.cols = qs[i].cols;
    views.push_back(v);
  }
  for (auto mode : {Numerics::kExact, Numerics::kDeepSeek}) {
    std::vector<std::vector<float>> ys(20);
    std::vector<Fp8MatmulTask> tasks;
    for (int i = 0; i < 20; ++i) {
      ys[i].assign(size_t(Ms[i]) * weights[i].m.rows, NAN);
      // Odd tasks: quantized rows (x left empty); even: the FP32 rows in the call's mode.
      if (i % 2) tasks.push_back({{}, Ms[i], &weights[i].m, ys[i], &views[i]});
      else tasks.push_back({xs[i], Ms[i], &weights[i].m, ys[i]});
    }
    matmul_fp8_grouped(tasks, mode);
    for (int i = 0; i < 20; ++i) {
      SCOPED_TRACE("task " + std::to_string(i) + " M " + std::to_string(Ms[i]));
      std::vector<float> one(ys[i].size(), NAN);
      if (i % 2) matmul_fp8_quantized(qs[i], weights[i].m, one);
      else matmul_fp8(xs[i], Ms[i], weights[i].m, one, mode);
      for (size_t j = 0; j < one.size(); ++j) ASSERT_EQ(std::bit_cast<uint32_t>(ys[i][j]), std::bit_cast<uint32_t>(one[j])) << j;
    }
  }
}

}  // namespace
