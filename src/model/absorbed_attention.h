// MLA's weight-absorbed path (decode) for one token and a group of heads: attention over the
// sequence's latent cache rows [latent (lora) | rotated shared key (rope)] themselves, kv_b_proj's
// key part folded into the query and its value part applied to the attended latent. A SIMD kernel
// and a scalar twin that does the same operations in the same order, so the two agree bit for bit
// (and a head's result never depends on which heads or threads share its call).
//
// Per head (q = [nope | rope]; U = kv_b_proj's key rows [nope][lora]; Vᵀ = its value rows
// transposed, [lora][v]), each sum a chain of FMAs in the order given:
//   qrow[e] = Σ_j q[j] · U[j][e]           (j ascending, e < lora; BF16 in DeepSeek numerics),
//             then qrow[lora + r] = q[nope + r]
//   s_i     = scale · dot16(qrow, row_i)   (over lora + rope, a multiple of 16)
//   p       = softmax_probabilities(s)
//   lat[e]  = Σ_i p_i · row_i[e]           (i ascending, e < lora; BF16 in DeepSeek numerics)
//   o[e]    = Σ_c lat[c] · Vᵀ[c][e]        (c ascending, e < v; BF16 in DeepSeek numerics)
// dot16 is the decode kernels' order (kernels/matmul.cpp): 16 lane chains, chain l over the
// positions d ≡ l (mod 16) ascending, combined by the halving tree (l + (l+8), then l + (l+4),
// l + (l+2), l + (l+1)). The SIMD kernel keeps output elements across the vector lanes for the
// other sums, and a 16-lane chain in one vector (AVX-512) or two (AVX2) for dot16.
#pragma once
#include <algorithm>
#include <span>
#include <vector>

#include "base/bf16.h"
#include "kernels/matmul.h"

namespace epserve::model {

struct AbsorbedHeads {
  int heads = 0;  // heads in this call
  int nope = 0, rope = 0, v = 0, lora = 0;
  float scale = 1;
  const float* q = nullptr;  // [heads][nope + rope]
  // kv_b_proj of these heads in the absorbed layout (absorbed_kv_b), FP32 or BF16: one of the two.
  const float* kvb_f32 = nullptr;
  const bf16* kvb_bf16 = nullptr;
  int rows = 0;  // cache rows attended
  // Row i → [lora + rope] values, FP32 or BF16 (as the cache pool holds them): one of the two.
  const float* const* rows_f32 = nullptr;
  const bf16* const* rows_bf16 = nullptr;
  float* o = nullptr;  // [heads][v]
};

// kv_b_proj [heads · (nope + v)][lora] (dequantized) → the absorbed layout: per head U [nope][lora],
// then Vᵀ [lora][v], so that both products run along contiguous rows.
template <typename T>
std::vector<T> absorbed_kv_b(std::span<const T> kv_b, int heads, int nope, int v, int lora) {
  std::vector<T> out(kv_b.size());
  for (int h = 0; h < heads; ++h) {
    const T* src = kv_b.data() + size_t(h) * (nope + v) * lora;
    T* dst = out.data() + size_t(h) * (nope + v) * lora;
    std::copy_n(src, size_t(nope) * lora, dst);
    for (int e = 0; e < v; ++e)
      for (int c = 0; c < lora; ++c) dst[size_t(nope) * lora + size_t(c) * v + e] = src[size_t(nope + e) * lora + c];
  }
  return out;
}

void attend_absorbed_heads(const AbsorbedHeads& a, kernels::Numerics mode);
void attend_absorbed_heads_reference(const AbsorbedHeads& a, kernels::Numerics mode);

}  // namespace epserve::model
