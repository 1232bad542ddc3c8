// Fast matmul kernels: FP8 block-scaled (exact and DeepSeek numerics), grouped per expert, BF16.
//
// Two shapes of work (see docs/ARCHITECTURE.md, "Kernels"):
// - decode (M ≤ kDecodeMaxM): bandwidth-bound. Weights are widened from FP8 (a byte-table lookup,
//   64 codes at a time) or BF16 in registers once and multiplied with all M activation rows;
//   threads take contiguous row ranges.
// - prefill (M > kDecodeMaxM): compute-bound. A 128-row × 128-k tile of weights is dequantized
//   once into a cache-resident buffer and a register-blocked microkernel runs over it for up to
//   128 activation rows; each 128-wide partial sum is scaled and added to an FP32 tile: the twin's
//   structure (FP32 partial sums per 128-block, times the twin's scale product, accumulated in block
//   order), the terms of each partial sum in another order.
// FP8 weights on AVX-512 are read as tiles (matmul_tiles_avx512-inl.h: outputs across the lanes,
// activations broadcast); BF16 weights, and FP8 weights on AVX2, row by row (k across the lanes;
// prefill activations packed into panels of 32 rows, k-major, a lane tree per output).
// Work is cut into items (task, 128-row weight chunk, activation panel range) run by OpenMP. What
// a product computes per element depends on M only, never on the split, so the grouped (per-expert)
// call and the plain call give bit-identical results.
#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "base/error.h"
#include "base/fp8.h"
#include "base/parallel.h"
#include "kernels/matmul.h"
#include "kernels/roofline.h"
#include "kernels/simd.h"
#include "kernels/simd_avx2.h"

