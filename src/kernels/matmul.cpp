// Fast matmul kernels (placeholder: parallel loops over the scalar twin's numerics; SIMD to come).
#include <omp.h>

#include <algorithm>

#include "base/error.h"
#include "kernels/matmul.h"

namespace epserve::kernels {

void quantize_rows_fp8(std::span<const float> x, int rows, int cols, Fp8Rows& out) {
  quantize_rows_fp8_reference(x, rows, cols, out);
}

void matmul_fp8(std::span<const float> x, int M, const Fp8Matrix& w, std::span<float> y, Numerics mode) {
  const int K = w.cols, N = w.rows;
#pragma omp parallel for schedule(static)
  for (int m = 0; m < M; ++m)
    matmul_fp8_reference(x.subspan(size_t(m) * K, K), 1, w, y.subspan(size_t(m) * N, N), mode);
}

void matmul_fp8_quantized(const Fp8Rows& x, const Fp8Matrix& w, std::span<float> y) {
  EPS_REQUIRE(false, "matmul_fp8_quantized: not built yet");
}

void matmul_fp8_grouped(std::span<const Fp8MatmulTask> tasks, Numerics mode) {
  for (const auto& t : tasks) matmul_fp8(t.x, t.M, *t.w, t.y, mode);
}

void matmul_bf16(std::span<const float> x, int M, const Bf16Matrix& w, std::span<float> y) {
  const int N = w.rows, K = w.cols;
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n)
    for (int m = 0; m < M; ++m) {
      float acc = 0;
      for (int k = 0; k < K; ++k) acc += x[size_t(m) * K + k] * bf16_to_float(w.values[size_t(n) * K + k]);
      y[size_t(m) * N + n] = acc;
    }
}

}  // namespace epserve::kernels
