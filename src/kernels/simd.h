// Small named SIMD building blocks for the matmul kernels, so that the kernels read as matmuls.
// Only compiled for targets with AVX-512F/BW (the kernels keep scalar paths otherwise).
//
// FP8 E4M3 → float: the code is placed in FP16 format, fp16 bits = (sign << 15) | ((code & 0x7f) << 7),
// which is exactly value · 2^-8 for normals and subnormals alike (E4M3 has 3 mantissa bits and an
// exponent bias of 7; FP16 has 10 and 15: same subnormal threshold after the shift). vcvtph2ps then
// gives the float. Callers fold the 2^8 (or 2^16 for a product of two such values) into the block
// scale, which is exact: scaling by a power of two commutes with rounding while nothing over- or
// underflows (the smallest product of two scaled codes is 2^-34, far above FP32's normal range).
#pragma once
#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>

#include <cstdint>

// GCC 12 reports the "undefined" pass-through operand inside its own masked-load and convert
// intrinsics as uninitialized at every inlining site (a known false positive); the diagnostics
// are meaningless for code built on these helpers.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace epserve::kernels::simd {

// 2^8: what widen_fp8 leaves out of each value.
constexpr float kFp8WidenScale = 256.0f;

// 16 E4M3 codes → 16 floats, each value · 2^-8 (vpmovsxbw, vpsllw 7, vpand 0xBF80, vcvtph2ps: the
// sign extension puts the sign in bit 15, the shift moves the sign copy out of bit 14).
inline __m512 widen_fp8x16(__m128i codes) {
  const __m256i words = _mm256_cvtepi8_epi16(codes);
  const __m256i half = _mm256_and_si256(_mm256_slli_epi16(words, 7), _mm256_set1_epi16(int16_t(0xBF80)));
  return _mm512_cvtph_ps(half);
}

inline __m512 widen_fp8x16(const uint8_t* p) { return widen_fp8x16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }

// 64 E4M3 codes → 64 BF16 values (widen_fp8x64_bf16), for the FP8 weight tiles.
// With AVX512-VBMI: a 128-entry table of the BF16 bytes of each magnitude (two vpermt2b), the sign
// OR-ed in, then bytes interleaved into BF16 words: exact values, about half the instructions of
// four FP16 widenings (measured 1.6× the throughput on Zen 5). The unpacks work within 128-bit
// lanes, so the values come out permuted; the tiles are packed so that each lands where it belongs
// (pack_fp8_tiles probes the order). Without VBMI: FP16 widenings, values · 2^-8.
struct Fp8Lut {
  __m512i hi0, hi1, lo0, lo1;  // high and low BF16 bytes of magnitudes 0..63 and 64..127
};
inline Fp8Lut load_fp8_lut(const uint8_t* hi128, const uint8_t* lo128) {
  return Fp8Lut{_mm512_loadu_si512(hi128), _mm512_loadu_si512(hi128 + 64), _mm512_loadu_si512(lo128),
                _mm512_loadu_si512(lo128 + 64)};
}
#if defined(__AVX512VBMI__)
constexpr float kWiden64Scale = 1.0f;  // what widen_fp8x64_bf16 leaves out of each value
inline void widen_fp8x64_bf16(const Fp8Lut& t, __m512i codes, __m512i& w0, __m512i& w1) {
  __m512i hi = _mm512_permutex2var_epi8(t.hi0, codes, t.hi1);
  const __m512i lo = _mm512_permutex2var_epi8(t.lo0, codes, t.lo1);
  hi = _mm512_ternarylogic_epi32(hi, codes, _mm512_set1_epi8(char(0x80)), 0xF8);
  w0 = _mm512_unpacklo_epi8(lo, hi);
  w1 = _mm512_unpackhi_epi8(lo, hi);
}
#else
constexpr float kWiden64Scale = kFp8WidenScale;
#if defined(__AVX512BF16__)
// The same to 64 BF16 values (w0: codes 0..31, w1: 32..63, in order), values · 2^-8 (exact: FP8
// values fit BF16).
inline void widen_fp8x64_bf16(const Fp8Lut&, __m512i codes, __m512i& w0, __m512i& w1) {
  w0 = (__m512i)_mm512_cvtne2ps_pbh(widen_fp8x16(_mm512_extracti32x4_epi32(codes, 1)),
                                    widen_fp8x16(_mm512_extracti32x4_epi32(codes, 0)));
  w1 = (__m512i)_mm512_cvtne2ps_pbh(widen_fp8x16(_mm512_extracti32x4_epi32(codes, 3)),
                                    widen_fp8x16(_mm512_extracti32x4_epi32(codes, 2)));
}
#else
// Neither VBMI nor BF16 (Skylake/Cascade Lake): the FP32 widenings' high halves (exact: FP8 values
// fit BF16), packed within 128-bit lanes, so permuted (the FP8 tiles' packing probes the order,
// fp8_tile_source in matmul.cpp).
inline void widen_fp8x64_bf16(const Fp8Lut&, __m512i codes, __m512i& w0, __m512i& w1) {
  auto high = [&](int i) {
    return _mm512_srli_epi32(_mm512_castps_si512(widen_fp8x16(_mm512_extracti32x4_epi32(codes, i))), 16);
  };
  w0 = _mm512_packus_epi32(high(0), high(1));
  w1 = _mm512_packus_epi32(high(2), high(3));
}
#endif
#endif
// e^x for x ≤ 0 (Cephes' expf: x = n·ln2 + r, |r| ≤ ln2/2, a degree-7 polynomial in r, 2^n by
// vscalefps); about 1 ulp, and the same value whichever lane or call computes it.
inline __m512 exp_nonpositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