namespace epserve::kernels {

namespace {

#if defined(__AVX512F__) && defined(__AVX512BW__)
#define EPS_KERNELS_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define EPS_KERNELS_AVX2 1  // the kernels of matmul_avx2-inl.h
#endif
#if defined(EPS_KERNELS_AVX512) && defined(__AVX512BF16__)
#define EPS_KERNELS_BF16DOT 1
#endif
#if defined(EPS_KERNELS_BF16DOT) && defined(__AMX_TILE__) && defined(__AMX_BF16__)
#define EPS_KERNELS_AMX 1  // matmul_tiles_avx512-inl.h's AMX item (amx_in_use)
#endif
#if defined(EPS_KERNELS_AVX512) || defined(EPS_KERNELS_AVX2)
#define EPS_KERNELS_SIMD 1  // decode and prefill kernels (the scalar path has one kernel)
#endif

constexpr int kDecodeMaxM = 8;    // up to this many rows: the streaming (decode) kernels
constexpr int kPanel = 32;        // prefill activation rows per panel (two 16-float vectors)
constexpr int kNChunk = kQuantBlock;  // weight rows per work item (one scale block)
#ifdef EPS_KERNELS_AVX2
constexpr int kNr = 4;           // prefill weight rows per microkernel call (4 × 16 activation rows fill 8 of the 16 registers)
constexpr int kNChunkPad = ceil_div(kNChunk, kNr) * kNr;  // 128
#endif
constexpr int kItemPanels = 4;    // prefill activation panels per work item (128 rows)
constexpr int kAmxRows = 16;      // rows of an AMX tile (configure_amx_tiles; activations padded to a multiple)

// 64-byte aligned scratch that grows and is reused (one per thread).
struct Scratch {
  struct Free { void operator()(void* p) const { std::free(p); } };
  std::unique_ptr<char, Free> mem;
  size_t bytes = 0;
  template <class T>
  T* get(size_t count) {
    const size_t need = (count * sizeof(T) + 63) / 64 * 64;
    if (need > bytes) {
      mem.reset(static_cast<char*>(std::aligned_alloc(64, need)));
      EPS_REQUIRE(mem != nullptr, "matmul: out of memory for scratch");
      bytes = need;
    }
    return reinterpret_cast<T*>(mem.get());
  }
};
thread_local Scratch tl_weights, tl_tile;

// Grows only, at least doubling: activation buffers are reused from call to call (no page faults
// in steady state). (Grown to the exact size, a grouped call's buffers, one per task, were
// reallocated whenever a task got more rows than before, and every new buffer faulted in afresh.)
template <class T>
struct AlignedVec {
  std::unique_ptr<T[], Scratch::Free> p;
  size_t capacity = 0;
  void resize(size_t n) {
    if (n <= capacity && p) return;
    n = std::max(n, 2 * capacity);
    p.reset(static_cast<T*>(std::aligned_alloc(64, std::max<size_t>(64, (n * sizeof(T) + 63) / 64 * 64))));
    EPS_REQUIRE(p != nullptr, "matmul: out of memory");
    capacity = n;
  }
  T* data() const { return p.get(); }
};

// FP8 code → value · 2^-8 (as the FP16 widening gives it), and the byte tables of
// simd::widen_fp8x64_bf16 (BF16 bytes of the exact values of magnitudes 0..127).
struct Fp8Tables {
  std::array<float, 256> f32{};
  alignas(64) std::array<uint8_t, 128> lut_hi{}, lut_lo{};
  Fp8Tables() {
    for (int c = 0; c < 256; ++c) f32[c] = fp8_e4m3_table()[c] * (1.0f / 256);
    for (int c = 0; c < 128; ++c) {
      const uint16_t b = float_to_bf16(fp8_e4m3_table()[c]).bits;
      lut_hi[c] = uint8_t(b >> 8);
      lut_lo[c] = uint8_t(b & 0xff);
    }
  }
};
const Fp8Tables& fp8_tables() {
  static const Fp8Tables t;
  return t;
}

// Where output row m goes: y + m·ldy, or rows[m] where the caller scatters the rows (the routed
// experts' outputs straight into their (token, choice) places, Fp8MatmulTask::y_rows).
struct Out {
  float* y = nullptr;
  int ldy = 0;
  float* const* rows = nullptr;
  float* row(int m) const { return rows ? rows[m] : y + size_t(m) * ldy; }
};

// A weight as the kernels see it: FP8 codes with block scales, or BF16 values (no scales).
struct Weight {
  const uint8_t* codes = nullptr;
  const float* scales = nullptr;
  const uint16_t* bf16 = nullptr;
  int N = 0, K = 0, kb = 0;
  const uint8_t* tiles = nullptr;  // FP8 in the AVX-512 kernels' layout (pack_fp8_tiles)
  const uint32_t* bf16_tiles = nullptr;  // BF16 in that layout (pack_bf16_tiles)
  bool is_bf16() const { return bf16 != nullptr; }
};


Weight view(const Fp8Matrix& w) {
  EPS_REQUIRE(w.codes.size() >= size_t(w.rows) * w.cols, "matmul_fp8: weight codes too small");
  EPS_REQUIRE(w.block_scales.size() >= size_t(ceil_div(w.rows, kQuantBlock)) * ceil_div(w.cols, kQuantBlock),
              "matmul_fp8: block scales too small");
#ifdef EPS_KERNELS_AVX512
  EPS_REQUIRE(w.tiles.size() == fp8_tiles_bytes(w.rows, w.cols),
              "matmul_fp8: the weight's tiles are missing or of another shape (pack_fp8_tiles)");
#endif
  return Weight{w.codes.data(), w.block_scales.data(), nullptr, w.rows, w.cols, ceil_div(w.cols, kQuantBlock),
                w.tiles.data()};
}
Weight view(const Bf16Matrix& w) {
  EPS_REQUIRE(w.values.size() >= size_t(w.rows) * w.cols, "matmul_bf16: weight too small");
  static_assert(sizeof(bf16) == 2);
#ifdef EPS_KERNELS_AVX512
  EPS_REQUIRE(w.tiles.size() == bf16_tiles_bytes(w.rows, w.cols),
              "matmul_bf16: the weight's tiles are missing or of another shape (pack_bf16_tiles)");
#endif
  return Weight{nullptr, nullptr, reinterpret_cast<const uint16_t*>(w.values.data()), w.rows, w.cols,
                ceil_div(w.cols, kQuantBlock), nullptr, reinterpret_cast<const uint32_t*>(w.tiles.data())};
}

// Activations prepared once per product (per task in a grouped call).
struct Activations {
  int M = 0, K = 0, kb = 0;
  bool deepseek = false;
  bool prefill = false;
  bool amx = false;  // AMX items for every M (xt padded to whole tiles of 16 rows)
  // Row-major [M][K] (decode with BF16 weights, the scalar path): exact → the caller's x,
  // DeepSeek (scalar path only) → the codes' values · 2^-8.
  const float* x = nullptr;
  // Decode with FP8 weights (AVX2): the rows in [kb][M][128] blocks, zero-padded.
  const float* xk = nullptr;
  // FP8 weight tiles (AVX-512, decode and prefill): the rows in k order, zero-padded to kb · 128:
  // BF16 pairs [M][kb · 64] of the codes' values · 2^-8 under DeepSeek numerics with AVX512-BF16
  // (xt), floats [M][kb · 128] otherwise (xf: exact, the caller's values; DeepSeek, the codes'
  // values · 2^-8).
  const uint32_t* xt = nullptr;
  const float* xf = nullptr;
  const float* xscale = nullptr;  // DeepSeek: [M][kb]
  // Prefill panels (AVX2: 32 rows, zero-padded): FP32 [panel][K][32].
  const float* xp = nullptr;
  const float* xps = nullptr;  // DeepSeek: scales [panel][kb][32]
  int panels = 0;
  // Prefill panels hold Kp = K rounded up to 64 positions (zeros past K), in k order.
  int Kp = 0;
  // DeepSeek: the quantized rows (the caller's, or q).
  const uint8_t* codes = nullptr;
  const float* scales = nullptr;
  // Storage.
  Fp8Rows q;
  AlignedVec<float> xd, xk_store, xp_store, xps_store, xf_store;
  AlignedVec<uint32_t> xt_store;
};

bool use_prefill(int M) {
#ifdef EPS_KERNELS_SIMD
  return M > kDecodeMaxM;
#else
  return false;  // the scalar path has one kernel
#endif
}

// ---------------------------------------------------------------------------------------------
// Quantization.

void quantize_rows_range(const float* x, int r0, int r1, int cols, uint8_t* codes, float* scales) {
  const int blocks = ceil_div(cols, kQuantBlock);
  for (int r = r0; r < r1; ++r) {
    for (int b = 0; b < blocks; ++b) {
      const int k0 = b * kQuantBlock, k1 = std::min(cols, k0 + kQuantBlock);
      const float* xr = x + size_t(r) * cols;
      uint8_t* cr = codes + size_t(r) * cols;
#ifdef EPS_KERNELS_AVX512
      __m512 amax = _mm512_setzero_ps();
      for (int k = k0; k < k1; k += 16) {
        const __m512 v = simd::load_floats16(xr + k, k1 - k);
        amax = _mm512_max_ps(_mm512_abs_ps(v), amax);  // a NaN input leaves amax as it was, as std::max
      }
      const float scale = std::max(_mm512_reduce_max_ps(amax), 1e-4f) / kFp8Max;
      scales[size_t(r) * blocks + b] = scale;
      const __m512 vs = _mm512_set1_ps(scale);
      for (int k = k0; k < k1; k += 16) {
        const int n = std::min(16, k1 - k);
        const __m512i c = simd::encode_fp8x16(_mm512_div_ps(simd::load_floats16(xr + k, n), vs));
        _mm_mask_storeu_epi8(cr + k, simd::first_lanes16(n), _mm512_cvtepi32_epi8(c));
      }
#elif defined(EPS_KERNELS_AVX2)
      const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
      __m256 amax = _mm256_setzero_ps();
      for (int k = k0; k < k1; k += 8)  // (max returns its second operand for a NaN, as std::max)
        amax = _mm256_max_ps(_mm256_and_ps(simd::load_floats8(xr + k, k1 - k), abs_mask), amax);
      const float scale = std::max(simd::reduce_max8(amax), 1e-4f) / kFp8Max;
      scales[size_t(r) * blocks + b] = scale;
      const __m256 vs = _mm256_set1_ps(scale);
      for (int k = k0; k < k1; k += 8) {
        const uint64_t c8 = simd::pack_codes8(simd::encode_fp8x8(_mm256_div_ps(simd::load_floats8(xr + k, k1 - k), vs)));
        std::memcpy(cr + k, &c8, size_t(std::min(8, k1 - k)));
      }
#else
      float amax = 0;
      for (int k = k0; k < k1; ++k) amax = std::max(amax, std::fabs(xr[k]));
      const float scale = std::max(amax, 1e-4f) / kFp8Max;
      scales[size_t(r) * blocks + b] = scale;
      for (int k = k0; k < k1; ++k) cr[k] = float_to_fp8_e4m3(xr[k] / scale);
#endif
    }
  }
}

void quantize_rows(const float* x, int rows, int cols, Fp8Rows& out, bool par) {
  out.rows = rows;
  out.cols = cols;
  out.codes.resize(size_t(rows) * cols);
  out.scales.resize(size_t(rows) * ceil_div(cols, kQuantBlock));
  const bool parallel = par && size_t(rows) * cols >= (size_t(1) << 16) && rows > 1;
  parallel_for(rows, parallel, [&](int r) { quantize_rows_range(x, r, r + 1, cols, out.codes.data(), out.scales.data()); });
}

// ---------------------------------------------------------------------------------------------
// Preparing activations (once per product; par: spread over the OpenMP threads).

// Lanes of panel p that the microkernels read: a panel of ≤ 16 rows goes through the one-vector
// microkernel, which never reads lanes 16..31 (so they are neither filled nor zeroed).
inline int panel_lanes(int M, int p) { return M - p * kPanel <= 16 ? 16 : kPanel; }

#ifndef EPS_KERNELS_AVX512  // (the AVX-512 kernels read FP8 weights as tiles: prepare_tile_rows)
// From DeepSeek-quantized rows (q already filled in a).
void prepare_from_codes(Activations& a, bool par) {
  const int M = a.M, K = a.K, kb = a.kb;
  const auto& t = fp8_tables();
  a.xscale = a.scales;
  const uint8_t* codes = a.codes;
  if (!a.prefill) {
#ifdef EPS_KERNELS_SIMD
    return;  // the decode kernels read a.xk (prepare_decode_blocks)
#endif
    a.xd.resize(size_t(M) * K);
    float* xd = a.xd.data();
    const long total = long(M) * K;
    parallel_for(total, par && total >= (1 << 16), [&](long i) { xd[i] = t.f32[codes[i]]; });
    a.x = xd;
    return;
  }
  a.panels = ceil_div(M, kPanel);
  a.xps_store.resize(size_t(a.panels) * kb * kPanel);
  float* xps = a.xps_store.data();
  for (int p = 0; p < a.panels; ++p)
    for (int b = 0; b < kb; ++b)
      for (int i = 0; i < kPanel; ++i) {
        const int m = p * kPanel + i;
        xps[(size_t(p) * kb + b) * kPanel + i] = m < M ? a.scales[size_t(m) * kb + b] : 0.0f;
      }
  a.xps = xps;
#ifdef EPS_KERNELS_AVX2
  const int Kp = a.Kp;
  // 8 rows × 16 codes widened in registers (values · 2^-8), then transposed into the panel in 8 × 8
  // blocks (positions in k order; zeros past K and for rows past M).
  a.xp_store.resize(size_t(a.panels) * Kp * kPanel);
  float* xp = a.xp_store.data();
  parallel_for(a.panels, par && a.panels > 1, [&](int p) {
    float* dst = xp + size_t(p) * Kp * kPanel;
    const int lanes = panel_lanes(M, p), rows = std::min(lanes, M - p * kPanel);
    for (int k0 = 0; k0 < Kp; k0 += 16)
      for (int g = 0; 8 * g < lanes; ++g) {
        __m256 lo[8], hi[8];
        for (int i = 0; i < 8; ++i) {
          if (8 * g + i < rows) {
            simd::widen_fp8x16(simd::load_codes16(codes + size_t(p * kPanel + 8 * g + i) * K + k0, K - k0), lo[i], hi[i]);
          } else {
            lo[i] = hi[i] = _mm256_setzero_ps();
          }
        }
        simd::transpose8x8_ps(lo);
        simd::transpose8x8_ps(hi);
        float* d = dst + size_t(k0) * kPanel + 8 * g;
        for (int c = 0; c < 8; ++c) {
          _mm256_store_ps(d + size_t(c) * kPanel, lo[c]);
          _mm256_store_ps(d + size_t(8 + c) * kPanel, hi[c]);
        }
      }
  });
  a.xp = xp;
#endif
}
#endif

// Exact numerics (and BF16 weights): the caller's FP32 rows, packed into panels for prefill.
void prepare_exact(Activations& a, const float* x, bool par) {
  a.x = x;
  if (!a.prefill) return;
  const int M = a.M, K = a.K, Kp = a.Kp;
  a.panels = ceil_div(M, kPanel);
  a.xp_store.resize(size_t(a.panels) * Kp * kPanel);
  float* xp = a.xp_store.data();
  constexpr int kTile = 64;  // transpose in 32 × 64 tiles: reads and writes stay in L1
  parallel_for(a.panels, par && a.panels > 1, [&](int p) {
    float* dst = xp + size_t(p) * Kp * kPanel;
    for (int P0 = 0; P0 < Kp; P0 += kTile) {
      for (int i = 0; i < panel_lanes(M, p); ++i) {
        const int m = p * kPanel + i;
        float* d = dst + size_t(P0) * kPanel + i;
        if (m < M) {
          const float* row = x + size_t(m) * K;
          for (int j = 0; j < kTile; ++j) d[size_t(j) * kPanel] = P0 + j < K ? row[P0 + j] : 0.0f;
        } else {
          for (int j = 0; j < kTile; ++j) d[size_t(j) * kPanel] = 0.0f;
        }
      }
    }
  });
  a.xp = xp;
}

#ifdef EPS_KERNELS_AVX2
// Decode layout for FP8 weights: xk[b][m][j] = the value at k = 128b + j (exact: the caller's x;
// DeepSeek: the code's value · 2^-8, as the prefill panels hold it), zeros past K.
void prepare_decode_blocks(Activations& a, const float* x, const uint8_t* codes) {
  const int M = a.M, K = a.K, kb = a.kb;
  const auto& t = fp8_tables();
  a.xk_store.resize(size_t(kb) * M * kQuantBlock);
  float* xk = a.xk_store.data();
  for (int b = 0; b < kb; ++b)
    for (int m = 0; m < M; ++m)
      for (int j = 0; j < kQuantBlock; ++j) {
        const int k = b * kQuantBlock + j;
        const size_t src = size_t(m) * K + k;
        xk[(size_t(b) * M + m) * kQuantBlock + j] = k >= K ? 0.0f : codes ? t.f32[codes[src]] : x[src];
      }
  a.xk = xk;
}
#endif

#ifdef EPS_KERNELS_AVX512
// FP8 weight tiles: the rows in k order, zero-padded to kb · 128 (Activations::xt / xf), decode
// and prefill alike.
void prepare_tile_rows(Activations& a, const float* x, bool par) {
  const int M = a.M, K = a.K, Kpad = a.kb * kQuantBlock;
  const bool parallel = par && size_t(M) * K >= (size_t(1) << 16) && M > 1;
  if (a.prefill) a.panels = ceil_div(M, kPanel);
#ifdef EPS_KERNELS_BF16DOT
  if (a.deepseek && (a.amx || bf16_dot_in_use())) {
    const int rows = a.amx ? ceil_div(M, kAmxRows) * kAmxRows : M;  // AMX: whole tiles, zero rows
    a.xt_store.resize(size_t(rows) * Kpad / 2);
    uint32_t* xt = a.xt_store.data();
    std::fill(xt + size_t(M) * Kpad / 2, xt + size_t(rows) * Kpad / 2, 0u);
    parallel_for(M, parallel, [&](int m) {
      const uint8_t* c = a.codes + size_t(m) * K;
      uint32_t* d = xt + size_t(m) * Kpad / 2;
      for (int k = 0; k < Kpad; k += 32) {
        const __m512 lo = simd::widen_fp8x16(simd::load_codes16(c + k, K - k));
        const __m512 hi = simd::widen_fp8x16(simd::load_codes16(c + k + 16, K - k - 16));
        _mm512_store_si512(d + k / 2, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));  // exact: FP8 values fit BF16
      }
    });
    a.xt = xt;
    return;
  }
#endif
  a.xf_store.resize(size_t(M) * Kpad);
  float* xf = a.xf_store.data();
  parallel_for(M, parallel, [&](int m) {
    float* d = xf + size_t(m) * Kpad;
    for (int k = 0; k < Kpad; k += 16)
      _mm512_store_ps(d + k, a.deepseek ? simd::widen_fp8x16(simd::load_codes16(a.codes + size_t(m) * K + k, K - k))
                                        : simd::load_floats16(x + size_t(m) * K + k, K - k));
  });
  a.xf = xf;
}
#endif

#ifdef EPS_KERNELS_AVX512
// BF16 weight tiles (AVX-512): the rows in k order, zero-padded to kb · 128, as the tile kernels
// read them: rounded to BF16 (bf16x: matmul_bf16 in DeepSeek numerics), as BF16 pairs [M][kb · 64]
// where vdpbf16ps is in use (xt), else floats [M][kb · 128] (xf); exact, the caller's floats (xf).
void prepare_bf16_tile_rows(Activations& a, const float* x, bool bf16x, bool par) {
  const int M = a.M, K = a.K, Kpad = a.kb * kQuantBlock;
  const bool parallel = par && size_t(M) * K >= (size_t(1) << 16) && M > 1;
  if (a.prefill) a.panels = ceil_div(M, kPanel);
#ifdef EPS_KERNELS_BF16DOT
  if (bf16x && (a.amx || bf16_dot_in_use())) {
    const int rows = a.amx ? ceil_div(M, kAmxRows) * kAmxRows : M;  // AMX: whole tiles, zero rows
    a.xt_store.resize(size_t(rows) * Kpad / 2);
    uint32_t* xt = a.xt_store.data();
    std::fill(xt + size_t(M) * Kpad / 2, xt + size_t(rows) * Kpad / 2, 0u);
    parallel_for(M, parallel, [&](int m) {
      const float* r = x + size_t(m) * K;
      uint32_t* d = xt + size_t(m) * Kpad / 2;
      for (int k = 0; k < Kpad; k += 32)  // (vcvtne2ps2bf16 rounds to nearest even, as round_to_bf16)
        _mm512_store_si512(d + k / 2, (__m512i)_mm512_cvtne2ps_pbh(simd::load_floats16(r + k + 16, K - k - 16),
                                                                   simd::load_floats16(r + k, K - k)));
    });
    a.xt = xt;
    return;
  }
#endif
  a.xf_store.resize(size_t(M) * Kpad);
  float* xf = a.xf_store.data();
  parallel_for(M, parallel, [&](int m) {
    float* d = xf + size_t(m) * Kpad;
    for (int k = 0; k < Kpad; k += 16) {
      const __m512 v = simd::load_floats16(x + size_t(m) * K + k, K - k);
      _mm512_store_ps(d + k, bf16x ? simd::round_to_bf16x16(v) : v);
    }
  });
  a.xf = xf;
}
#else
// BF16 weights, activations rounded to BF16 (matmul_bf16, DeepSeek numerics): the rounded rows as
// floats through the FP32 kernels (products of two BF16 values are exact in FP32).
void prepare_bf16x(Activations& a, const float* x, bool par) {
  const int M = a.M, K = a.K;
  a.xd.resize(size_t(M) * K);
  float* xd = a.xd.data();
  for (size_t i = 0; i < size_t(M) * K; ++i) xd[i] = round_to_bf16(x[i]);
  prepare_exact(a, xd, par);
}
#endif

// par: whether to use the OpenMP threads (false when called inside a parallel region).
void prepare(Activations& a, const float* x, int M, int K, bool deepseek, const Fp8RowsView* quantized, bool par,
             bool fp8_weights, bool bf16x = false) {
  a.xk = nullptr;
  a.xt = nullptr;
  a.xf = nullptr;
  a.Kp = ceil_div(K, 64) * 64;
  a.x = a.xscale = a.xp = a.xps = a.scales = nullptr;  // the buffers are reused, the views are not
  a.codes = nullptr;
  a.panels = 0;
  a.M = M;
  a.K = K;
  a.kb = ceil_div(K, kQuantBlock);
  a.deepseek = deepseek;
  a.prefill = use_prefill(M);
  // AMX: every M through the prefill items, whose tiles give each output one block sum per
  // 128-block the same way whatever the batch.
  a.amx = amx_in_use() && (fp8_weights ? deepseek : bf16x);
  if (a.amx) a.prefill = true;
#ifdef EPS_KERNELS_AVX512
  if (!fp8_weights) return prepare_bf16_tile_rows(a, x, bf16x, par);
#else
  if (bf16x) return prepare_bf16x(a, x, par);
#endif
  if (deepseek) {
    if (quantized) {
      a.codes = quantized->codes.data();
      a.scales = a.xscale = quantized->scales.data();
    } else {
      quantize_rows(x, M, K, a.q, par);
      a.codes = a.q.codes.data();
      a.scales = a.xscale = a.q.scales.data();
    }
  }
#ifdef EPS_KERNELS_AVX512
  if (fp8_weights) return prepare_tile_rows(a, x, par);
#else
  (void)fp8_weights;
#endif
  if (!deepseek) {
#ifdef EPS_KERNELS_AVX2
    if (!a.prefill) prepare_decode_blocks(a, x, nullptr);
#endif
    return prepare_exact(a, x, par);
  }
#ifndef EPS_KERNELS_AVX512
#ifdef EPS_KERNELS_AVX2
  if (!a.prefill) prepare_decode_blocks(a, nullptr, a.codes);
#endif
  prepare_from_codes(a, par);
#endif
}


#ifdef EPS_KERNELS_AVX2
// Rows [r0, r1) of the weight's next 128-block (the tile after this one), fetched a few rows at a
// time while the microkernels run: issued all at once they fill the miss buffers and stall.
// (Fetching the first tile of the thread's next item as well measured no faster.)
inline void prefetch_next_tile_rows(const Weight& w, int n0, int r0, int r1, int k_next) {
  if (k_next >= w.K) return;
  const int elem = w.is_bf16() ? 2 : 1, bytes = std::min(kQuantBlock, w.K - k_next) * elem;
  const char* base = w.is_bf16() ? reinterpret_cast<const char*>(w.bf16) : reinterpret_cast<const char*>(w.codes);
  for (int r = r0; r < r1; ++r) {
    const char* p = base + (size_t(n0 + r) * w.K + k_next) * elem;
    for (int off = 0; off < bytes; off += 64) _mm_prefetch(p + off, _MM_HINT_T0);
  }
}
#endif

// ---------------------------------------------------------------------------------------------
// Decode kernels: rows [n0, n1) of y for all M (≤ kDecodeMaxM) activation rows.

// Whether 128-block b of a row of K is whole (every block but a short last one). The decode
// kernels instantiate whole blocks apart (kWhole): their loops then have constant counts and
// plain loads, and GCC keeps the partial sums in registers; with a short block's zero-filled
// loads in the same loop it kept them in memory, a store and a reload in every FMA chain (half
// the decode speed on Zen 3).
inline bool whole_block(int K, int b) { return (b + 1) * kQuantBlock <= K; }

#ifdef EPS_KERNELS_AVX512
#include "kernels/matmul_tiles_avx512-inl.h"  // FP8 and BF16 weights, as tiles

void decode_range(const Activations& a, const Weight& w, int n0, int n1, const Out& y) { decode_tiles(a, w, n0, n1, y); }

#elif defined(EPS_KERNELS_AVX2)
#include "kernels/matmul_avx2-inl.h"
#else  // no AVX-512 or AVX2: scalar kernels with the twin's order of operations per element.

void decode_range(const Activations& a, const Weight& w, int n0, int n1, const Out& y) {
  const int K = a.K, kb = a.kb;
  const auto& t = fp8_tables();
  for (int m = 0; m < a.M; ++m)
    for (int n = n0; n < n1; ++n) {
      float acc = 0;
      if (w.is_bf16()) {
        for (int k = 0; k < K; ++k)
          acc += a.x[size_t(m) * K + k] * bf16_to_float(bf16{w.bf16[size_t(n) * K + k]});
        y.row(m)[n] = acc;
        continue;
      }
      for (int b = 0; b < kb; ++b) {
        const int k0 = b * kQuantBlock, k1 = std::min(K, k0 + kQuantBlock);
        float part = 0;
        for (int k = k0; k < k1; ++k) part += a.x[size_t(m) * K + k] * t.f32[w.codes[size_t(n) * K + k]];
        const float ws = w.scales[size_t(n / kQuantBlock) * kb + b];
        acc += part * (a.deepseek ? (a.xscale[size_t(m) * kb + b] * ws) * 65536.0f : ws * 256.0f);
      }
      y.row(m)[n] = a.deepseek ? round_to_bf16(acc) : acc;
    }
}

#endif

// ---------------------------------------------------------------------------------------------
// Work items and the parallel driver.

struct Job {
  const Activations* a;
  Weight w;
  Out y;
};
struct Item {
  int job, n0, n1, p0, p1;  // decode items have p0 = p1 = 0
};

// Decode items: contiguous row ranges of about this many weight bytes (at least one per thread
// for a single product). Each item starts a new stream, whose first misses the prefetches have
// not yet covered: at 128 rows of an expert's [256, 1024] (128 KB) a batch-1 MoE layer's experts
// ran 10% slower than with one item per expert matrix (256 KB), and the lm_head's 265 MB at M = 1
// took 4.1-4.4 ms in 4 MB items against 4.8 ms in 256 KB ones (Zen 5, docs/PERFORMANCE.md). Items
// are still handed out dynamically: a thread that loses its core for a while leaves them to the other.
constexpr size_t kDecodeItemBytes = size_t(4) << 20;

// Items for one product. Decode: contiguous row ranges of about kDecodeItemBytes, at least
// min_items of them (multiples of 16 rows); prefill: fixed-size items.
void add_items(std::vector<Item>& items, int job, const Activations& a, const Weight& w, int min_items) {
  const int N = w.N;
  if (N == 0 || a.M == 0) return;
#ifdef EPS_KERNELS_SIMD
  if (a.prefill) {
    // Items of 128 weight rows × ≤ 128 activation rows: a 128-row weight tile is dequantized once
    // per item, and the item's panels (64 KB per k-block) and FP32 tile (66 KB) stay in L2.
    // Larger items measured slower on Zen 5 (L2 misses), smaller ones repeat the dequantization.
    const int nchunks = ceil_div(N, kNChunk);
    const int pc = std::min(kItemPanels, a.panels);
    for (int nc = 0; nc < nchunks; ++nc)
      for (int p = 0; p < a.panels; p += pc)
        items.push_back({job, nc * kNChunk, std::min(N, (nc + 1) * kNChunk), p, std::min(a.panels, p + pc)});
    return;
  }
#endif
  const size_t row_bytes = size_t(w.K) * (w.is_bf16() ? 2 : 1);
  const int count = std::max(min_items, int(ceil_div(size_t(N) * row_bytes, kDecodeItemBytes)));
#ifdef EPS_KERNELS_AVX512
  const int align = 32;  // tiles: 32 outputs per widening or pair of loads
#else
  const int align = 16;
#endif
  const int step = std::max(align, ceil_div(ceil_div(N, count), align) * align);
  for (int n = 0; n < N; n += step) items.push_back({job, n, std::min(N, n + step), 0, 0});
}

void run_item(const Job& j, const Item& it) {
  const Activations& a = *j.a;
#ifdef EPS_KERNELS_SIMD
  if (a.prefill) {
#ifdef EPS_KERNELS_AVX512
    return prefill_tiles_item(a, j.w, it.n0, it.p0 * kPanel, std::min(a.M, it.p1 * kPanel), j.y);
#else
    return prefill_item(a, j.w, it.n0, it.n1, it.p0, it.p1, j.y);
#endif
  }
#endif
  decode_range(a, j.w, it.n0, it.n1, j.y);
}

void run_items(const std::vector<Job>& jobs, const std::vector<Item>& items, bool dynamic) {
  const int n = int(items.size());
  if (n == 1) return run_item(jobs[items[0].job], items[0]);
  if (dynamic) {
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < n; ++i) run_item(jobs[items[i].job], items[i]);
  } else {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; ++i) run_item(jobs[items[i].job], items[i]);
  }
}

