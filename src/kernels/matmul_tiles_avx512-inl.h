// The AVX-512 kernels, which read the weights as tiles (pack_fp8_tiles, pack_bf16_tiles): each
// 128 × 128 block stored as 64 k-pairs × 128 outputs × 2 codes (or BF16 values), so that a vector
// of widened codes (or of loaded values) holds 16 outputs' pairs (k, k+1) and the activations are
// broadcast. Included by matmul.cpp inside its anonymous namespace.
//
// Batch invariance without a lane tree: per output n and 128-block b, one chain from zero over the
// block's pairs in k order (vdpbf16ps of the pair under DeepSeek numerics where bf16_dot_in_use();
// else two FMAs, k then k+1), that block sum times the block's scale added to the output's FP32 sum, block
// after block. The decode kernels (outputs across the lanes, weights streamed) and the prefill
// microkernel (the same, a tile dequantized once for up to 128 activation rows) do exactly that,
// operand for operand, so a row's result depends neither on M nor on the split into items.
//
// Before the tiles, the kernels read the checkpoint's [n][k] rows with k across the lanes, which
// needs a fixed tree over the lanes per output; the prefill microkernel spent a quarter of its
// time keeping that tree's partial sums (docs/PERFORMANCE.md).
#pragma once

#ifndef EPS_KERNELS_AVX512
#error "matmul_tiles_avx512-inl.h is part of matmul.cpp"
#endif

constexpr int kTileN = 128;                            // outputs per tile
constexpr int kTilePairs = kQuantBlock / 2;            // k-pairs per tile
constexpr size_t kTileBytes = size_t(kTileN) * kQuantBlock;  // one byte per code
constexpr int kTileRowBytes = 2 * kTileN;              // one k-pair of the tile's 128 outputs
constexpr int kDecodePrefetchBytes = 4096;             // (0 to 16 KB measured within 10% on Zen 5)

// Byte position, within each 64 codes of a tile, of the code that simd::widen_fp8x64_bf16 puts at
// BF16 position P (its table widening permutes within 128-bit lanes): found once by widening codes
// 0..63, whose values are distinct.
const std::array<uint8_t, 64>& fp8_tile_source() {
  static const std::array<uint8_t, 64> source = [] {
    alignas(64) uint8_t codes[64];
    for (int j = 0; j < 64; ++j) codes[j] = uint8_t(j);
    const auto& t = fp8_tables();
    const simd::Fp8Lut lut = simd::load_fp8_lut(t.lut_hi.data(), t.lut_lo.data());
    __m512i w[2];
    simd::widen_fp8x64_bf16(lut, _mm512_load_si512(codes), w[0], w[1]);
    alignas(64) uint16_t out[64];
    _mm512_store_si512(out, w[0]);
    _mm512_store_si512(out + 32, w[1]);
    std::array<uint8_t, 64> s{};
    for (int P = 0; P < 64; ++P) {
      int found = -1;
      for (int j = 0; j < 64; ++j)
        if (float_to_bf16(fp8_e4m3_table()[j] / simd::kWiden64Scale).bits == out[P]) found = j;
      EPS_REQUIRE(found >= 0, "fp8 tiles: the widening's order could not be probed");
      s[size_t(P)] = uint8_t(found);
    }
    return s;
  }();
  return source;
}

// The 64 codes at p (within a tile) as BF16 pairs of 16 + 16 outputs, in order.
inline void widen_tile64(const simd::Fp8Lut& lut, const uint8_t* p, __m512i& w0, __m512i& w1) {
  simd::widen_fp8x64_bf16(lut, _mm512_loadu_si512(p), w0, w1);
}
// A vector of 16 BF16 pairs → the 16 first (k) and the 16 second (k + 1) values as floats.
inline __m512 pair_first(__m512i v) { return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)); }
inline __m512 pair_second(__m512i v) {
  return _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(int32_t(0xffff0000u))));
}

// What multiplies block b's sum for activation row m and weight rows n0 (within one scale block):
// DeepSeek, (x scale · w scale) rounded as the twin rounds it, times the powers of two the
// widenings left out (2^8 for the activations, kWiden64Scale for the weights; exact); exact
// numerics, the weight's scale.
inline float tile_scale(const Activations& a, const Weight& w, int m, int n0, int b) {
  if (w.bf16_tiles) return 1.0f;  // BF16 weights: no scales, nothing left out
  const float ws = w.scales[size_t(n0 / kQuantBlock) * a.kb + b];
  return a.deepseek ? (a.xscale[size_t(m) * a.kb + b] * ws) * (simd::kFp8WidenScale * simd::kWiden64Scale)
                    : ws * simd::kWiden64Scale;
}

