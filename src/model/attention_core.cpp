#include "model/attention_core.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/simd.h"  // immintrin.h, and the pragmas for GCC 12's false uninitialized warnings
#include "kernels/simd_avx2.h"
#include "kernels/vmath_avx2.h"
#include "model/ops.h"

namespace epserve::model {

#if defined(__AVX512F__) && defined(__AVX512BW__)

void softmax_probabilities(std::span<float> s, kernels::Numerics mode) {
  const int n = int(s.size());
  float* x = s.data();
  auto mask = [n](int j) { return j + 16 <= n ? __mmask16(0xFFFF) : __mmask16((1u << (n - j)) - 1); };
  __m512 mx = _mm512_set1_ps(-INFINITY);
  for (int j = 0; j < n; j += 16) mx = _mm512_mask_max_ps(mx, mask(j), mx, _mm512_maskz_loadu_ps(mask(j), x + j));
  const __m512 top = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
  __m512 sum = _mm512_setzero_ps();
  for (int j = 0; j < n; j += 16) {
    const __m512 e = kernels::simd::exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask(j), x + j), top));
    _mm512_mask_storeu_ps(x + j, mask(j), e);
    sum = _mm512_mask_add_ps(sum, mask(j), sum, e);
  }
  const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
  for (int j = 0; j < n; j += 16)
    _mm512_mask_storeu_ps(x + j, mask(j), _mm512_mul_ps(_mm512_maskz_loadu_ps(mask(j), x + j), inv));
  round_activations(s, mode);
}
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)  // (simd_avx2.h)
// The AVX-512 steps at 8 lanes; AVX2 has no masked max or add, so the one partial vector is padded
// with -inf for the maximum and its exps past the end are zeroed before the sum (where they are
// garbage: the zero-filled lanes give e^(0 - max), outside exp_nonpositive8's domain when max < 0).
void softmax_probabilities(std::span<float> s, kernels::Numerics mode) {
  namespace simd = kernels::simd;
  const int n = int(s.size());
  float* x = s.data();
  const int whole = n / 8 * 8;
  __m256 mx = _mm256_set1_ps(-INFINITY);
  for (int j = 0; j < whole; j += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(x + j));
  const __m256 tail = _mm256_castsi256_ps(simd::first_lanes8(n - whole));
  if (whole < n) mx = _mm256_max_ps(mx, _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), simd::load_floats8(x + whole, n - whole), tail));
  const __m256 top = _mm256_set1_ps(simd::reduce_max8(mx));
  __m256 sum = _mm256_setzero_ps();
  for (int j = 0; j < whole; j += 8) {
    const __m256 e = simd::exp_nonpositive8(_mm256_sub_ps(_mm256_loadu_ps(x + j), top));
    _mm256_storeu_ps(x + j, e);
    sum = _mm256_add_ps(sum, e);
  }
  if (whole < n) {
    const __m256 e = _mm256_and_ps(simd::exp_nonpositive8(_mm256_sub_ps(simd::load_floats8(x + whole, n - whole), top)), tail);
    simd::store_floats8(x + whole, e, n - whole);
    sum = _mm256_add_ps(sum, e);
  }
  const __m256 inv = _mm256_set1_ps(1.0f / simd::tree_sum8(sum));
  for (int j = 0; j < whole; j += 8) _mm256_storeu_ps(x + j, _mm256_mul_ps(_mm256_loadu_ps(x + j), inv));
  if (whole < n) simd::store_floats8(x + whole, _mm256_mul_ps(simd::load_floats8(x + whole, n - whole), inv), n - whole);
  round_activations(s, mode);
}
#else
void softmax_probabilities(std::span<float> s, kernels::Numerics mode) {
  float mx = -INFINITY;
  for (float v : s) mx = std::max(mx, v);
  float sum = 0;
  for (float& v : s) sum += (v = std::exp(v - mx));
  const float inv = 1.0f / sum;
  for (float& v : s) v *= inv;
  round_activations(s, mode);
}
#endif