void matmul_one(const float* x, const Fp8RowsView* quantized, int M, const Weight& w, float* y, bool deepseek,
                bool bf16x = false) {
  thread_local Activations a;  // buffers reused by the next call from this thread
  prepare(a, x, M, w.K, deepseek, quantized, true, !w.is_bf16(), bf16x);
  const int threads = omp_get_max_threads();
  std::vector<Job> jobs{{&a, w, Out{y, w.N}}};
  std::vector<Item> items;
  // Decode: items of kDecodeItemBytes handed out dynamically (a thread that loses its core for a
  // while, as on these shared machines, does not hold up a large product), at least one per thread.
  add_items(items, 0, a, w, threads);
  run_items(jobs, items, true);
}

}  // namespace

bool bf16_dot_in_use() {
#ifdef EPS_KERNELS_BF16DOT
  static const bool use = [] {
    if (const char* e = std::getenv("EPSERVE_BF16_DOT")) {
      if (std::strcmp(e, "1") == 0) return true;
      if (std::strcmp(e, "0") == 0) return false;
      // (Not an exception: the first product may run inside an OpenMP region.)
      std::fprintf(stderr, "epserve: EPSERVE_BF16_DOT is \"%s\"; it takes 1 or 0 (ignored: measuring instead)\n", e);
    }
    return bf16_dot_at_least_fma_rate();
  }();
  return use;
#else
  return false;
#endif
}