// Activation row m, pair kp of block b: the BF16 pair (kDot) or the two floats.
inline __m512bh x_pair(const Activations& a, int m, int b, int kp) {
  return (__m512bh)_mm512_set1_epi32(int32_t(a.xt[size_t(m) * a.kb * kTilePairs + size_t(b) * kTilePairs + kp]));
}
inline const float* x_floats(const Activations& a, int m, int b) {
  return a.xf + size_t(m) * a.kb * kQuantBlock + size_t(b) * kQuantBlock;
}

// ---------------------------------------------------------------------------------------------
// Decode, block b of one tile row: outputs [n, n + 16·NV) (n a multiple of 32) for all M
// activation rows (kBf16: BF16 tiles, loaded instead of widened); each output's block sum times
// the block's scale added into total ([M][kTileN], the tile row's FP32 sums).
// first_run: the block's first run over a tile row read in several, which fetches whole rows of
// the tile ahead for the runs after it.
template <int M, int NV, bool kDot, bool kBf16>
inline void decode_tile_block(const Activations& a, const Weight& w, const simd::Fp8Lut& lut, int n, int b, float* total,
                              bool first_run) {
  static_assert(NV % 2 == 0);
  const int nb = n / kTileN, c0 = n % kTileN;
  constexpr int kRowBytes = kBf16 ? 2 * kTileRowBytes : kTileRowBytes;  // one k-pair of the tile
  const uint8_t* tile_start = kBf16 ? reinterpret_cast<const uint8_t*>(w.bf16_tiles) + (size_t(nb) * a.kb + b) * 2 * kTileBytes
                                    : w.tiles + (size_t(nb) * a.kb + b) * kTileBytes;
  const uint8_t* tile = tile_start + (kBf16 ? 4 : 2) * c0;
  __m512 acc[M][NV];
#pragma GCC unroll 8
  for (int m = 0; m < M; ++m)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[m][v] = _mm512_setzero_ps();
  const float* xf[M];
  if constexpr (!kDot)
    for (int m = 0; m < M; ++m) xf[m] = x_floats(a, m, b);
#pragma GCC unroll 2  // (measured 1.3× faster than one pair per iteration on Zen 5, BF16 dot)
  for (int kp = 0; kp < kTilePairs; ++kp) {
    if (first_run) {
      const uint8_t* ahead = tile_start + size_t(kp) * kRowBytes + (kBf16 ? 2 : 1) * kDecodePrefetchBytes;
      for (int l = 0; l < kRowBytes / 64; ++l) _mm_prefetch(reinterpret_cast<const char*>(ahead + 64 * l), _MM_HINT_T0);
    }
    __m512i wv[NV];
    if constexpr (kBf16) {
      const uint8_t* row = tile + size_t(kp) * 2 * kTileRowBytes;
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) {
        // (Into L1, not non-temporal even where one run reads whole tile rows and the lm_head's
        // 265 MB pass through once: NTA was 1-3% faster on Zen 5, but on an Intel Xeon with AMX
        // the lm_head streamed at 12 GB/s with NTA and 31-39 GB/s with T0.)
        const char* ahead = reinterpret_cast<const char*>(row + 64 * v + 2 * kDecodePrefetchBytes);
        if (!first_run) _mm_prefetch(ahead, _MM_HINT_T0);
        wv[v] = _mm512_loadu_si512(row + 64 * v);
      }
    } else {
      const uint8_t* row = tile + size_t(kp) * kTileRowBytes;
#pragma GCC unroll 4
      for (int g = 0; g < NV / 2; ++g) {
        if (!first_run) _mm_prefetch(reinterpret_cast<const char*>(row + 64 * g + kDecodePrefetchBytes), _MM_HINT_T0);
        widen_tile64(lut, row + 64 * g, wv[2 * g], wv[2 * g + 1]);
      }
    }
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) {
      if constexpr (kDot) {
#ifdef EPS_KERNELS_BF16DOT
        const __m512bh xp = x_pair(a, m, b, kp);
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[m][v] = _mm512_dpbf16_ps(acc[m][v], xp, (__m512bh)wv[v]);
#endif
      } else {
        const __m512 x0 = _mm512_set1_ps(xf[m][2 * kp]), x1 = _mm512_set1_ps(xf[m][2 * kp + 1]);
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) {
          acc[m][v] = _mm512_fmadd_ps(x0, pair_first(wv[v]), acc[m][v]);
          acc[m][v] = _mm512_fmadd_ps(x1, pair_second(wv[v]), acc[m][v]);
        }
      }
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < M; ++m) {
    const __m512 s = _mm512_set1_ps(tile_scale(a, w, m, n, b));
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      float* t = total + size_t(m) * kTileN + c0 + 16 * v;
      _mm512_store_ps(t, _mm512_fmadd_ps(acc[m][v], s, _mm512_load_ps(t)));
    }
  }
}

