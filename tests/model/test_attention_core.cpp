// The naive path's per-head attention core (src/model/attention_core.h): the blocked SIMD kernel
// against its scalar twin bit for bit on fresh random inputs (sizes that leave partial tiles, both
// numerics), against a plain FP64 computation, and a query's row the same whichever chunk it is
// computed in (what prefix hits and chunked prefill rely on).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "model/attention_core.h"

namespace epserve::model {
namespace {

using kernels::Numerics;

struct Inputs {
  int dq, dv, keys;
  std::vector<float> q, kt, v;
  int ldk;
};

// Keys 0..keys-1 and one query per key position (query t at position t).
Inputs make(int dq, int dv, int keys, std::mt19937& rng) {
  std::normal_distribution<float> n(0.0f, 1.0f);
  Inputs in{dq, dv, keys, {}, {}, {}, attention_key_stride(keys)};
  in.q.resize(size_t(keys) * dq);
  in.kt.assign(size_t(dq) * in.ldk, 0.0f);
  in.v.resize(size_t(keys) * dv);
  for (auto& x : in.q) x = n(rng);
  for (int d = 0; d < dq; ++d)
    for (int j = 0; j < keys; ++j) in.kt[size_t(d) * in.ldk + j] = n(rng);
  for (auto& x : in.v) x = n(rng);
  return in;
}

// Queries [first, first + count) (base = first: query first + i sees keys 0..first + i).
std::vector<float> run(const Inputs& in, int first, int count, Numerics mode, bool reference) {
  std::vector<float> o(size_t(count) * in.dv, -7.0f);
  HeadAttention a;
  a.dq = in.dq;
  a.dv = in.dv;
  a.base = first;
  a.count = count;
  a.scale = 1.0f / std::sqrt(float(in.dq));
  a.q = in.q.data() + size_t(first) * in.dq;
  a.kt = in.kt.data();
  a.ldk = in.ldk;
  a.v = in.v.data();
  a.o = o.data();
  reference ? attend_head_reference(a, mode) : attend_head(a, mode);
  return o;
}

bool bit_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(AttentionCore, SimdMatchesScalarTwinBitForBit) {
  std::mt19937 rng(std::random_device{}());
  for (Numerics mode : {Numerics::kExact, Numerics::kDeepSeek})
    for (auto [dq, dv] : {std::pair{96, 64}, std::pair{48, 32}, std::pair{192, 128}})
      for (int keys : {1, 7, 16, 33, 130}) {
        const auto in = make(dq, dv, keys, rng);
        for (int first : {0, keys / 2, keys - 1}) {
          const int count = keys - first;
          EXPECT_TRUE(bit_equal(run(in, first, count, mode, false), run(in, first, count, mode, true)))
              << "dq " << dq << " dv " << dv << " keys " << keys << " first " << first;
        }
      }
}

TEST(AttentionCore, RowsDoNotDependOnTheChunk) {
  std::mt19937 rng(std::random_device{}());
  const auto in = make(96, 64, 100, rng);
  const auto whole = run(in, 0, 100, Numerics::kDeepSeek, false);
  for (int cut : {1, 9, 64, 99}) {  // [0, cut) then [cut, 100): the second chunk's rows sit in other tiles
    auto a = run(in, 0, cut, Numerics::kDeepSeek, false), b = run(in, cut, 100 - cut, Numerics::kDeepSeek, false);
    a.insert(a.end(), b.begin(), b.end());
    EXPECT_TRUE(bit_equal(a, whole)) << "cut at " << cut;
  }
}

TEST(AttentionCore, ComputesCausalAttention) {
  std::mt19937 rng(std::random_device{}());
  const auto in = make(96, 64, 40, rng);
  const auto o = run(in, 0, 40, Numerics::kExact, false);
  double err = 0, norm = 0;
  for (int i = 0; i < 40; ++i) {
    std::vector<double> s(size_t(i) + 1);
    double mx = -1e300, sum = 0;
    for (int j = 0; j <= i; ++j) {
      double acc = 0;
      for (int d = 0; d < 96; ++d) acc += double(in.q[size_t(i) * 96 + d]) * in.kt[size_t(d) * in.ldk + j];
      s[size_t(j)] = acc / std::sqrt(96.0);
      mx = std::max(mx, s[size_t(j)]);
    }
    for (auto& x : s) sum += (x = std::exp(x - mx));
    for (int e = 0; e < 64; ++e) {
      double want = 0;
      for (int j = 0; j <= i; ++j) want += s[size_t(j)] / sum * in.v[size_t(j) * 64 + e];
      err += std::pow(o[size_t(i) * 64 + e] - want, 2);
      norm += want * want;
    }
  }
  EXPECT_LT(std::sqrt(err / norm), 1e-5);
}

}  // namespace
}  // namespace epserve::model