bool amx_in_use() {
#ifdef EPS_KERNELS_AMX
  static const bool use = [] {
    const char* e = std::getenv("EPSERVE_AMX");
    if (!e || std::strcmp(e, "0") == 0) return false;
    if (std::strcmp(e, "1") != 0) {
      std::fprintf(stderr, "epserve: EPSERVE_AMX is \"%s\"; it takes 1 or 0 (ignored: no AMX)\n", e);
      return false;
    }
    if (request_amx_permission()) return true;
    std::fprintf(stderr, "epserve: EPSERVE_AMX=1, but Linux refused the AMX tile state: vector kernels\n");
    return false;
  }();
  return use;
#else
  return false;
#endif
}

void quantize_rows_fp8(std::span<const float> x, int rows, int cols, Fp8Rows& out) {
  EPS_REQUIRE(x.size() >= size_t(rows) * cols, "quantize_rows_fp8: input too small");
  quantize_rows(x.data(), rows, cols, out, true);
}

size_t fp8_tiles_bytes(int rows, int cols) {
#ifdef EPS_KERNELS_AVX512
  return size_t(ceil_div(rows, kQuantBlock)) * ceil_div(cols, kQuantBlock) * kQuantBlock * kQuantBlock;
#else
  (void)rows, (void)cols;
  return 0;
#endif
}

