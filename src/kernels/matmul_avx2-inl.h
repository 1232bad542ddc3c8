// The decode and prefill kernels for AVX2 + FMA + F16C machines without AVX-512 (AMD Zen 2/3,
// Intel Haswell to Alder Lake). Included by matmul.cpp inside its anonymous namespace, in place of
// the AVX-512 kernels; the same structure at 8 lanes and with 16 vector registers:
// - decode: each weight row widened 16 codes (or 8 BF16 values) at a time and used for all M rows;
// - prefill: a 128 × 128 weight tile dequantized to FP32 once per item, a kNr × 16 register-blocked
//   microkernel (4 weight rows broadcast × two vectors of 8 activation rows: 8 independent FMA
//   chains, what Zen 3's two 4-cycle FMA pipes need).
//
// Batch invariance (see the AVX-512 kernels in matmul.cpp for why): per output and 128-block, with
// positions P in k order,
//  - 8 lane chains: chain j adds P = j, j+8, j+16, ... in that order (FMAs from zero);
//  - the 8 chain sums combined by simd::tree_sum8's tree: i + (i+4), i + (i+2), i + (i+1);
//  - that block sum times the block's scale added to the output's FP32 sum, block after block.
// The decode kernels hold chain j in lane j; the microkernels hold one chain per accumulator,
// activation rows across the lanes.
#pragma once

#ifndef EPS_KERNELS_AVX2
#error "matmul_avx2-inl.h is part of matmul.cpp"
#endif

// ---------------------------------------------------------------------------------------------
// Decode kernels: rows [n0, n1) of y for all M (≤ kDecodeMaxM) activation rows.

// R weight rows at a time, each widened once and used for all M rows. One 128-block of R rows:
// the lane chains, the tree, scaled into acc (kWhole: see whole_block).
template <int M, int R, bool kWhole>
inline void decode_fp8_block(const Activations& a, const Weight& w, int n, int b, size_t ahead, float (&acc)[R][M]) {
  const int K = a.K, kb = a.kb;
  const int k0 = b * kQuantBlock, kc = kWhole ? kQuantBlock : std::min(kQuantBlock, K - k0);
  const uint8_t* wb = w.codes + size_t(n) * K + k0;
  const float* xb = a.xk + size_t(b) * M * kQuantBlock;
  __m256 part[R * M];
  for (auto& p : part) p = _mm256_setzero_ps();
  for (int h = 0; 16 * h < kc; ++h)
    for (int r = 0; r < R; ++r) {
      const uint8_t* wr = wb + size_t(r) * K + 16 * h;
      if (h % 4 == 0) _mm_prefetch(reinterpret_cast<const char*>(wr + ahead), _MM_HINT_T0);
      __m256 lo, hi;
      simd::widen_fp8x16(kWhole ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(wr)) : simd::load_codes16(wr, kc - 16 * h),
                         lo, hi);
      for (int m = 0; m < M; ++m) {
        const float* xm = xb + m * kQuantBlock + 16 * h;
        part[r * M + m] = _mm256_fmadd_ps(_mm256_load_ps(xm), lo, part[r * M + m]);
        part[r * M + m] = _mm256_fmadd_ps(_mm256_load_ps(xm + 8), hi, part[r * M + m]);
      }
    }
  for (int r = 0; r < R; ++r) {
    const float ws = w.scales[size_t((n + r) / kQuantBlock) * kb + b];
    for (int m = 0; m < M; ++m) {
      // As the prefill items compute it: DeepSeek, (x scale · w scale) rounded as the twin rounds
      // it, times the 2^16 the two widenings left out (exact); exact numerics, the weights' 2^8.
      const float s = a.deepseek ? (a.xscale[size_t(m) * kb + b] * ws) * (simd::kFp8WidenScale * simd::kFp8WidenScale)
                                 : ws * simd::kFp8WidenScale;
      acc[r][m] = std::fma(simd::tree_sum8(part[r * M + m]), s, acc[r][m]);
    }
  }
}
template <int M, int R>
inline void decode_fp8_block(const Activations& a, const Weight& w, int n, int b, size_t ahead, float (&acc)[R][M]) {
  if (whole_block(a.K, b)) decode_fp8_block<M, R, true>(a, w, n, b, ahead, acc);
  else decode_fp8_block<M, R, false>(a, w, n, b, ahead, acc);
}

