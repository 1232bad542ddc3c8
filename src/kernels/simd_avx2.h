// Small named SIMD building blocks for the matmul kernels on AVX2 + FMA + F16C machines without
// AVX-512 (AMD Zen 2/3, Intel Haswell to Alder Lake): 8-float vectors, no masks, 16 registers.
// The same ideas as simd.h (AVX-512), at half the width.
//
// FP8 E4M3 → float as in simd.h: the code placed in FP16 format, fp16 bits = (sign << 15) |
// ((code & 0x7f) << 7), is exactly value · 2^-8, normals and subnormals alike; vcvtph2ps then gives
// the float. Callers fold the 2^8 into the block scale (exact).
#pragma once
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__) && !(defined(__AVX512F__) && defined(__AVX512BW__))
#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace epserve::kernels::simd {

// 2^8: what the widenings leave out of each value.
constexpr float kFp8WidenScale = 256.0f;

// 16 E4M3 codes → 16 floats (lo: codes 0..7, hi: 8..15), each value · 2^-8 (vpmovsxbw puts the sign
// in bit 15, vpsllw 7 moves its copy out of bit 14, the mask keeps sign, exponent and mantissa).
inline void widen_fp8x16(__m128i codes, __m256& lo, __m256& hi) {
  const __m256i words = _mm256_cvtepi8_epi16(codes);
  const __m256i half = _mm256_and_si256(_mm256_slli_epi16(words, 7), _mm256_set1_epi16(int16_t(0xBF80)));
  lo = _mm256_cvtph_ps(_mm256_castsi256_si128(half));
  hi = _mm256_cvtph_ps(_mm256_extracti128_si256(half, 1));
}

// Loads of n ≤ 16 bytes (or ≤ 8 floats), zero-filled beyond n; full loads when n covers them.
// AVX2 has no byte masks: a short tail goes through a zeroed copy (tails are rare: one per row).
inline __m128i load_codes16(const uint8_t* p, int n) {
  if (n >= 16) return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  alignas(16) uint8_t tail[16] = {};
  if (n > 0) std::memcpy(tail, p, size_t(n));
  return _mm_load_si128(reinterpret_cast<const __m128i*>(tail));
}
inline __m256i first_lanes8(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
// (A masked load of no lanes touches no memory: p may point past the end when n ≤ 0.)
inline __m256 load_floats8(const float* p, int n) {
  return n >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, first_lanes8(n));
}
inline void store_floats8(float* p, __m256 v, int n) {
  if (n >= 8) _mm256_storeu_ps(p, v);
  else _mm256_maskstore_ps(p, first_lanes8(n), v);
}

// 8 BF16 values → 8 floats (exact).
inline __m256 widen_bf16x8(const uint16_t* p, int n = 8) {
  __m128i v;
  if (n >= 8) {
    v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  } else {
    alignas(16) uint16_t tail[8] = {};
    if (n > 0) std::memcpy(tail, p, sizeof(uint16_t) * size_t(n));
    v = _mm_load_si128(reinterpret_cast<const __m128i*>(tail));
  }
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}

// Round 8 floats to the nearest BF16 value (ties to even; NaN stays NaN), as round_to_bf16 does.
inline __m256 round_to_bf16x8(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb);
  r = _mm256_and_si256(r, _mm256_set1_epi32(int32_t(0xffff0000u)));
  const __m256i quiet = _mm256_and_si256(_mm256_or_si256(u, _mm256_set1_epi32(0x00400000)),
                                         _mm256_set1_epi32(int32_t(0xffff0000u)));
  const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
  return _mm256_blendv_ps(_mm256_castsi256_ps(r), _mm256_castsi256_ps(quiet), nan);
}

// 8 floats → 8 E4M3 codes (in the low byte of each 32-bit lane), round to nearest even,
// saturating to ±448, NaN → 0x7f: bit for bit float_to_fp8_e4m3 (base/fp8.cpp); the same steps
// as simd.h's encode_fp8x16.
inline __m256i encode_fp8x8(__m256 f) {
  const __m256i u = _mm256_castps_si256(f);
  const __m256i sign = _mm256_and_si256(_mm256_srli_epi32(u, 24), _mm256_set1_epi32(0x80));
  const __m256i au = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
  const __m256 a = _mm256_castsi256_ps(au);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(au, 20), _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_add_epi32(_mm256_add_epi32(au, _mm256_set1_epi32(0x7ffff)), odd);
  const __m256i normal = _mm256_sub_epi32(_mm256_srli_epi32(rounded, 20), _mm256_set1_epi32(120 << 3));
  const __m256i sub = _mm256_cvtps_epi32(_mm256_mul_ps(a, _mm256_set1_ps(512.0f)));
  const __m256 is_sub = _mm256_cmp_ps(a, _mm256_set1_ps(1.0f / 64), _CMP_LT_OQ);
  __m256 code = _mm256_blendv_ps(_mm256_castsi256_ps(normal), _mm256_castsi256_ps(sub), is_sub);
  const __m256 big = _mm256_cmp_ps(a, _mm256_set1_ps(448.0f), _CMP_GE_OQ);  // incl. infinity
  code = _mm256_blendv_ps(code, _mm256_castsi256_ps(_mm256_set1_epi32(0x7e)), big);
  code = _mm256_or_ps(code, _mm256_castsi256_ps(sign));
  const __m256 nan = _mm256_cmp_ps(f, f, _CMP_UNORD_Q);
  return _mm256_castps_si256(_mm256_blendv_ps(code, _mm256_castsi256_ps(_mm256_set1_epi32(0x7f)), nan));
}

// The 8 codes of encode_fp8x8 packed into 8 bytes.
inline uint64_t pack_codes8(__m256i code) {
  const __m256i bytes = _mm256_shuffle_epi8(code, _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                                                   0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1));
  const uint32_t lo = uint32_t(_mm256_extract_epi32(bytes, 0)), hi = uint32_t(_mm256_extract_epi32(bytes, 4));
  return uint64_t(lo) | (uint64_t(hi) << 32);
}

// The sum of 8 lanes by the halving tree: i + (i+4), then i + (i+2), then i + (i+1). The matmul
// kernels' batch-invariant order (matmul.cpp) is defined by this tree.
inline float tree_sum8(__m256 v) {
  __m128 t = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  t = _mm_add_ps(t, _mm_movehl_ps(t, t));
  t = _mm_add_ss(t, _mm_movehdup_ps(t));
  return _mm_cvtss_f32(t);
}

// The largest lane.
inline float reduce_max8(__m256 v) {
  __m128 t = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  t = _mm_max_ps(t, _mm_movehl_ps(t, t));
  t = _mm_max_ss(t, _mm_movehdup_ps(t));
  return _mm_cvtss_f32(t);
}

// Rows r[0..7] of 8 floats → columns: afterwards r[c] holds element c of each row.
inline void transpose8x8_ps(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {
    u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int j = 0; j < 4; ++j) {
    r[j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x20);
    r[4 + j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x31);
  }
}

}  // namespace epserve::kernels::simd
#endif
