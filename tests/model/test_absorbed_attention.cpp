// The absorbed (decode) attention kernel (src/model/absorbed_attention.h): SIMD against its scalar
// twin bit for bit on fresh random inputs (FP32 and BF16 cache rows and kv_b_proj, both numerics,
// row counts that leave partial blocks, head counts that leave partial groups), against a plain
// FP64 computation of the same formulas from kv_b_proj in its checkpoint layout, and a head's
// result the same whichever heads share its call.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "model/absorbed_attention.h"

namespace epserve::model {
namespace {

using kernels::Numerics;

struct Shape {
  int heads, nope, rope, v, lora, rows;
};

struct Inputs {
  Shape d;
  std::vector<float> q, kv_b;  // q [heads][nope + rope]; kv_b [heads (nope + v)][lora], checkpoint layout
  std::vector<float> cache;    // [rows][lora + rope]
  std::vector<float> kvb_f32;  // absorbed layout
  std::vector<bf16> kvb_bf16, cache_bf16;
  std::vector<const float*> rows_f32;
  std::vector<const bf16*> rows_bf16;
};

Inputs make(const Shape& d, std::mt19937& rng, bool bf16_values) {
  std::normal_distribution<float> n(0.0f, 1.0f);
  auto value = [&](float scale) {
    const float x = n(rng) * scale;
    return bf16_values ? round_to_bf16(x) : x;
  };
  Inputs in;
  in.d = d;
  const int W = d.lora + d.rope;
  in.q.resize(size_t(d.heads) * (d.nope + d.rope));
  for (auto& x : in.q) x = value(1.0f);
  in.kv_b.resize(size_t(d.heads) * (d.nope + d.v) * d.lora);
  for (auto& x : in.kv_b) x = value(1.0f / std::sqrt(float(d.lora)));
  in.cache.resize(size_t(d.rows) * W);
  for (auto& x : in.cache) x = value(1.0f);
  in.kvb_f32 = absorbed_kv_b<float>(in.kv_b, d.heads, d.nope, d.v, d.lora);
  for (float x : in.kvb_f32) in.kvb_bf16.push_back(float_to_bf16(x));
  for (float x : in.cache) in.cache_bf16.push_back(float_to_bf16(x));
  for (int i = 0; i < d.rows; ++i) {
    in.rows_f32.push_back(&in.cache[size_t(i) * W]);
    in.rows_bf16.push_back(&in.cache_bf16[size_t(i) * W]);
  }
  return in;
}

// Heads [h0, h0 + heads) of the inputs in one call.
std::vector<float> run(const Inputs& in, bool bf16_rows, bool bf16_kvb, Numerics mode, bool reference, int h0 = 0,
                       int heads = -1) {
  const Shape& d = in.d;
  if (heads < 0) heads = d.heads;
  std::vector<float> o(size_t(heads) * d.v, -7.0f);
  AbsorbedHeads a;
  a.heads = heads;
  a.nope = d.nope, a.rope = d.rope, a.v = d.v, a.lora = d.lora;
  a.scale = 1.0f / std::sqrt(float(d.nope + d.rope));
  a.q = in.q.data() + size_t(h0) * (d.nope + d.rope);
  const size_t head_kvb = size_t(d.nope + d.v) * d.lora;
  if (bf16_kvb) a.kvb_bf16 = in.kvb_bf16.data() + size_t(h0) * head_kvb;
  else a.kvb_f32 = in.kvb_f32.data() + size_t(h0) * head_kvb;
  a.rows = d.rows;
  if (bf16_rows) a.rows_bf16 = in.rows_bf16.data();
  else a.rows_f32 = in.rows_f32.data();
  a.o = o.data();
  reference ? attend_absorbed_heads_reference(a, mode) : attend_absorbed_heads(a, mode);
  return o;
}

bool bit_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// The formulas in FP64 from kv_b_proj in its checkpoint layout (rows nope + e of a head are V's
// row e), without any rounding.
std::vector<double> fp64(const Inputs& in) {
  const Shape& d = in.d;
  const int W = d.lora + d.rope, qk = d.nope + d.rope;
  std::vector<double> out;
  for (int h = 0; h < d.heads; ++h) {
    const float* q = &in.q[size_t(h) * qk];
    const float* kvb = &in.kv_b[size_t(h) * (d.nope + d.v) * d.lora];
    std::vector<double> qrow(size_t(W), 0.0), s(size_t(d.rows)), lat(size_t(d.lora), 0.0);
    for (int e = 0; e < d.lora; ++e)
      for (int j = 0; j < d.nope; ++j) qrow[size_t(e)] += double(q[j]) * kvb[size_t(j) * d.lora + e];
    for (int r = 0; r < d.rope; ++r) qrow[size_t(d.lora + r)] = q[d.nope + r];
    double mx = -1e300, sum = 0;
    for (int i = 0; i < d.rows; ++i) {
      double acc = 0;
      for (int c = 0; c < W; ++c) acc += qrow[size_t(c)] * in.cache[size_t(i) * W + c];
      s[size_t(i)] = acc / std::sqrt(double(qk));
      mx = std::max(mx, s[size_t(i)]);
    }
    for (auto& x : s) sum += (x = std::exp(x - mx));
    for (int i = 0; i < d.rows; ++i)
      for (int e = 0; e < d.lora; ++e) lat[size_t(e)] += s[size_t(i)] / sum * in.cache[size_t(i) * W + e];
    for (int e = 0; e < d.v; ++e) {
      double acc = 0;
      for (int c = 0; c < d.lora; ++c) acc += lat[size_t(c)] * kvb[size_t(d.nope + e) * d.lora + c];
      out.push_back(acc);
    }
  }
  return out;
}

double relative_error(const std::vector<float>& got, const std::vector<double>& want) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    diff += (got[i] - want[i]) * (got[i] - want[i]);
    norm += want[i] * want[i];
  }
  return std::sqrt(diff / norm);
}