// sigmoid(z) = 1 / (1 + e^-z) for 16 floats, through e^-|z| (never overflows; past |z| = 87, the
// end of exp_nonpositive's range, as (e^(-|z|/2))²), e / (1 + e) for negative z.
inline __m512 sigmoid16(__m512 z) {
  const __m512 a = _mm512_abs_ps(z);
  __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_setzero_ps(), a));
  if (const __mmask16 far = _mm512_cmp_ps_mask(a, _mm512_set1_ps(87.0f), _CMP_GT_OQ)) {
    const __m512 half = exp_nonpositive(_mm512_mul_ps(a, _mm512_set1_ps(-0.5f)));
    e = _mm512_mask_mul_ps(e, far, half, half);
  }
  const __m512 inv = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_add_ps(_mm512_set1_ps(1.0f), e));
  const __mmask16 negative = _mm512_cmp_ps_mask(z, _mm512_setzero_ps(), _CMP_LT_OQ);
  return _mm512_mask_mul_ps(inv, negative, inv, e);
}

// silu(z) = z · sigmoid(z): within 4 ulp of double where the result is normal.
inline __m512 silu16(__m512 z) { return _mm512_mul_ps(z, sigmoid16(z)); }

// The halving tree of a horizontal sum (i + (i+8), then i + (i+4), i + (i+2), i + (i+1)) for four
// vectors at once; the sums come out in lanes 0, 4, 8, 12. The batch-invariant order of the
// decode kernels (matmul.cpp) and of the absorbed attention's scores.
inline __m512 tree_sum4(__m512 v0, __m512 v1, __m512 v2, __m512 v3) {
  const __m512 s01 = _mm512_add_ps(_mm512_shuffle_f32x4(v0, v1, 0x44), _mm512_shuffle_f32x4(v0, v1, 0xEE));
  const __m512 s23 = _mm512_add_ps(_mm512_shuffle_f32x4(v2, v3, 0x44), _mm512_shuffle_f32x4(v2, v3, 0xEE));
  __m512 t = _mm512_add_ps(_mm512_shuffle_f32x4(s01, s23, 0x88), _mm512_shuffle_f32x4(s01, s23, 0xDD));
  t = _mm512_add_ps(t, _mm512_permute_ps(t, 0x4E));
  return _mm512_add_ps(t, _mm512_permute_ps(t, 0xB1));
}