// Outputs [n0, n1) of one tile row (n0 a multiple of 32, n1 too or within the padding past N),
// block after block, in column runs as wide as the registers allow: the runs of a block read the
// same tile one after another, so that only the first takes it from memory. (Each run streaming
// every block before the next run started, the BF16 lm_head at 4-8 rows ran 20-40% slower than
// at 1.) The order of the sums does not depend on the runs: per output, block sum after block sum.
template <int M, bool kDot, bool kBf16>
void decode_tile_row(const Activations& a, const Weight& w, const simd::Fp8Lut& lut, int n0, int n1, const Out& y) {
  constexpr int kWide = M <= 2 ? 8 : M <= 4 ? 4 : 2;  // vectors of 16 outputs per run
  alignas(64) float total[M * kTileN];
  const int c0 = n0 % kTileN, c1 = c0 + (n1 - n0);
  for (int m = 0; m < M; ++m) std::fill(total + m * kTileN + c0, total + m * kTileN + c1, 0.0f);
  const bool several = n1 - n0 > 16 * kWide;  // runs per block
  for (int b = 0; b < a.kb; ++b)
    for (int n = n0; n < n1;) {
      const int left = n1 - n;
      const bool first = several && n == n0;
      if (kWide >= 8 && left >= 128) {
        decode_tile_block<M, 8, kDot, kBf16>(a, w, lut, n, b, total, first);
        n += 128;
      } else if (kWide >= 4 && left >= 64) {
        decode_tile_block<M, 4, kDot, kBf16>(a, w, lut, n, b, total, first);
        n += 64;
      } else {
        decode_tile_block<M, 2, kDot, kBf16>(a, w, lut, n, b, total, first);
        n += 32;
      }
    }
  for (int m = 0; m < M; ++m)
    for (int n = n0; n < std::min(n1, w.N); n += 16) {
      const __m512 v = _mm512_load_ps(total + m * kTileN + n % kTileN);
      _mm512_mask_storeu_ps(y.row(m) + n, simd::first_lanes16(w.N - n), a.deepseek ? simd::round_to_bf16x16(v) : v);
    }
}

// Outputs [n0, n1) (n0 a multiple of 32; n1 too, or N), tile row by tile row. (Columns past N are
// zeros in the tiles and never stored.)
template <int M, bool kDot, bool kBf16>
void decode_tiles_m(const Activations& a, const Weight& w, int n0, int n1, const Out& y) {
  const auto& t = fp8_tables();
  const simd::Fp8Lut lut = simd::load_fp8_lut(t.lut_hi.data(), t.lut_lo.data());
  const int end = n1 == w.N ? ceil_div(n1, 32) * 32 : n1;  // the last run may reach into the padding
  for (int n = n0; n < end;) {
    const int row_end = std::min(end, (n / kTileN + 1) * kTileN);
    decode_tile_row<M, kDot, kBf16>(a, w, lut, n, row_end, y);
    n = row_end;
  }
}

template <bool kDot, bool kBf16>
void decode_tiles_dot(const Activations& a, const Weight& w, int n0, int n1, const Out& y) {
  switch (a.M) {
    case 1: return decode_tiles_m<1, kDot, kBf16>(a, w, n0, n1, y);
    case 2: return decode_tiles_m<2, kDot, kBf16>(a, w, n0, n1, y);
    case 3: return decode_tiles_m<3, kDot, kBf16>(a, w, n0, n1, y);
    case 4: return decode_tiles_m<4, kDot, kBf16>(a, w, n0, n1, y);
    case 5: return decode_tiles_m<5, kDot, kBf16>(a, w, n0, n1, y);
    case 6: return decode_tiles_m<6, kDot, kBf16>(a, w, n0, n1, y);
    case 7: return decode_tiles_m<7, kDot, kBf16>(a, w, n0, n1, y);
    case 8: return decode_tiles_m<8, kDot, kBf16>(a, w, n0, n1, y);
    default: EPS_REQUIRE(false, "decode_tiles: M out of range");
  }
}