const Shape kShapes[] = {
    {4, 32, 16, 32, 32, 1},     // tiny preset, first token
    {5, 32, 16, 32, 32, 17},    // a partial group of heads, a partial block of rows
    {8, 64, 32, 64, 256, 130},  // bench preset
    {2, 128, 64, 128, 512, 40}, // DeepSeek-V3's widths
    {3, 24, 8, 24, 40, 9},      // widths that are not whole vectors (the twin runs)
};

TEST(AbsorbedAttention, SimdKernelEqualsScalarTwinBitForBit) {
  std::mt19937 rng(20261202);
  for (const Shape& d : kShapes)
    for (Numerics mode : {Numerics::kExact, Numerics::kDeepSeek}) {
      const Inputs in = make(d, rng, mode == Numerics::kDeepSeek);
      for (bool bf16_rows : {false, true})
        for (bool bf16_kvb : {false, true}) {
          SCOPED_TRACE(testing::Message() << "heads " << d.heads << " lora " << d.lora << " rows " << d.rows
                                          << " deepseek " << (mode == Numerics::kDeepSeek) << " bf16 rows "
                                          << bf16_rows << " bf16 kv_b " << bf16_kvb);
          const auto fast = run(in, bf16_rows, bf16_kvb, mode, false);
          const auto twin = run(in, bf16_rows, bf16_kvb, mode, true);
          EXPECT_TRUE(bit_equal(fast, twin));
          for (float x : fast) ASSERT_TRUE(std::isfinite(x));
        }
    }
}

// Exact numerics on FP32 inputs: FP32 sums of at most a few hundred terms (≈ 1e-6 relative);
// DeepSeek numerics round the query, probabilities, latent and output to BF16 (2^-9 relative
// each): within 2e-2 of the unrounded result.
TEST(AbsorbedAttention, MatchesFp64) {
  std::mt19937 rng(7);
  for (const Shape& d : kShapes) {
    SCOPED_TRACE(testing::Message() << "heads " << d.heads << " lora " << d.lora << " rows " << d.rows);
    const Inputs in = make(d, rng, false);
    const auto want = fp64(in);
    EXPECT_LT(relative_error(run(in, false, false, Numerics::kExact, false), want), 1e-5);
    const Inputs rounded = make(d, rng, true);
    EXPECT_LT(relative_error(run(rounded, true, true, Numerics::kDeepSeek, false), fp64(rounded)), 2e-2);
  }
}

TEST(AbsorbedAttention, HeadResultDoesNotDependOnItsCall) {
  std::mt19937 rng(11);
  const Shape d{7, 64, 32, 64, 256, 33};
  for (Numerics mode : {Numerics::kExact, Numerics::kDeepSeek}) {
    const Inputs in = make(d, rng, mode == Numerics::kDeepSeek);
    const auto all = run(in, mode == Numerics::kDeepSeek, mode == Numerics::kDeepSeek, mode, false);
    for (int h = 0; h < d.heads; ++h) {
      const auto one = run(in, mode == Numerics::kDeepSeek, mode == Numerics::kDeepSeek, mode, false, h, 1);
      EXPECT_TRUE(bit_equal(one, std::vector<float>(all.begin() + h * d.v, all.begin() + (h + 1) * d.v))) << "head " << h;
    }
  }
}

TEST(AbsorbedAttention, AbsorbedLayoutTransposesTheValueRows) {
  // Two heads, nope 1, v 2, lora 3: rows [U0; V0 row 0; V0 row 1; U1; ...] of 3 values.
  const std::vector<int> kv_b = {1, 2, 3, 10, 11, 12, 20, 21, 22, 4, 5, 6, 30, 31, 32, 40, 41, 42};
  const auto out = absorbed_kv_b<int>(kv_b, 2, 1, 2, 3);
  const std::vector<int> want = {1, 2, 3, 10, 20, 11, 21, 12, 22, 4, 5, 6, 30, 40, 31, 41, 32, 42};
  EXPECT_EQ(out, want);
}

}  // namespace
}  // namespace epserve::model
