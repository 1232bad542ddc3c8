// Matrix products of activations with DeepSeek-V3's weights. Weights are stored [out, in]
// (y = x·Wᵀ); linear layers are FP8 E4M3 with one FP32 scale per 128×128 block, the gate and the
// lm_head are BF16.
//
// Numerics (see docs/ARCHITECTURE.md, "Numerics"):
// - Numerics::kExact: activations stay FP32, weights dequantized exactly, FP32 accumulation.
// - Numerics::kDeepSeek: activations quantized per row per 128 columns to E4M3
//   (scale = max(amax, 1e-4) / 448), the 128-wide partial sums accumulated in FP32 and multiplied by
//   both block scales, outputs rounded to BF16 — DeepGEMM's 1×128 × 128×128 scheme.
//
// Every function has a scalar `_reference` twin (matmul_reference.cpp) that the tests compare with.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "base/bf16.h"

namespace epserve::kernels {

enum class Numerics { kExact, kDeepSeek };

constexpr int kQuantBlock = 128;

constexpr int ceil_div(int a, int b) { return (a + b - 1) / b; }

// A linear layer's weight as the checkpoint stores it (views into mmap'd memory), with the same
// codes in the kernels' tile layout where this build's kernels read that instead.
struct Fp8Matrix {
  std::span<const uint8_t> codes;        // [rows, cols] E4M3
  std::span<const float> block_scales;   // [ceil(rows/128), ceil(cols/128)] (weight_scale_inv)
  int rows = 0;
  int cols = 0;
  std::span<const uint8_t> tiles;        // pack_fp8_tiles(*this): required by the AVX-512 kernels
};

// The codes of w in the layout the AVX-512 kernels read (docs/ARCHITECTURE.md, "Kernels"): each
// 128 × 128 block as 64 k-pairs × 128 outputs × 2 codes (zero-padded to whole blocks), so that a
// product adds each output's terms in one chain over k, in decode and prefill alike. None (0 bytes)
// in builds whose kernels read `codes` as stored (AVX2, scalar). The caller owns the bytes and sets
// `w.tiles` to them; they are only valid with the `codes` they were packed from.
size_t fp8_tiles_bytes(int rows, int cols);
void pack_fp8_tiles(const Fp8Matrix& w, std::span<uint8_t> out);  // out: fp8_tiles_bytes long

struct Bf16Matrix {
  std::span<const bf16> values;  // [rows, cols]
  int rows = 0;
  int cols = 0;
  std::span<const uint8_t> tiles;  // pack_bf16_tiles(*this): required by the AVX-512 kernels
};

// The same tile layout for BF16 weights (the lm_head, the router gates): each 128 × 128 block as
// 64 k-pairs × 128 outputs × 2 values (value k in the low half of each 32-bit pair), zero-padded,
// so that the FP8 tiles' kernels run them with the loads in place of the widening. None (0 bytes)
// in builds whose kernels read `values` as stored.
size_t bf16_tiles_bytes(int rows, int cols);
void pack_bf16_tiles(const Bf16Matrix& w, std::span<uint8_t> out);  // out: bf16_tiles_bytes long

// Activations quantized per row per 128 columns (what DeepSeek dispatches between ranks).
struct Fp8Rows {
  std::vector<uint8_t> codes;   // [rows, cols]
  std::vector<float> scales;    // [rows, ceil(cols/128)]; value = fp8(code) * scale
  int rows = 0;
  int cols = 0;
};

// Quantized rows held elsewhere: an Fp8Rows, or a run of rows within a larger buffer (one routed
// expert's rows among all experts' inputs).
struct Fp8RowsView {
  std::span<const uint8_t> codes;  // [rows, cols]
  std::span<const float> scales;   // [rows, ceil(cols/128)]
  int rows = 0;
  int cols = 0;
  Fp8RowsView() = default;
  Fp8RowsView(const Fp8Rows& r) : codes(r.codes), scales(r.scales), rows(r.rows), cols(r.cols) {}  // NOLINT: implicit
};

void quantize_rows_fp8(std::span<const float> x, int rows, int cols, Fp8Rows& out);

// y[M, w.rows] = x[M, w.cols] · wᵀ.
void matmul_fp8(std::span<const float> x, int M, const Fp8Matrix& w, std::span<float> y, Numerics mode);
// DeepSeek numerics on already-quantized rows.
void matmul_fp8_quantized(Fp8RowsView x, const Fp8Matrix& w, std::span<float> y);

// Many independent products in one parallel region (one per routed expert, say): small M per task
// still keeps both cores busy, and each weight is streamed once for all of its task's rows.
struct Fp8MatmulTask {
  std::span<const float> x;  // [M, w->cols]
  int M = 0;
  const Fp8Matrix* w = nullptr;
  std::span<float> y;        // [M, w->rows]
  // When set: these already-quantized rows (M of them) instead of x, DeepSeek numerics whatever
  // the call's mode (as matmul_fp8_quantized; bit-identical to it).
  const Fp8RowsView* xq = nullptr;
  // When set (M pointers to w->rows floats each): output row m goes to y_rows[m] instead of
  // y[m·w->rows ...] (the same values), so that the caller needs no copy to scatter them.
  std::span<float* const> y_rows = {};
};
void matmul_fp8_grouped(std::span<const Fp8MatmulTask> tasks, Numerics mode);

// y[M, w.rows] = x[M, w.cols] · wᵀ with BF16 weights and FP32 accumulation, FP32 outputs.
// - Numerics::kExact: FP32 activations (FP32 FMAs).
// - Numerics::kDeepSeek: the activations rounded to BF16 first (a no-op where they already are
//   BF16 values, as the lm_head's input is in DeepSeek numerics), so every product is exact in FP32
//   and the kernels may use vdpbf16ps (AVX512-BF16: twice the FMA rate); only the order of the FP32
//   additions differs from the twin (and vdpbf16ps flushes FP32-subnormal inputs and results to 0).
void matmul_bf16(std::span<const float> x, int M, const Bf16Matrix& w, std::span<float> y,
                 Numerics mode = Numerics::kExact);

// Whether DeepSeek-numerics products (FP8 weights; BF16 weights with activations rounded to BF16)
// multiply their BF16-exact pairs with vdpbf16ps or as two FP32 FMAs. vdpbf16ps where the build
// has AVX512-BF16 and this CPU runs it at least at the FMA rate (roofline.h): twice it on Zen 5,
// half of it on an Intel Xeon with AMX, where the FP32 path was 35% faster in prefill. Decided once
// per process, at the first product; EPSERVE_BF16_DOT=1 or 0 decides instead (the kernel tests run
// both). Both keep one chain per output and 128-block; they differ in how the two products of a
// pair are added to it (rounding), both within the twin's bounds.
bool bf16_dot_in_use();
// Whether those products run on AMX tiles instead (TDPBF16PS), decode and prefill alike, so that a
// row's result still does not depend on the batch (AMX sums a block's pairs its own way). Opt-in
// for now, EPSERVE_AMX=1, where the build targets AMX and Linux grants the tile state: the cpu
// preset of the simulator has no constants for it yet.
bool amx_in_use();

// Scalar twins: plain loops, the same numerics, no threads.
void quantize_rows_fp8_reference(std::span<const float> x, int rows, int cols, Fp8Rows& out);
void matmul_fp8_reference(std::span<const float> x, int M, const Fp8Matrix& w, std::span<float> y,
                          Numerics mode);
void matmul_bf16_reference(std::span<const float> x, int M, const Bf16Matrix& w, std::span<float> y,
                           Numerics mode = Numerics::kExact);

}  // namespace epserve::kernels
