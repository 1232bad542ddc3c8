// Small element-wise pieces of the forward pass, in FP32 (the compiler vectorizes these loops).
#pragma once
#include <cmath>
#include <span>

#include "base/bf16.h"
#include "kernels/matmul.h"

namespace epserve::model {

using kernels::Numerics;

// In DeepSeek numerics every activation tensor between operators is BF16; in exact mode FP32.
// Large tensors (a prefill's T × hidden) over the threads: run on one, these element-wise passes
// left the other thread idle for a tenth of a two-thread prefill. Small ones (a head's row, called
// thousands of times per step) never touch OpenMP: even a parallel region whose `if` is false
// costs about a microsecond.
inline void round_activations(std::span<float> x, Numerics mode) {
  if (mode != Numerics::kDeepSeek) return;
  float* p = x.data();
  const long n = long(x.size());
  if (n < (1 << 16)) {
    for (long i = 0; i < n; ++i) p[i] = round_to_bf16(p[i]);
    return;
  }
#pragma omp parallel for schedule(static)
  for (long i = 0; i < n; ++i) p[i] = round_to_bf16(p[i]);
}

// out = w ⊙ x / sqrt(mean(x²) + eps), statistics in FP32 (reference §4).
inline void rms_norm(std::span<const float> x, std::span<const float> w, double eps, std::span<float> out) {
  float sum = 0;
#pragma omp simd reduction(+ : sum)
  for (size_t i = 0; i < x.size(); ++i) sum += x[i] * x[i];
  const float inv = 1.0f / std::sqrt(sum / float(x.size()) + float(eps));
  for (size_t i = 0; i < x.size(); ++i) out[i] = w[i] * (x[i] * inv);
}

inline float silu(float z) { return z / (1.0f + std::exp(-z)); }
inline float sigmoid(float z) { return 1.0f / (1.0f + std::exp(-z)); }

}  // namespace epserve::model