void decode_tiles(const Activations& a, const Weight& w, int n0, int n1, const Out& y) {
  const bool bf16 = w.bf16_tiles != nullptr;
#ifdef EPS_KERNELS_BF16DOT  // (xt exists only where vdpbf16ps does)
  if (a.xt) return bf16 ? decode_tiles_dot<true, true>(a, w, n0, n1, y) : decode_tiles_dot<true, false>(a, w, n0, n1, y);
#endif
  bf16 ? decode_tiles_dot<false, true>(a, w, n0, n1, y) : decode_tiles_dot<false, false>(a, w, n0, n1, y);
}

// ---------------------------------------------------------------------------------------------
// Prefill: one tile row (128 outputs) × up to 128 activation rows per item. Each block's tile is
// dequantized once into L1 (BF16 pairs [64][128], or floats [128][128] in k order for the FMA
// path), then a 6 × 64 register-blocked microkernel (six activation rows broadcast, four vectors
// of 16 outputs: 24 independent chains) runs over it, adding each block's sums into an FP32 tile
// of the item's outputs, [row][128].
constexpr int kMicroRows = 6;
constexpr int kMicroVectors = 4;  // 64 outputs

template <int MR, bool kDot>
inline void micro_tile(const Activations& a, int m0, int b, const void* wt, int c0, float* ct, const float* s) {
  __m512 acc[MR][kMicroVectors];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < kMicroVectors; ++v) acc[i][v] = _mm512_setzero_ps();
  if constexpr (kDot) {
#ifdef EPS_KERNELS_BF16DOT
    const uint32_t* wp = static_cast<const uint32_t*>(wt) + c0;
    const uint32_t* xr[MR];
    for (int i = 0; i < MR; ++i) xr[i] = a.xt + size_t(m0 + i) * a.kb * kTilePairs + size_t(b) * kTilePairs;
#pragma GCC unroll 2
    for (int kp = 0; kp < kTilePairs; ++kp) {
      __m512bh wv[kMicroVectors];
#pragma GCC unroll 4
      for (int v = 0; v < kMicroVectors; ++v) wv[v] = (__m512bh)_mm512_load_si512(wp + size_t(kp) * kTileN + 16 * v);
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) {
        const __m512bh xp = (__m512bh)_mm512_set1_epi32(int32_t(xr[i][kp]));
#pragma GCC unroll 4
        for (int v = 0; v < kMicroVectors; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], xp, wv[v]);
      }
    }
#endif
  } else {
    const float* wp = static_cast<const float*>(wt) + c0;
    const float* xr[MR];
    for (int i = 0; i < MR; ++i) xr[i] = x_floats(a, m0 + i, b);
#pragma GCC unroll 2
    for (int k = 0; k < kQuantBlock; ++k) {
      __m512 wv[kMicroVectors];
#pragma GCC unroll 4
      for (int v = 0; v < kMicroVectors; ++v) wv[v] = _mm512_load_ps(wp + size_t(k) * kTileN + 16 * v);
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) {
        const __m512 xv = _mm512_set1_ps(xr[i][k]);
#pragma GCC unroll 4
        for (int v = 0; v < kMicroVectors; ++v) acc[i][v] = _mm512_fmadd_ps(xv, wv[v], acc[i][v]);
      }
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    const __m512 si = _mm512_set1_ps(s[i]);
#pragma GCC unroll 4
    for (int v = 0; v < kMicroVectors; ++v) {
      float* c = ct + size_t(i) * kTileN + c0 + 16 * v;
      _mm512_store_ps(c, _mm512_fmadd_ps(acc[i][v], si, _mm512_load_ps(c)));
    }
  }
}