// Rows r[0..15] of 16 32-bit elements → columns: afterwards r[c] holds element c of each row.
inline void transpose16x16_epi32(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  // u[4i + j], 128-bit lane L: column 4L + j of rows 4i..4i+3.
  __m512i u[16];
  for (int i = 0; i < 4; ++i) {
    u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int j = 0; j < 4; ++j) {
    const __m512i a_even = _mm512_shuffle_i32x4(u[j], u[4 + j], 0x88), a_odd = _mm512_shuffle_i32x4(u[j], u[4 + j], 0xDD);
    const __m512i b_even = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0x88), b_odd = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0xDD);
    r[j] = _mm512_shuffle_i32x4(a_even, b_even, 0x88);
    r[8 + j] = _mm512_shuffle_i32x4(a_even, b_even, 0xDD);
    r[4 + j] = _mm512_shuffle_i32x4(a_odd, b_odd, 0x88);
    r[12 + j] = _mm512_shuffle_i32x4(a_odd, b_odd, 0xDD);
  }
}

// Loads of n ≤ 16 bytes/floats, zero-filled beyond n.
inline __mmask16 first_lanes16(int n) {
  return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1);
}
// (Masked loads of no lanes touch no memory: p may point past the end when n ≤ 0.)
inline __m128i load_codes16(const uint8_t* p, int n) {
  return n >= 16 ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)) : _mm_maskz_loadu_epi8(first_lanes16(n), p);
}
inline __m512 load_floats16(const float* p, int n) {
  return n >= 16 ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(first_lanes16(n), p);
}

// 16 BF16 values → 16 floats (exact).
inline __m512 widen_bf16x16(const uint16_t* p, int n = 16) {
  const __m256i v = n >= 16 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
                            : _mm256_maskz_loadu_epi16(first_lanes16(n), p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}

// Round 16 floats to the nearest BF16 value (ties to even; NaN stays NaN), as round_to_bf16 does.
inline __m512 round_to_bf16x16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb);
  r = _mm512_and_si512(r, _mm512_set1_epi32(int32_t(0xffff0000u)));
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  const __m512i quiet = _mm512_and_si512(_mm512_or_si512(u, _mm512_set1_epi32(0x00400000)),
                                         _mm512_set1_epi32(int32_t(0xffff0000u)));
  return _mm512_castsi512_ps(_mm512_mask_mov_epi32(r, nan, quiet));
}

// 16 floats → 16 E4M3 codes (in the low byte of each 32-bit lane), round to nearest even,
// saturating to ±448, NaN → 0x7f: bit for bit float_to_fp8_e4m3 (base/fp8.cpp).
inline __m512i encode_fp8x16(__m512 f) {
  const __m512i u = _mm512_castps_si512(f);
  const __m512i sign = _mm512_and_si512(_mm512_srli_epi32(u, 24), _mm512_set1_epi32(0x80));
  const __m512i au = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
  const __m512 a = _mm512_castsi512_ps(au);
  // Normal range (a ≥ 2^-6): round the FP32 mantissa to 3 bits (ties to even) with an integer add;
  // a carry moves into the exponent as it should. Then rebias the exponent from 127 to 7.
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(au, 20), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_add_epi32(_mm512_add_epi32(au, _mm512_set1_epi32(0x7ffff)), odd);
  const __m512i normal = _mm512_sub_epi32(_mm512_srli_epi32(rounded, 20), _mm512_set1_epi32(120 << 3));
  // Below 2^-6 the grid is 2^-9 apart: nearest integer of a·2^9 (exact product; cvtps2dq rounds to
  // nearest even), which also yields code 8 (= 2^-6) when a rounds up to the smallest normal.
  const __m512i sub = _mm512_cvtps_epi32(_mm512_mul_ps(a, _mm512_set1_ps(512.0f)));
  const __mmask16 is_sub = _mm512_cmp_ps_mask(a, _mm512_set1_ps(1.0f / 64), _CMP_LT_OQ);
  __m512i code = _mm512_mask_mov_epi32(normal, is_sub, sub);
  const __mmask16 big = _mm512_cmp_ps_mask(a, _mm512_set1_ps(448.0f), _CMP_GE_OQ);  // incl. infinity
  code = _mm512_mask_mov_epi32(code, big, _mm512_set1_epi32(0x7e));
  code = _mm512_or_si512(code, sign);
  const __mmask16 nan = _mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q);
  return _mm512_mask_mov_epi32(code, nan, _mm512_set1_epi32(0x7f));
}

inline float reduce_add(__m512 v) { return _mm512_reduce_add_ps(v); }

}  // namespace epserve::kernels::simd
#endif