void attend_head_reference(const HeadAttention& a, kernels::Numerics mode) {
  std::vector<float> s;
  for (int i = 0; i < a.count; ++i) {
    const int visible = a.base + i + 1;
    const float* q = a.q + size_t(i) * a.dq;
    s.assign(size_t(visible), 0.0f);
    for (int j = 0; j < visible; ++j) {
      float acc = 0;
      for (int d = 0; d < a.dq; ++d) acc = std::fma(q[d], a.kt[size_t(d) * a.ldk + j], acc);
      s[size_t(j)] = acc * a.scale;
    }
    softmax_probabilities(s, mode);
    float* o = a.o + size_t(i) * a.dv;
    std::fill_n(o, a.dv, 0.0f);
    for (int j = 0; j < visible; ++j)
      for (int e = 0; e < a.dv; ++e) o[e] = std::fma(s[size_t(j)], a.v[size_t(j) * a.dv + e], o[e]);
  }
}

#if defined(__AVX512F__) && defined(__AVX512BW__)
namespace {

constexpr int kScoreRows = 8;  // queries per score tile (8 accumulators of 16 keys)
constexpr int kPvRows = 4;     // queries per P·V tile (4 rows × dv/16 accumulators)
constexpr int kLanes = 16;     // floats per vector

// Scores of queries [i0, i0 + rows) against keys [0, keys) in 32-key tiles (two vectors: 16
// multiply-adds per 10 loads); the lanes past a row's visible keys are computed (zero-padded keys)
// and then ignored.
// Rows is a compile-time constant so that the accumulators stay in registers.
template <int rows>
void score_tile(const HeadAttention& a, int i0, int keys, float* s, int lds) {
  const float* q = a.q + size_t(i0) * a.dq;
  const __m512 scale = _mm512_set1_ps(a.scale);
  for (int j = 0; j < keys; j += 32) {
    __m512 lo[rows], hi[rows];
    for (int r = 0; r < rows; ++r) lo[r] = hi[r] = _mm512_setzero_ps();
    for (int d = 0; d < a.dq; ++d) {
      const float* k = a.kt + size_t(d) * a.ldk + j;
      const __m512 k0 = _mm512_loadu_ps(k), k1 = _mm512_loadu_ps(k + 16);
      for (int r = 0; r < rows; ++r) {
        const __m512 qd = _mm512_set1_ps(q[size_t(r) * a.dq + d]);
        lo[r] = _mm512_fmadd_ps(qd, k0, lo[r]);
        hi[r] = _mm512_fmadd_ps(qd, k1, hi[r]);
      }
    }
    for (int r = 0; r < rows; ++r) {
      _mm512_storeu_ps(s + size_t(r) * lds + j, _mm512_mul_ps(lo[r], scale));
      _mm512_storeu_ps(s + size_t(r) * lds + j + 16, _mm512_mul_ps(hi[r], scale));
    }
  }
}

// o rows [i0, i0 + rows) = Σ_j p_ij v_j, j ascending; keys every row sees go through all rows at
// once, then each row's own tail alone (never a 0 · v term, which could flip the sign of a zero).
template <int rows, int nc>
void pv_tile(const HeadAttention& a, int i0, int c0, const float* p, int lds) {
  __m512 acc[rows][nc];
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < nc; ++c) acc[r][c] = _mm512_setzero_ps();
  const float* v = a.v + 16 * c0;
  const int common = a.base + i0 + 1;  // keys row i0 (the first) sees: all rows see them
  for (int j = 0; j < common; ++j) {
    __m512 vj[nc];
    for (int c = 0; c < nc; ++c) vj[c] = _mm512_loadu_ps(v + size_t(j) * a.dv + 16 * c);
    for (int r = 0; r < rows; ++r) {
      const __m512 pr = _mm512_set1_ps(p[size_t(r) * lds + j]);
      for (int c = 0; c < nc; ++c) acc[r][c] = _mm512_fmadd_ps(pr, vj[c], acc[r][c]);
    }
  }
  for (int r = 1; r < rows; ++r)
    for (int j = common; j < a.base + i0 + r + 1; ++j) {
      const __m512 pr = _mm512_set1_ps(p[size_t(r) * lds + j]);
      for (int c = 0; c < nc; ++c) acc[r][c] = _mm512_fmadd_ps(pr, _mm512_loadu_ps(v + size_t(j) * a.dv + 16 * c), acc[r][c]);
    }
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < nc; ++c) _mm512_storeu_ps(a.o + size_t(i0 + r) * a.dv + 16 * (c0 + c), acc[r][c]);
}