template <int M, int R>
inline void decode_store(const Activations& a, const float (&acc)[R][M], int n, const Out& y) {
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) y.row(m)[n + r] = a.deepseek ? round_to_bf16(acc[r][m]) : acc[r][m];
}

// R rows, all blocks.
template <int M, int R>
void decode_fp8_rows(const Activations& a, const Weight& w, int n, const Out& y) {
  const size_t ahead = size_t(R) * a.K + 2048;  // prefetch distance along the (contiguous) rows
  float acc[R][M] = {};
  for (int b = 0; b < a.kb; ++b) decode_fp8_block<M, R>(a, w, n, b, ahead, acc);
  decode_store<M, R>(a, acc, n, y);
}

// kDecodeGroup rows block by block when the activations do not fit L1 (as the AVX-512 kernels).
constexpr int kDecodeGroup = 16;
template <int M, int R>
void decode_fp8_group(const Activations& a, const Weight& w, int n, const Out& y) {
  static_assert(kDecodeGroup % R == 0);
  float acc[kDecodeGroup / R][R][M] = {};
  for (int b = 0; b < a.kb; ++b)
    for (int g = 0; g < kDecodeGroup / R; ++g) decode_fp8_block<M, R>(a, w, n + g * R, b, 2 * kQuantBlock, acc[g]);
  for (int g = 0; g < kDecodeGroup / R; ++g) decode_store<M, R>(a, acc[g], n + g * R, y);
}

