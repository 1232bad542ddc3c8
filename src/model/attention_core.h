// The core of MLA's naive (expanded) path for one head: causal attention of a chunk of queries over
// keys and values already expanded from the latent cache. Blocked for SIMD (8 queries × 32 keys per
// score tile, 4 queries × 64 values per P·V tile) with a scalar twin that does the same operations in the same
// order, so the two agree bit for bit and a query's result never depends on the block it fell in
// (prefix hits and chunked prefill recompute rows in other blocks).
//
// Per query i (position base + i) over keys j = 0 .. base + i:
//   s_ij = scale · (((q_i0·k_j0 + q_i1·k_j1) + ...) + q_i,dq-1·k_j,dq-1)   (FMAs, d ascending)
//   p_i  = softmax(s_i)                                                 (BF16 in DeepSeek numerics)
//   o_i  = ((p_i0·v_0 + p_i1·v_1) + ...)                                (FMAs, j ascending)
#pragma once
#include <span>

#include "kernels/matmul.h"

namespace epserve::model {

struct HeadAttention {
  int dq = 0;      // query and key width (nope + rope)
  int dv = 0;      // value width
  int base = 0;    // query i sees keys 0 .. base + i
  int count = 0;   // queries
  float scale = 1;
  const float* q = nullptr;   // [count][dq]
  const float* kt = nullptr;  // keys transposed: key j's element d at kt[d * ldk + j]
  int ldk = 0;                // attention_key_stride(base + count); columns past the keys are zero
  const float* v = nullptr;   // [base + count][dv]
  float* o = nullptr;         // [count][dv]
};

// ldk for `keys` keys: the row stride attend_head needs (whole 32-key tiles).
constexpr int attention_key_stride(int keys) { return (keys + 31) / 32 * 32; }

// softmax over s in place (FP32 statistics); probabilities BF16 in DeepSeek numerics, as the BF16
// P·V product of FlashMLA takes them. Both attention paths use it.
void softmax_probabilities(std::span<float> s, kernels::Numerics mode);

void attend_head(const HeadAttention& a, kernels::Numerics mode);
void attend_head_reference(const HeadAttention& a, kernels::Numerics mode);

}  // namespace epserve::model