template <bool kDot>
void micro_tile_rows(const Activations& a, int m0, int rows, int b, const void* wt, int c0, float* ct, const float* s) {
  int i = 0;
  for (; i + kMicroRows <= rows; i += kMicroRows)
    micro_tile<kMicroRows, kDot>(a, m0 + i, b, wt, c0, ct + size_t(i) * kTileN, s + i);
  switch (rows - i) {
    case 5: return micro_tile<5, kDot>(a, m0 + i, b, wt, c0, ct + size_t(i) * kTileN, s + i);
    case 4: return micro_tile<4, kDot>(a, m0 + i, b, wt, c0, ct + size_t(i) * kTileN, s + i);
    case 3: return micro_tile<3, kDot>(a, m0 + i, b, wt, c0, ct + size_t(i) * kTileN, s + i);
    case 2: return micro_tile<2, kDot>(a, m0 + i, b, wt, c0, ct + size_t(i) * kTileN, s + i);
    case 1: return micro_tile<1, kDot>(a, m0 + i, b, wt, c0, ct + size_t(i) * kTileN, s + i);
    default: return;
  }
}

// Tile (nb, b) widened: BF16 pairs [64][128] (kDot) or floats [128][128], k in order. The next
// tile of the row is fetched into L2 meanwhile, line for line, so that its widening does not wait
// on memory (a grouped call of 256 experts × 16 rows, one thread: 15% faster; × 64 rows: 7%).
// BF16 tiles: copied (kDot) or their values as floats, the next tile fetched the same way.
// (Read in place by the microkernels, the lm_head's tiles came from memory without a prefetch.)
const void* widen_tile(const Weight& w, const simd::Fp8Lut& lut, int nb, int b, bool dot, void* out) {
  if (w.bf16_tiles) {
    constexpr size_t kTileWords = size_t(kTilePairs) * kTileN;
    const uint32_t* tile = w.bf16_tiles + (size_t(nb) * w.kb + b) * kTileWords;
    const bool fetch_next = b + 1 < w.kb;
    for (int kp = 0; kp < kTilePairs; ++kp)
      for (int v = 0; v < kTileN / 16; ++v) {
        const uint32_t* src = tile + size_t(kp) * kTileN + 16 * v;
        if (fetch_next) _mm_prefetch(reinterpret_cast<const char*>(src + kTileWords), _MM_HINT_T1);
        const __m512i p = _mm512_loadu_si512(src);
        if (dot) {
          _mm512_store_si512(static_cast<uint32_t*>(out) + size_t(kp) * kTileN + 16 * v, p);
          continue;
        }
        float* d = static_cast<float*>(out) + size_t(2 * kp) * kTileN + 16 * v;
        _mm512_store_ps(d, pair_first(p));
        _mm512_store_ps(d + kTileN, pair_second(p));
      }
    return out;
  }
  const uint8_t* tile = w.tiles + (size_t(nb) * w.kb + b) * kTileBytes;
  const bool fetch_next = b + 1 < w.kb;
  for (int kp = 0; kp < kTilePairs; ++kp)
    for (int g = 0; g < kTileN / 32; ++g) {
      if (fetch_next) _mm_prefetch(reinterpret_cast<const char*>(tile + kTileBytes + size_t(kp) * kTileRowBytes + 64 * g), _MM_HINT_T1);
      __m512i w0, w1;
      widen_tile64(lut, tile + size_t(kp) * kTileRowBytes + 64 * g, w0, w1);
      if (dot) {
        uint32_t* d = static_cast<uint32_t*>(out) + size_t(kp) * kTileN + 32 * g;
        _mm512_store_si512(d, w0);
        _mm512_store_si512(d + 16, w1);
      } else {
        float* d = static_cast<float*>(out) + size_t(2 * kp) * kTileN + 32 * g;
        _mm512_store_ps(d, pair_first(w0));
        _mm512_store_ps(d + 16, pair_first(w1));
        _mm512_store_ps(d + kTileN, pair_second(w0));
        _mm512_store_ps(d + kTileN + 16, pair_second(w1));
      }
    }
  return out;
}

