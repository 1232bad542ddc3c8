#include "model/absorbed_attention.h"

#include <algorithm>
#include <cmath>

#include "base/error.h"
#include "base/scratch.h"
#include "kernels/simd.h"
#include "kernels/simd_avx2.h"
#include "model/attention_core.h"
#include "model/ops.h"

namespace epserve::model {

using kernels::Numerics;

namespace {

inline float value(float v) { return v; }
inline float value(bf16 v) { return bf16_to_float(v); }

// dot16 (absorbed_attention.h): 16 lane chains, then the halving tree.
template <typename Row>
float dot16(const float* a, const Row* b, int n) {
  float lane[16] = {};
  for (int d = 0; d < n; ++d) lane[d % 16] = std::fma(a[d], value(b[d]), lane[d % 16]);
  for (int half = 8; half >= 1; half /= 2)
    for (int l = 0; l < half; ++l) lane[l] += lane[l + half];
  return lane[0];
}

template <typename Row, typename Kvb>
void reference_heads(const AbsorbedHeads& a, const Row* const* rows, const Kvb* kvb, Numerics mode) {
  const int W = a.lora + a.rope, qk = a.nope + a.rope;
  std::vector<float> qrow(static_cast<size_t>(W)), s(static_cast<size_t>(a.rows)), lat(static_cast<size_t>(a.lora));
  for (int h = 0; h < a.heads; ++h) {
    const float* q = a.q + size_t(h) * qk;
    const Kvb* U = kvb + size_t(h) * (a.nope + a.v) * a.lora;
    const Kvb* VT = U + size_t(a.nope) * a.lora;
    for (int e = 0; e < a.lora; ++e) {
      float acc = 0;
      for (int j = 0; j < a.nope; ++j) acc = std::fma(q[j], value(U[size_t(j) * a.lora + e]), acc);
      qrow[size_t(e)] = acc;
    }
    round_activations(std::span<float>(qrow).first(size_t(a.lora)), mode);
    std::copy_n(q + a.nope, a.rope, qrow.begin() + a.lora);
    for (int i = 0; i < a.rows; ++i) s[size_t(i)] = dot16(qrow.data(), rows[i], W) * a.scale;
    softmax_probabilities(s, mode);
    for (int e = 0; e < a.lora; ++e) {
      float acc = 0;
      for (int i = 0; i < a.rows; ++i) acc = std::fma(s[size_t(i)], value(rows[i][e]), acc);
      lat[size_t(e)] = acc;
    }
    round_activations(lat, mode);
    float* o = a.o + size_t(h) * a.v;
    for (int e = 0; e < a.v; ++e) {
      float acc = 0;
      for (int c = 0; c < a.lora; ++c) acc = std::fma(lat[size_t(c)], value(VT[size_t(c) * a.v + e]), acc);
      o[e] = acc;
    }
    round_activations({o, size_t(a.v)}, mode);
  }
}

// The vector lanes of this build: n floats, loads of FP32 or BF16 (widened exactly), FMA.
#if defined(__AVX512F__) && defined(__AVX512BW__)
#define EPS_ABSORBED_SIMD 1
struct Lanes {
  static constexpr int n = 16;
  using V = __m512;
  static V zero() { return _mm512_setzero_ps(); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V load(const bf16* p) { return kernels::simd::widen_bf16x16(reinterpret_cast<const uint16_t*>(p)); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
};
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define EPS_ABSORBED_SIMD 1
struct Lanes {
  static constexpr int n = 8;
  using V = __m256;
  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V load(const bf16* p) { return kernels::simd::widen_bf16x8(reinterpret_cast<const uint16_t*>(p)); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
};
#endif

#ifdef EPS_ABSORBED_SIMD
using V = Lanes::V;
constexpr int kLanes = Lanes::n;
constexpr int kMaxHeads = 4;  // heads that share each load of a cache row

// out[0 .. B·kLanes) = Σ_i coef[i] · row(i)[0 .. B·kLanes), i ascending: B accumulators in
// registers, one FMA chain per output element.
template <int B, typename T, typename RowOf>
inline void axpy_block(int count, const float* coef, RowOf row, int offset, float* out) {
  V acc[B];
  for (auto& x : acc) x = Lanes::zero();
  for (int i = 0; i < count; ++i) {
    const V c = Lanes::set1(coef[i]);
    const T* p = row(i) + offset;
    for (int k = 0; k < B; ++k) acc[k] = Lanes::fma(c, Lanes::load(p + k * kLanes), acc[k]);
  }
  for (int k = 0; k < B; ++k) Lanes::store(out + offset + k * kLanes, acc[k]);
}

// out[0 .. width) = Σ_i coef[i] · row(i)[0 .. width) (width a multiple of kLanes): blocks of 8
// vectors, then one of what is left (an FMA's latency is hidden by 4 or more chains).
template <typename T, typename RowOf>
void axpy_rows(int count, const float* coef, RowOf row, int width, float* out) {
  int e = 0;
  for (; e + 8 * kLanes <= width; e += 8 * kLanes) axpy_block<8, T>(count, coef, row, e, out);
  switch ((width - e) / kLanes) {
    case 7: return axpy_block<7, T>(count, coef, row, e, out);
    case 6: return axpy_block<6, T>(count, coef, row, e, out);
    case 5: return axpy_block<5, T>(count, coef, row, e, out);
    case 4: return axpy_block<4, T>(count, coef, row, e, out);
    case 3: return axpy_block<3, T>(count, coef, row, e, out);
    case 2: return axpy_block<2, T>(count, coef, row, e, out);
    case 1: return axpy_block<1, T>(count, coef, row, e, out);
    default: return;
  }
}

// s[g][i] = scale · dot16(qrow[g], row_i) for kMaxHeads query rows of width W (a multiple of 16),
// R rows at a time: each row's chunk loaded once for all heads.
#if defined(__AVX512F__) && defined(__AVX512BW__)
constexpr int kScoreRows = 4;  // 8 chains in flight hide the FMA latency
template <int R, typename Row>
inline void score_rows(const float* qrow, int W, const Row* const* rows, float scale, float* s, int lds) {
  __m512 acc[R][kMaxHeads];
  for (auto& r : acc)
    for (auto& x : r) x = _mm512_setzero_ps();
  for (int d = 0; d < W; d += 16) {
    __m512 r[R];
    for (int k = 0; k < R; ++k) r[k] = Lanes::load(rows[k] + d);
    for (int g = 0; g < kMaxHeads; ++g) {
      const __m512 qv = _mm512_loadu_ps(qrow + size_t(g) * W + d);
      for (int k = 0; k < R; ++k) acc[k][g] = _mm512_fmadd_ps(qv, r[k], acc[k][g]);
    }
  }
  static_assert(kMaxHeads == 4);
  for (int k = 0; k < R; ++k) {
    alignas(64) float t[16];
    _mm512_store_ps(t, kernels::simd::tree_sum4(acc[k][0], acc[k][1], acc[k][2], acc[k][3]));
    for (int g = 0; g < kMaxHeads; ++g) s[size_t(g) * lds + k] = t[4 * g] * scale;
  }
}
#else
constexpr int kScoreRows = 1;  // (8 chains of two 8-lane halves: the 16 registers)
template <int R, typename Row>
inline void score_rows(const float* qrow, int W, const Row* const* rows, float scale, float* s, int lds) {
  static_assert(R == 1);
  __m256 lo[kMaxHeads], hi[kMaxHeads];
  for (int g = 0; g < kMaxHeads; ++g) lo[g] = hi[g] = _mm256_setzero_ps();
  for (int d = 0; d < W; d += 16) {
    const __m256 r0 = Lanes::load(rows[0] + d), r1 = Lanes::load(rows[0] + d + 8);
    for (int g = 0; g < kMaxHeads; ++g) {
      const float* qg = qrow + size_t(g) * W + d;
      lo[g] = _mm256_fmadd_ps(_mm256_loadu_ps(qg), r0, lo[g]);
      hi[g] = _mm256_fmadd_ps(_mm256_loadu_ps(qg + 8), r1, hi[g]);
    }
  }
  for (int g = 0; g < kMaxHeads; ++g) s[size_t(g) * lds] = kernels::simd::tree_sum8(_mm256_add_ps(lo[g], hi[g])) * scale;
}
#endif

template <typename Row>
void scores(const float* qrow, int W, const Row* const* rows, int count, float scale, float* s, int lds) {
  int i = 0;
  for (; i + kScoreRows <= count; i += kScoreRows) score_rows<kScoreRows>(qrow, W, rows + i, scale, s + i, lds);
  for (; i < count; ++i) score_rows<1>(qrow, W, rows + i, scale, s + i, lds);
}

// lat[g][e] = Σ_i p[g][i] · row_i[e] for the kMaxHeads heads, B vectors of e at a time: each row's
// vectors loaded once for all heads.
template <int B, typename Row>
inline void latent_block(const float* p, int lds, const Row* const* rows, int count, int e, float* lat, int lora) {
  V acc[kMaxHeads][B];
  for (auto& h : acc)
    for (auto& x : h) x = Lanes::zero();
  for (int i = 0; i < count; ++i) {
    V r[B];
    for (int k = 0; k < B; ++k) r[k] = Lanes::load(rows[i] + e + k * kLanes);
    for (int g = 0; g < kMaxHeads; ++g) {
      const V c = Lanes::set1(p[size_t(g) * lds + i]);
      for (int k = 0; k < B; ++k) acc[g][k] = Lanes::fma(c, r[k], acc[g][k]);
    }
  }
  for (int g = 0; g < kMaxHeads; ++g)
    for (int k = 0; k < B; ++k) Lanes::store(lat + size_t(g) * lora + e + k * kLanes, acc[g][k]);
}

template <typename Row>
void latents(const float* p, int lds, const Row* const* rows, int count, float* lat, int lora) {
  constexpr int kB = kLanes == 16 ? 4 : 2;  // 16 or 8 accumulators
  int e = 0;
  for (; e + kB * kLanes <= lora; e += kB * kLanes) latent_block<kB>(p, lds, rows, count, e, lat, lora);
  for (; e < lora; e += kLanes) latent_block<1>(p, lds, rows, count, e, lat, lora);
}

template <typename Row, typename Kvb>
void simd_heads(const AbsorbedHeads& a, const Row* const* rows, const Kvb* kvb, Numerics mode) {
  const int W = a.lora + a.rope, qk = a.nope + a.rope;
  const int lds = a.rows;
  for (int h0 = 0; h0 < a.heads; h0 += kMaxHeads) {
    const int G = std::min(kMaxHeads, a.heads - h0);
    // (Heads past G have zero queries and probabilities: computed, never read.)
    auto& qrow = scratch<struct AbsorbedQueryRows>(size_t(kMaxHeads) * W);
    auto& s = scratch<struct AbsorbedScores>(size_t(kMaxHeads) * lds);
    auto& lat = scratch<struct AbsorbedLatents>(size_t(kMaxHeads) * a.lora);
    if (G < kMaxHeads) std::fill(qrow.begin(), qrow.end(), 0.0f);
    for (int g = 0; g < G; ++g) {
      const float* q = a.q + size_t(h0 + g) * qk;
      const Kvb* U = kvb + size_t(h0 + g) * (a.nope + a.v) * a.lora;
      float* qr = &qrow[size_t(g) * W];
      axpy_rows<Kvb>(a.nope, q, [&](int j) { return U + size_t(j) * a.lora; }, a.lora, qr);
      round_activations({qr, size_t(a.lora)}, mode);
      std::copy_n(q + a.nope, a.rope, qr + a.lora);
    }
    scores(qrow.data(), W, rows, a.rows, a.scale, s.data(), lds);
    for (int g = 0; g < G; ++g) softmax_probabilities({&s[size_t(g) * lds], size_t(a.rows)}, mode);
    if (G < kMaxHeads) std::fill(s.begin() + size_t(G) * lds, s.end(), 0.0f);
    latents(s.data(), lds, rows, a.rows, lat.data(), a.lora);
    for (int g = 0; g < G; ++g) {
      float* lg = &lat[size_t(g) * a.lora];
      round_activations({lg, size_t(a.lora)}, mode);
      const Kvb* VT = kvb + size_t(h0 + g) * (a.nope + a.v) * a.lora + size_t(a.nope) * a.lora;
      float* o = a.o + size_t(h0 + g) * a.v;
      axpy_rows<Kvb>(a.lora, lg, [&](int c) { return VT + size_t(c) * a.v; }, a.v, o);
      round_activations({o, size_t(a.v)}, mode);
    }
  }
}
#endif

template <typename Row, typename Kvb>
void run_heads(const AbsorbedHeads& a, const Row* const* rows, const Kvb* kvb, Numerics mode, bool reference) {
#ifdef EPS_ABSORBED_SIMD
  // (Widths that are not whole vectors take the twin: the same results, more slowly.)
  const bool whole = a.lora % 16 == 0 && a.rope % 16 == 0 && a.v % kLanes == 0;
  if (!reference && whole) return simd_heads(a, rows, kvb, mode);
#endif
  (void)reference;
  reference_heads(a, rows, kvb, mode);
}

void dispatch(const AbsorbedHeads& a, Numerics mode, bool reference) {
  EPS_REQUIRE((a.kvb_f32 != nullptr) != (a.kvb_bf16 != nullptr), "absorbed attention: give kv_b in FP32 or BF16");
  EPS_REQUIRE((a.rows_f32 != nullptr) != (a.rows_bf16 != nullptr) || a.rows == 0,
              "absorbed attention: give the cache rows in FP32 or BF16");
  if (a.rows_f32 || a.rows == 0) {
    if (a.kvb_f32) run_heads(a, a.rows_f32, a.kvb_f32, mode, reference);
    else run_heads(a, a.rows_f32, a.kvb_bf16, mode, reference);
  } else {
    if (a.kvb_f32) run_heads(a, a.rows_bf16, a.kvb_f32, mode, reference);
    else run_heads(a, a.rows_bf16, a.kvb_bf16, mode, reference);
  }
}

}  // namespace

void attend_absorbed_heads(const AbsorbedHeads& a, Numerics mode) { dispatch(a, mode, false); }
void attend_absorbed_heads_reference(const AbsorbedHeads& a, Numerics mode) { dispatch(a, mode, true); }

}  // namespace epserve::model