// BF16 weights: the same structure, k in order (chain j adds k0 + j, k0 + j + 8, ...). One block.
template <int M, int R, bool kWhole>
inline void decode_bf16_block(const Activations& a, const Weight& w, int n, int b, size_t ahead, float (&acc)[R][M]) {
  const int K = a.K, k0 = b * kQuantBlock, kc = kWhole ? kQuantBlock : std::min(kQuantBlock, K - k0);
  const uint16_t* rows = w.bf16 + size_t(n) * K;
  __m256 part[R * M];
  for (auto& p : part) p = _mm256_setzero_ps();
  for (int t = 0; 8 * t < kc; ++t) {
    const int k = k0 + 8 * t, len = kWhole ? 8 : kc - 8 * t;
    for (int r = 0; r < R; ++r) {
      const uint16_t* wr = rows + size_t(r) * K + k;
      if (t % 4 == 0) _mm_prefetch(reinterpret_cast<const char*>(wr + ahead), _MM_HINT_T0);
      const __m256 wv = simd::widen_bf16x8(wr, len);
      for (int m = 0; m < M; ++m)
        part[r * M + m] = _mm256_fmadd_ps(simd::load_floats8(a.x + size_t(m) * K + k, len), wv, part[r * M + m]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) acc[r][m] += simd::tree_sum8(part[r * M + m]);
}
template <int M, int R>
void decode_bf16_rows(const Activations& a, const Weight& w, int n, const Out& y) {
  const size_t ahead = size_t(R) * a.K + 1024;  // in elements (2 bytes)
  float acc[R][M] = {};
  for (int b = 0; b < a.kb; ++b) {
    if (whole_block(a.K, b)) decode_bf16_block<M, R, true>(a, w, n, b, ahead, acc);
    else decode_bf16_block<M, R, false>(a, w, n, b, ahead, acc);
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) y.row(m)[n + r] = acc[r][m];
}

template <int M>
void decode_range_m(const Activations& a, const Weight& w, int n0, int n1, const Out& y) {
  // Several weight rows at a time give independent FMA chains when M is small.
  constexpr int R = M <= 2 ? 4 : M <= 4 ? 2 : 1;
  int n = n0;
  if (w.is_bf16()) {
    for (; n + R <= n1; n += R) decode_bf16_rows<M, R>(a, w, n, y);
    for (; n < n1; ++n) decode_bf16_rows<M, 1>(a, w, n, y);
    return;
  }
  if (size_t(M) * a.kb * kQuantBlock * sizeof(float) > 32 * 1024)  // activations larger than L1
    for (; n + kDecodeGroup <= n1; n += kDecodeGroup) decode_fp8_group<M, R>(a, w, n, y);
  for (; n + R <= n1; n += R) decode_fp8_rows<M, R>(a, w, n, y);
  for (; n < n1; ++n) decode_fp8_rows<M, 1>(a, w, n, y);
}

void decode_range(const Activations& a, const Weight& w, int n0, int n1, const Out& y) {
  switch (a.M) {
    case 1: return decode_range_m<1>(a, w, n0, n1, y);
    case 2: return decode_range_m<2>(a, w, n0, n1, y);
    case 3: return decode_range_m<3>(a, w, n0, n1, y);
    case 4: return decode_range_m<4>(a, w, n0, n1, y);
    case 5: return decode_range_m<5>(a, w, n0, n1, y);
    case 6: return decode_range_m<6>(a, w, n0, n1, y);
    case 7: return decode_range_m<7>(a, w, n0, n1, y);
    case 8: return decode_range_m<8>(a, w, n0, n1, y);
    default: EPS_REQUIRE(false, "decode_range: M out of range");
  }
}

// ---------------------------------------------------------------------------------------------
// Prefill: kNr weight rows × V·8 activation rows, one k-block; the partial sums are scaled and
// added to the FP32 tile ct ([n][ldc], activation rows contiguous).

// The chains in the order the tree takes them (depth first): 0+4, 2+6, (0+4)+(2+6), ...
constexpr int kTreeLeaf8[8] = {0, 4, 2, 6, 1, 5, 3, 7};

template <int V>
inline void micro_f32(const float* xp, const float* wd, int kc, float* ct, int ldc, const __m256* s) {
  const int T = ceil_div(kc, 8);  // positions up to 8·T are zero past kc in both operands
  __m256 acc[kNr][V], stack[3][kNr][V];
  for (int leaf = 0; leaf < 8; ++leaf) {
    const int c = kTreeLeaf8[leaf];
    for (int j = 0; j < kNr; ++j)
      for (int v = 0; v < V; ++v) acc[j][v] = _mm256_setzero_ps();
    for (int t = 0; t < T; ++t) {
      const int k = c + 8 * t;
      __m256 xv[V];
      for (int v = 0; v < V; ++v) {
        xv[v] = _mm256_load_ps(xp + size_t(k) * kPanel + 8 * v);
        // Keep the vector in a register: GCC otherwise folds the load into every FMA that uses it,
        // and kNr loads per vector saturate Zen 3's two 256-bit load ports before its FMA pipes.
        asm("" : "+x"(xv[v]));
      }
      for (int j = 0; j < kNr; ++j) {
        const __m256 wv = _mm256_broadcast_ss(wd + j * kQuantBlock + k);
        for (int v = 0; v < V; ++v) acc[j][v] = _mm256_fmadd_ps(xv[v], wv, acc[j][v]);
      }
    }
    // Combine the chain just finished with the stack of partial tree sums.
    int level = 0;
    for (; (leaf >> level) & 1; ++level)
      for (int j = 0; j < kNr; ++j)
        for (int v = 0; v < V; ++v) acc[j][v] = _mm256_add_ps(stack[level][j][v], acc[j][v]);
    if (leaf < 7)
      for (int j = 0; j < kNr; ++j)
        for (int v = 0; v < V; ++v) stack[level][j][v] = acc[j][v];
  }
  for (int j = 0; j < kNr; ++j)
    for (int v = 0; v < V; ++v) {
      float* c = ct + size_t(j) * ldc + 8 * v;
      _mm256_store_ps(c, _mm256_fmadd_ps(acc[j][v], s[v], _mm256_load_ps(c)));
    }
}

// Dequantize weight rows [n0, n0+nn) × k-block [k0, k0+kc) into wd[kNChunkPad][128] (rows ≥ nn
// and columns ≥ kc are zero): FP8 values · 2^-8, BF16 values exact, in k order.
void dequant_tile_f32(const Weight& w, int n0, int nn, int k0, int kc, float* wd) {
  for (int r = 0; r < nn; ++r) {
    float* dst = wd + size_t(r) * kQuantBlock;
    if (w.is_bf16()) {
      const uint16_t* src = w.bf16 + size_t(n0 + r) * w.K + k0;
      for (int k = 0; k < kQuantBlock; k += 8) _mm256_store_ps(dst + k, simd::widen_bf16x8(src + k, kc - k));
    } else {
      const uint8_t* src = w.codes + size_t(n0 + r) * w.K + k0;
      for (int k = 0; k < kQuantBlock; k += 16) {
        __m256 lo, hi;
        simd::widen_fp8x16(simd::load_codes16(src + k, kc - k), lo, hi);
        _mm256_store_ps(dst + k, lo);
        _mm256_store_ps(dst + k + 8, hi);
      }
    }
  }
  std::memset(wd + size_t(nn) * kQuantBlock, 0, sizeof(float) * size_t(kNChunkPad - nn) * kQuantBlock);
}

// Weight rows [n0, n1) (inside one 128-row scale block) × activation panels [p0, p1).
void prefill_item(const Activations& a, const Weight& w, int n0, int n1, int p0, int p1, const Out& y) {
  const int kb = a.kb, nn = n1 - n0, groups = ceil_div(nn, kNr);
  const int ldc = (p1 - p0) * kPanel;
  float* ct = tl_tile.get<float>(size_t(kNChunkPad) * ldc);
  std::memset(ct, 0, sizeof(float) * size_t(groups) * kNr * ldc);
  float* wd = tl_weights.get<float>(size_t(kNChunkPad) * kQuantBlock);
  for (int b = 0; b < kb; ++b) {
    const int k0 = b * kQuantBlock, kc = std::min(kQuantBlock, a.K - k0);
    const float ws = w.is_bf16() ? 1.0f : w.scales[size_t(n0 / kQuantBlock) * kb + b];
    dequant_tile_f32(w, n0, nn, k0, kc, wd);
    for (int p = p0; p < p1; ++p) {
      const int rows = std::min(kPanel, a.M - p * kPanel);
      for (int half = 0; half < 2 && 16 * half < rows; ++half) {
        const int lanes = 16 * half;  // first activation row of the panel this call covers
        __m256 s[2];
        for (int v = 0; v < 2; ++v) {
          if (a.deepseek) {
            // (x scale · w scale) rounded as the twin does, times the 2^16 the widenings left out.
            const __m256 xs = _mm256_loadu_ps(a.xps + (size_t(p) * kb + b) * kPanel + lanes + 8 * v);
            s[v] = _mm256_mul_ps(_mm256_mul_ps(xs, _mm256_set1_ps(ws)),
                                 _mm256_set1_ps(simd::kFp8WidenScale * simd::kFp8WidenScale));
          } else {
            s[v] = _mm256_set1_ps(w.is_bf16() ? 1.0f : ws * simd::kFp8WidenScale);
          }
        }
        const float* xp = a.xp + (size_t(p) * a.Kp + k0) * kPanel + lanes;
        float* ctp = ct + (p - p0) * kPanel + lanes;
        for (int g = 0; g < groups; ++g) {
          if (p == p0 && half == 0) prefetch_next_tile_rows(w, n0, g * kNr, std::min(nn, (g + 1) * kNr), k0 + kQuantBlock);
          const float* wg = wd + size_t(g) * kNr * kQuantBlock;
          float* ctg = ctp + size_t(g) * kNr * ldc;
          if (rows - lanes > 8) micro_f32<2>(xp, wg, kc, ctg, ldc, s);
          else micro_f32<1>(xp, wg, kc, ctg, ldc, s);
        }
      }
    }
  }
  // Transpose the tile out into y in 8 × 8 blocks, in registers (rounding to BF16 under DeepSeek
  // numerics). Tile rows past nn and columns past `rows` may hold anything: they are never stored.
  const int m0 = p0 * kPanel, rows = std::min(a.M, p1 * kPanel) - m0;
  for (int mb = 0; mb < rows; mb += 8)
    for (int rb = 0; rb < nn; rb += 8) {
      __m256 v[8];
      for (int r = 0; r < 8; ++r) v[r] = _mm256_load_ps(ct + size_t(rb + r) * ldc + mb);
      simd::transpose8x8_ps(v);
      for (int m = 0; m < std::min(8, rows - mb); ++m)
        simd::store_floats8(y.row(m0 + mb + m) + n0 + rb, a.deepseek ? simd::round_to_bf16x8(v[m]) : v[m], nn - rb);
    }
}