#ifdef EPS_KERNELS_AMX
// AMX (amx_in_use): the widened tile's sums for rows [m0, m0 + rows), all 128 columns, added into
// ct as micro_tile adds them: per output and block, a sum from zero over the block's 64 pairs (four
// TDPBF16PS of 16 pairs, in k order), times the row's scale, FMA-added. Each accumulator tile holds
// 16 rows × 16 outputs; two row groups × two column groups at a time. The rows of an A tile are
// independent (the padding rows of xt are zeros), so a row's result does not depend on the batch.
void amx_tile_rows(const Activations& a, int m0, int rows, int b, const uint32_t* wt, float* ct, const float* s) {
  const size_t xstride = size_t(a.kb) * kTilePairs * sizeof(uint32_t);
  alignas(64) float c[4][kAmxRows][16];
  for (int g = 0; g < rows; g += 2 * kAmxRows) {
    const bool two = g + kAmxRows < rows;
    const uint32_t* x0 = a.xt + size_t(m0 + g) * a.kb * kTilePairs + size_t(b) * kTilePairs;
    const uint32_t* x1 = x0 + size_t(kAmxRows) * a.kb * kTilePairs;
    for (int c0 = 0; c0 < kTileN; c0 += 32) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int t = 0; t < kTilePairs / 16; ++t) {
        _tile_loadd(4, x0 + 16 * t, xstride);
        _tile_loadd(6, wt + size_t(16 * t) * kTileN + c0, kTileN * sizeof(uint32_t));
        _tile_loadd(7, wt + size_t(16 * t) * kTileN + c0 + 16, kTileN * sizeof(uint32_t));
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        if (two) {
          _tile_loadd(5, x1 + 16 * t, xstride);
          _tile_dpbf16ps(2, 5, 6);
          _tile_dpbf16ps(3, 5, 7);
        }
      }
      _tile_stored(0, c[0], 64);
      _tile_stored(1, c[1], 64);
      if (two) {
        _tile_stored(2, c[2], 64);
        _tile_stored(3, c[3], 64);
      }
      for (int q = 0; q < (two ? 4 : 2); ++q) {
        const int r0 = g + kAmxRows * (q >> 1), cc = c0 + 16 * (q & 1);
        for (int i = 0; i < kAmxRows && r0 + i < rows; ++i) {
          float* d = ct + size_t(r0 + i) * kTileN + cc;
          _mm512_store_ps(d, _mm512_fmadd_ps(_mm512_load_ps(c[q][i]), _mm512_set1_ps(s[r0 + i]), _mm512_load_ps(d)));
        }
      }
    }
  }
}

#endif

// Outputs [n0, n0 + 128) ∩ [0, N) × activation rows [m0, m1).
void prefill_tiles_item(const Activations& a, const Weight& w, int n0, int m0, int m1, const Out& y) {
  const int rows = m1 - m0, nb = n0 / kTileN, cols = std::min(kTileN, w.N - n0);
  const bool dot = a.xt != nullptr;
  float* ct = tl_tile.get<float>(size_t(rows) * kTileN);
  std::memset(ct, 0, sizeof(float) * size_t(rows) * kTileN);
  void* wt = tl_weights.get<float>(size_t(kQuantBlock) * kTileN);
  const auto& t = fp8_tables();
  const simd::Fp8Lut lut = simd::load_fp8_lut(t.lut_hi.data(), t.lut_lo.data());
  float s[kPanel * kItemPanels];
#ifdef EPS_KERNELS_AMX
  if (a.amx) configure_amx_tiles();  // (per item: cheap next to its work)
#endif
  for (int b = 0; b < a.kb; ++b) {
    const void* wb = widen_tile(w, lut, nb, b, dot, wt);
    for (int i = 0; i < rows; ++i) s[i] = tile_scale(a, w, m0 + i, n0, b);
#ifdef EPS_KERNELS_AMX
    if (a.amx) {
      amx_tile_rows(a, m0, rows, b, static_cast<const uint32_t*>(wb), ct, s);
      continue;
    }
#endif
    for (int c0 = 0; c0 < cols; c0 += kMicroVectors * 16) {
#ifdef EPS_KERNELS_BF16DOT
      if (dot) {
        micro_tile_rows<true>(a, m0, rows, b, wb, c0, ct, s);
        continue;
      }
#endif
      micro_tile_rows<false>(a, m0, rows, b, wb, c0, ct, s);
    }
  }
  for (int i = 0; i < rows; ++i) {
    float* out = y.row(m0 + i) + n0;
    for (int c = 0; c < cols; c += 16) {
      __m512 v = _mm512_load_ps(ct + size_t(i) * kTileN + c);
      if (a.deepseek) v = simd::round_to_bf16x16(v);
      _mm512_mask_storeu_ps(out + c, simd::first_lanes16(cols - c), v);
    }
  }
}