// 4 vectors (64 values) of each row at a time, then the 1..3 left; compile-time counts keep the
// accumulators in registers.
template <int rows>
void pv_tile(const HeadAttention& a, int i0, const float* p, int lds) {
  const int vecs = a.dv / 16;
  int c0 = 0;
  for (; c0 + 4 <= vecs; c0 += 4) pv_tile<rows, 4>(a, i0, c0, p, lds);
  switch (vecs - c0) {
    case 3: pv_tile<rows, 3>(a, i0, c0, p, lds); break;
    case 2: pv_tile<rows, 2>(a, i0, c0, p, lds); break;
    case 1: pv_tile<rows, 1>(a, i0, c0, p, lds); break;
    default: break;
  }
}

}  // namespace
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)  // (simd_avx2.h)
namespace {

// 16 ymm registers: a tile of 6 queries × 16 keys (or values) holds 12 accumulators, the 2 vectors
// of keys (values) every query multiplies, and the broadcast of one query element (probability).
// 12 FMAs per 8 loads, which the two FMA pipes (not the loads) bound. (6 × 16 rather than the
// AVX-512 8 × 32 or 4 × 64: one more vector per row would need 17 registers, and spills.)
constexpr int kScoreRows = 6;  // queries per score tile (6 × 2 accumulators of 8 keys)
constexpr int kPvRows = 6;     // queries per P·V tile (6 × 2 accumulators of 8 values)
constexpr int kLanes = 8;      // floats per vector

// Scores of queries [i0, i0 + rows) against keys [0, keys) in 16-key tiles; the lanes past a row's
// visible keys are computed (zero-padded keys) and then ignored.
// Rows is a compile-time constant so that the accumulators stay in registers.
template <int rows>
void score_tile(const HeadAttention& a, int i0, int keys, float* s, int lds) {
  const float* q = a.q + size_t(i0) * a.dq;
  const __m256 scale = _mm256_set1_ps(a.scale);
  for (int j = 0; j < keys; j += 16) {
    __m256 lo[rows], hi[rows];
    for (int r = 0; r < rows; ++r) lo[r] = hi[r] = _mm256_setzero_ps();
    for (int d = 0; d < a.dq; ++d) {
      const float* k = a.kt + size_t(d) * a.ldk + j;
      const __m256 k0 = _mm256_loadu_ps(k), k1 = _mm256_loadu_ps(k + 8);
      for (int r = 0; r < rows; ++r) {
        const __m256 qd = _mm256_broadcast_ss(q + size_t(r) * a.dq + d);
        lo[r] = _mm256_fmadd_ps(qd, k0, lo[r]);
        hi[r] = _mm256_fmadd_ps(qd, k1, hi[r]);
      }
    }
    for (int r = 0; r < rows; ++r) {
      _mm256_storeu_ps(s + size_t(r) * lds + j, _mm256_mul_ps(lo[r], scale));
      _mm256_storeu_ps(s + size_t(r) * lds + j + 8, _mm256_mul_ps(hi[r], scale));
    }
  }
}

// o rows [i0, i0 + rows) = Σ_j p_ij v_j, j ascending; keys every row sees go through all rows at
// once, then each row's own tail alone (never a 0 · v term, which could flip the sign of a zero).
template <int rows, int nc>
void pv_tile(const HeadAttention& a, int i0, int c0, const float* p, int lds) {
  __m256 acc[rows][nc];
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < nc; ++c) acc[r][c] = _mm256_setzero_ps();
  const float* v = a.v + 8 * c0;
  const int common = a.base + i0 + 1;  // keys row i0 (the first) sees: all rows see them
  for (int j = 0; j < common; ++j) {
    __m256 vj[nc];
    for (int c = 0; c < nc; ++c) vj[c] = _mm256_loadu_ps(v + size_t(j) * a.dv + 8 * c);
    for (int r = 0; r < rows; ++r) {
      const __m256 pr = _mm256_broadcast_ss(p + size_t(r) * lds + j);
      for (int c = 0; c < nc; ++c) acc[r][c] = _mm256_fmadd_ps(pr, vj[c], acc[r][c]);
    }
  }
  for (int r = 1; r < rows; ++r)
    for (int j = common; j < a.base + i0 + r + 1; ++j) {
      const __m256 pr = _mm256_broadcast_ss(p + size_t(r) * lds + j);
      for (int c = 0; c < nc; ++c) acc[r][c] = _mm256_fmadd_ps(pr, _mm256_loadu_ps(v + size_t(j) * a.dv + 8 * c), acc[r][c]);
    }
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < nc; ++c) _mm256_storeu_ps(a.o + size_t(i0 + r) * a.dv + 8 * (c0 + c), acc[r][c]);
}

