// Scalar twins of the matmul kernels: the definition of their numerics, in plain loops.
#include <algorithm>
#include <cmath>

#include "base/error.h"
#include "base/fp8.h"
#include "kernels/matmul.h"

namespace epserve::kernels {

void quantize_rows_fp8_reference(std::span<const float> x, int rows, int cols, Fp8Rows& out) {
  const int blocks = ceil_div(cols, kQuantBlock);
  out.rows = rows;
  out.cols = cols;
  out.codes.resize(size_t(rows) * cols);
  out.scales.resize(size_t(rows) * blocks);
  for (int r = 0; r < rows; ++r) {
    for (int b = 0; b < blocks; ++b) {
      const int k0 = b * kQuantBlock, k1 = std::min(cols, k0 + kQuantBlock);
      float amax = 0;
      for (int k = k0; k < k1; ++k) amax = std::max(amax, std::fabs(x[size_t(r) * cols + k]));
      const float scale = std::max(amax, 1e-4f) / kFp8Max;
      out.scales[size_t(r) * blocks + b] = scale;
      for (int k = k0; k < k1; ++k)
        out.codes[size_t(r) * cols + k] = float_to_fp8_e4m3(x[size_t(r) * cols + k] / scale);
    }
  }
}

void matmul_fp8_reference(std::span<const float> x, int M, const Fp8Matrix& w, std::span<float> y,
                          Numerics mode) {
  const int N = w.rows, K = w.cols, kb = ceil_div(K, kQuantBlock);
  EPS_REQUIRE(x.size() >= size_t(M) * K && y.size() >= size_t(M) * N, "matmul_fp8: buffer too small");
  const auto& table = fp8_e4m3_table();
  Fp8Rows q;
  if (mode == Numerics::kDeepSeek) quantize_rows_fp8_reference(x, M, K, q);
  for (int m = 0; m < M; ++m) {
    for (int n = 0; n < N; ++n) {
      float acc = 0;
      for (int b = 0; b < kb; ++b) {
        const int k0 = b * kQuantBlock, k1 = std::min(K, k0 + kQuantBlock);
        const float wscale = w.block_scales[size_t(n / kQuantBlock) * kb + b];
        float partial = 0;
        if (mode == Numerics::kDeepSeek) {
          for (int k = k0; k < k1; ++k)
            partial += table[q.codes[size_t(m) * K + k]] * table[w.codes[size_t(n) * K + k]];
          acc += partial * (q.scales[size_t(m) * kb + b] * wscale);
        } else {
          for (int k = k0; k < k1; ++k) partial += x[size_t(m) * K + k] * table[w.codes[size_t(n) * K + k]];
          acc += partial * wscale;
        }
      }
      y[size_t(m) * N + n] = mode == Numerics::kDeepSeek ? round_to_bf16(acc) : acc;
    }
  }
}

void matmul_bf16_reference(std::span<const float> x, int M, const Bf16Matrix& w, std::span<float> y,
                           Numerics mode) {
  const int N = w.rows, K = w.cols;
  EPS_REQUIRE(x.size() >= size_t(M) * K && y.size() >= size_t(M) * N, "matmul_bf16: buffer too small");
  const bool deepseek = mode == Numerics::kDeepSeek;
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      float acc = 0;
      for (int k = 0; k < K; ++k) {
        const float xv = deepseek ? round_to_bf16(x[size_t(m) * K + k]) : x[size_t(m) * K + k];
        acc += xv * bf16_to_float(w.values[size_t(n) * K + k]);  // DeepSeek: an exact product
      }
      y[size_t(m) * N + n] = acc;
    }
}

}  // namespace epserve::kernels
