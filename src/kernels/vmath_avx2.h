// Vector math for 8 floats on AVX2 + FMA machines without AVX-512 (AMD Zen 2/3, Intel Haswell to
// Alder Lake): the softmax's exp and the MoE's sigmoid and SiLU, the same algorithms and constants
// as simd.h's 16-wide ones, so that a value is the same whichever of the two computed it (std::exp
// one by one is far slower, and its results differ from these).
//
// Compiled wherever AVX2 and FMA are (AVX-512 targets included, so that tests there can hold the
// two widths against each other); the 8-wide loading helpers live in simd_avx2.h.
#pragma once
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

namespace epserve::kernels::simd {

// e^x for x ≤ 0, as simd.h's exp_nonpositive (Cephes' expf: x = n·ln2 + r, |r| ≤ ln2/2, a degree-7
// polynomial in r). AVX2 has no vscalefps: 2^n is built as a float by adding n << 23 to the bits of
// 1.0, which is a normal number for every n the clamp at -87.3 allows (n ≥ -126), and the product
// p · 2^n then rounds exactly as vscalefps does (one rounding of the exact product, subnormal
// results included). About 1 ulp, bit for bit the 16-wide function.
inline __m256 exp_nonpositive8(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));  // (a NaN becomes -87.3 there too: maxps returns the second operand)
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i pow2n = _mm256_add_epi32(_mm256_slli_epi32(_mm256_cvtps_epi32(n), 23), _mm256_set1_epi32(0x3f800000));
  return _mm256_mul_ps(p, _mm256_castsi256_ps(pow2n));
}

// sigmoid(z) = 1 / (1 + e^-z) for 8 floats, as simd.h's sigmoid16: through e^-|z| (never
// overflows; past |z| = 87, the end of exp_nonpositive8's range, as (e^(-|z|/2))²), e / (1 + e)
// for negative z. Blends stand in for the masked operations AVX2 lacks.
inline __m256 sigmoid8(__m256 z) {
  const __m256 a = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), z);
  __m256 e = exp_nonpositive8(_mm256_sub_ps(_mm256_setzero_ps(), a));
  const __m256 far = _mm256_cmp_ps(a, _mm256_set1_ps(87.0f), _CMP_GT_OQ);
  if (_mm256_movemask_ps(far)) {
    const __m256 half = exp_nonpositive8(_mm256_mul_ps(a, _mm256_set1_ps(-0.5f)));
    e = _mm256_blendv_ps(e, _mm256_mul_ps(half, half), far);
  }
  const __m256 inv = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_add_ps(_mm256_set1_ps(1.0f), e));
  const __m256 negative = _mm256_cmp_ps(z, _mm256_setzero_ps(), _CMP_LT_OQ);
  return _mm256_blendv_ps(inv, _mm256_mul_ps(inv, e), negative);
}

// silu(z) = z · sigmoid(z): within 4 ulp of double where the result is normal.
inline __m256 silu8(__m256 z) { return _mm256_mul_ps(z, sigmoid8(z)); }

}  // namespace epserve::kernels::simd
#endif