void pack_fp8_tiles(const Fp8Matrix& w, std::span<uint8_t> out) {
  EPS_REQUIRE(out.size() == fp8_tiles_bytes(w.rows, w.cols), "pack_fp8_tiles: output of the wrong size");
#ifdef EPS_KERNELS_AVX512
  EPS_REQUIRE(w.codes.size() >= size_t(w.rows) * w.cols, "pack_fp8_tiles: weight codes too small");
  const int nbs = ceil_div(w.rows, kTileN), kb = ceil_div(w.cols, kQuantBlock);
  // The widening keeps each pair (k, k + 1) together (source positions 2j, 2j + 1 hold codes 2i,
  // 2i + 1), so the packing moves 16-bit pairs: pair j of each 64 bytes comes from pair word[j].
  const auto& source = fp8_tile_source();
  std::array<int, 32> word{};
  for (int j = 0; j < 32; ++j) {
    EPS_REQUIRE(source[size_t(2 * j)] % 2 == 0 && source[size_t(2 * j) + 1] == source[size_t(2 * j)] + 1,
                "pack_fp8_tiles: the widening splits pairs");
    word[size_t(source[size_t(2 * j)] / 2)] = j;
  }
  const uint8_t* codes = w.codes.data();
  // (One thread: loading calls this for thousands of small matrices, and a parallel region per
  // matrix cost more in barriers than the packing itself.)
  for (long t = 0; t < long(nbs) * kb; ++t) {
    const int nb = int(t / kb), b = int(t % kb);
    // The block, zero-padded, as pairs [n][64]; then written as [k-pair][n] in the widening's order.
    alignas(64) uint16_t in[kTileN][kTilePairs] = {};
    const int rows = std::min(kTileN, w.rows - nb * kTileN), cols = std::min(kQuantBlock, w.cols - b * kQuantBlock);
    for (int r = 0; r < rows; ++r)
      std::memcpy(in[r], codes + size_t(nb * kTileN + r) * w.cols + size_t(b) * kQuantBlock, size_t(cols));
    uint16_t* tile = reinterpret_cast<uint16_t*>(out.data() + size_t(t) * kTileBytes);
    for (int kp = 0; kp < kTilePairs; ++kp)
      for (int g = 0; g < kTileN / 32; ++g) {
        uint16_t* dst = tile + size_t(kp) * kTileN + 32 * g;
        for (int j = 0; j < 32; ++j) dst[j] = in[32 * g + word[size_t(j)]][kp];
      }
  }
#endif
}