// 2 vectors (16 values) of each row at a time, then the 1 left where dv is an odd multiple of 8.
template <int rows>
void pv_tile(const HeadAttention& a, int i0, const float* p, int lds) {
  const int vecs = a.dv / 8;
  int c0 = 0;
  for (; c0 + 2 <= vecs; c0 += 2) pv_tile<rows, 2>(a, i0, c0, p, lds);
  if (c0 < vecs) pv_tile<rows, 1>(a, i0, c0, p, lds);
}

}  // namespace
#endif

#if (defined(__AVX512F__) && defined(__AVX512BW__)) || (defined(__AVX2__) && defined(__FMA__) && defined(__F16C__))
namespace {

// The tiles for 1..kScoreRows (scores) and 1..kPvRows (P·V) rows, whichever vector width.
template <int R>
void score_rows(const HeadAttention& a, int i0, int rows, int keys, float* s, int lds) {
  if constexpr (R > 1)
    if (rows < R) return score_rows<R - 1>(a, i0, rows, keys, s, lds);
  score_tile<R>(a, i0, keys, s, lds);
}
template <int R>
void pv_rows(const HeadAttention& a, int i0, int rows, const float* p, int lds) {
  if constexpr (R > 1)
    if (rows < R) return pv_rows<R - 1>(a, i0, rows, p, lds);
  pv_tile<R>(a, i0, p, lds);
}

}  // namespace

void attend_head(const HeadAttention& a, kernels::Numerics mode) {
  if (a.dv % kLanes != 0 || a.ldk % (2 * kLanes) != 0) return attend_head_reference(a, mode);
  const int lds = a.ldk;
  std::vector<float> s(size_t(kScoreRows) * lds);
  for (int i0 = 0; i0 < a.count; i0 += kScoreRows) {
    const int rows = std::min(kScoreRows, a.count - i0);
    const int keys = a.base + i0 + rows;  // the last row's visible keys
    score_rows<kScoreRows>(a, i0, rows, keys, s.data(), lds);
    for (int r = 0; r < rows; ++r) softmax_probabilities({s.data() + size_t(r) * lds, size_t(a.base + i0 + r + 1)}, mode);
    for (int r0 = 0; r0 < rows; r0 += kPvRows)
      pv_rows<kPvRows>(a, i0 + r0, std::min(kPvRows, rows - r0), s.data() + size_t(r0) * lds, lds);
  }
}
#else
void attend_head(const HeadAttention& a, kernels::Numerics mode) { attend_head_reference(a, mode); }
#endif

}  // namespace epserve::model
