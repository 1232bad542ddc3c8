// Small element-wise pieces of the forward pass, in FP32 (the compiler vectorizes these loops).
#pragma once
#include <cmath>
#include <span>

#include "base/bf16.h"
#include "kernels/matmul.h"

namespace epserve::model {

using kernels::Numerics;

// In DeepSeek numerics every activation tensor between operators is BF16; in exact mode FP32.
inline void round_activations(std::span<float> x, Numerics mode) {
  if (mode == Numerics::kDeepSeek)
    for (float& v : x) v = round_to_bf16(v);
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