size_t bf16_tiles_bytes(int rows, int cols) { return 2 * fp8_tiles_bytes(rows, cols); }

void pack_bf16_tiles(const Bf16Matrix& w, std::span<uint8_t> out) {
  EPS_REQUIRE(out.size() == bf16_tiles_bytes(w.rows, w.cols), "pack_bf16_tiles: output of the wrong size");
#ifdef EPS_KERNELS_AVX512
  EPS_REQUIRE(w.values.size() >= size_t(w.rows) * w.cols, "pack_bf16_tiles: weight values too small");
  const int nbs = ceil_div(w.rows, kTileN), kb = ceil_div(w.cols, kQuantBlock);
  const long count = long(nbs) * kb;
  // (Over the threads for the lm_head's 8,000 tiles; a gate's 16 on the calling one.)
  parallel_for(count, count >= 256, [&](long t) {
    const int nb = int(t / kb), b = int(t % kb);
    uint32_t* tile = reinterpret_cast<uint32_t*>(out.data() + size_t(t) * 2 * kTileBytes);
    const int rows = std::min(kTileN, w.rows - nb * kTileN), cols = std::min(kQuantBlock, w.cols - b * kQuantBlock);
    std::memset(tile, 0, 2 * kTileBytes);
    for (int c = 0; c < rows; ++c) {
      const bf16* src = w.values.data() + size_t(nb * kTileN + c) * w.cols + size_t(b) * kQuantBlock;
      for (int k = 0; k < cols; ++k) tile[size_t(k / 2) * kTileN + c] |= uint32_t(src[k].bits) << (16 * (k % 2));
    }
  });
#endif
}

void matmul_fp8(std::span<const float> x, int M, const Fp8Matrix& w, std::span<float> y, Numerics mode) {
  EPS_REQUIRE(x.size() >= size_t(M) * w.cols && y.size() >= size_t(M) * w.rows, "matmul_fp8: buffer too small");
  matmul_one(x.data(), nullptr, M, view(w), y.data(), mode == Numerics::kDeepSeek);
}

void matmul_fp8_quantized(Fp8RowsView x, const Fp8Matrix& w, std::span<float> y) {
  EPS_REQUIRE(x.cols == w.cols, "matmul_fp8_quantized: x.cols != w.cols");
  EPS_REQUIRE(x.codes.size() >= size_t(x.rows) * x.cols &&
                  x.scales.size() >= size_t(x.rows) * ceil_div(x.cols, kQuantBlock),
              "matmul_fp8_quantized: activations too small");
  EPS_REQUIRE(y.size() >= size_t(x.rows) * w.rows, "matmul_fp8_quantized: output too small");
  matmul_one(nullptr, &x, x.rows, view(w), y.data(), true);
}

void matmul_fp8_grouped(std::span<const Fp8MatmulTask> tasks, Numerics mode) {
  const int T = int(tasks.size());
  if (T == 0) return;
  const bool deepseek = mode == Numerics::kDeepSeek;
  for (const auto& t : tasks) {
    EPS_REQUIRE(t.w != nullptr, "matmul_fp8_grouped: task without weight");
    if (t.y_rows.empty())
      EPS_REQUIRE(t.y.size() >= size_t(t.M) * t.w->rows, "matmul_fp8_grouped: output too small");
    else
      EPS_REQUIRE(t.y_rows.size() == size_t(t.M), "matmul_fp8_grouped: y_rows must hold one pointer per row");
    if (t.xq) {
      EPS_REQUIRE(t.xq->rows == t.M && t.xq->cols == t.w->cols, "matmul_fp8_grouped: quantized rows do not match M, w->cols");
      EPS_REQUIRE(t.xq->codes.size() >= size_t(t.M) * t.w->cols &&
                      t.xq->scales.size() >= size_t(t.M) * ceil_div(t.w->cols, kQuantBlock),
                  "matmul_fp8_grouped: quantized rows too small");
    } else {
      EPS_REQUIRE(t.x.size() >= size_t(t.M) * t.w->cols, "matmul_fp8_grouped: input too small");
    }
  }
  // Phase 1: quantize / pack each task's activations (parallel over tasks).
  // Buffers reused by the next call from this thread. (Inside the parallel regions below, the
  // name would be the worker's own thread_local: use the pointer.)
  thread_local std::vector<Activations> acts_store;
  if (int(acts_store.size()) < T) acts_store.resize(T);
  Activations* acts = acts_store.data();
  // A task with the same input as the one before it (an expert's gate and up products) uses its
  // packed activations: the same bytes, prepared once.
  std::vector<int> unique, buffer(static_cast<size_t>(T));  // buffer: the acts entry task i reads
  std::vector<char> same_as_before(static_cast<size_t>(T), 0);
  for (int i = 0; i < T; ++i) {
    const auto& t = tasks[i];
    same_as_before[size_t(i)] = i > 0 && t.x.data() == tasks[i - 1].x.data() && t.xq == tasks[i - 1].xq &&
                                t.M == tasks[i - 1].M && t.w->cols == tasks[i - 1].w->cols;
    if (!same_as_before[size_t(i)]) unique.push_back(i);
  }
  // The buffers go to the inputs by size, largest first, so that each holds about the same size
  // call after call (the u-th largest expert's rows). Handed out by task position, an expert's
  // rows met buffers sized for whichever expert had held that position before: they grew until
  // each could hold the largest expert, and each growth faulted in fresh pages (500-1,600 page
  // faults, 5-15 ms, per MoE layer of a 2,048-token prefill).
  std::stable_sort(unique.begin(), unique.end(), [&](int l, int r) {
    return size_t(tasks[l].M) * tasks[l].w->cols > size_t(tasks[r].M) * tasks[r].w->cols;
  });
  for (size_t u = 0; u < unique.size(); ++u) buffer[size_t(unique[u])] = int(u);
  for (int i = 1; i < T; ++i)
    if (same_as_before[size_t(i)]) buffer[size_t(i)] = buffer[size_t(i) - 1];
  const int U = int(unique.size());
  // (Over the threads only when there is enough to prepare: a decode step's handful of rows
  // prepared serially took less than the parallel region did.)
  size_t prepared = 0;
  for (int i : unique) prepared += size_t(tasks[i].M) * tasks[i].w->cols;
  parallel_for_dynamic(U, U > 1 && prepared >= (size_t(1) << 16), [&](int u) {
    const int i = unique[size_t(u)];
    prepare(acts[u], tasks[i].x.data(), tasks[i].M, tasks[i].w->cols, deepseek || tasks[i].xq, tasks[i].xq, U == 1, true);
  });
  // Phase 2: (task, output block) items, largest products first so that the tail is short.
  std::vector<Job> jobs;
  jobs.reserve(T);
  std::vector<Item> items;
  const int threads = omp_get_max_threads();
  for (int i = 0; i < T; ++i) {
    const auto& t = tasks[i];
    jobs.push_back({&acts[buffer[size_t(i)]], view(*t.w), Out{t.y.data(), t.w->rows, t.y_rows.empty() ? nullptr : t.y_rows.data()}});
    // Decode: items of kDecodeItemBytes (at least one per thread for a single product); prefill:
    // its natural items.
    add_items(items, i, *jobs.back().a, jobs.back().w, T == 1 ? threads : 1);
  }
  std::stable_sort(items.begin(), items.end(), [&](const Item& l, const Item& r) {
    auto cost = [&](const Item& it) {
      const auto& a = *jobs[it.job].a;
      const int rows = a.prefill ? std::min(a.M, it.p1 * kPanel) - it.p0 * kPanel : a.M;
      return double(rows) * (it.n1 - it.n0) * a.K;
    };
    return cost(l) > cost(r);
  });
  run_items(jobs, items, true);
}

void matmul_bf16(std::span<const float> x, int M, const Bf16Matrix& w, std::span<float> y, Numerics mode) {
  EPS_REQUIRE(x.size() >= size_t(M) * w.cols && y.size() >= size_t(M) * w.rows, "matmul_bf16: buffer too small");
  matmul_one(x.data(), nullptr, M, view(w), y.data(), false, mode == Numerics::kDeepSeek);
}

}  // namespace epserve::kernels
