#include "model/mla.h"

#include <algorithm>
#include <cmath>

#include "base/bf16.h"
#include "base/parallel.h"
#include "base/scratch.h"
#include "kernels/simd.h"
#include "model/absorbed_attention.h"
#include "model/attention_core.h"
#include "model/ops.h"

namespace epserve::model {

using kernels::matmul_fp8;
using kernels::Numerics;

namespace {

struct Dims {
  int heads, nope, rope, v, lora, qk, width;
  explicit Dims(const ModelConfig& c)
      : heads(c.num_attention_heads), nope(c.qk_nope_head_dim), rope(c.qk_rope_head_dim), v(c.v_head_dim),
        lora(c.kv_lora_rank), qk(c.qk_nope_head_dim + c.qk_rope_head_dim), width(c.kv_lora_rank + c.qk_rope_head_dim) {}
};

// dst[c·ld_dst + r] = src[r·ld_src + c] for r < rows, c < cols: 16 × 16 blocks transposed in
// registers with AVX-512 (the keys of a head, laid out key-minor for the attention core).
void transpose_into(const float* src, size_t ld_src, int rows, int cols, float* dst, size_t ld_dst) {
#if defined(__AVX512F__) && defined(__AVX512BW__)
  for (int r0 = 0; r0 < rows; r0 += 16)
    for (int c0 = 0; c0 < cols; c0 += 16) {
      const __mmask16 in_cols = kernels::simd::first_lanes16(cols - c0), in_rows = kernels::simd::first_lanes16(rows - r0);
      __m512i v[16];
      for (int i = 0; i < 16; ++i)
        v[i] = r0 + i < rows ? _mm512_maskz_loadu_epi32(in_cols, src + size_t(r0 + i) * ld_src + c0) : _mm512_setzero_si512();
      kernels::simd::transpose16x16_epi32(v);
      for (int c = 0; c < std::min(16, cols - c0); ++c) _mm512_mask_storeu_epi32(dst + size_t(c0 + c) * ld_dst + r0, in_rows, v[c]);
    }
#else
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) dst[size_t(c) * ld_dst + r] = src[size_t(r) * ld_src + c];
#endif
}

// Naive path for one sequence: keys and values expanded from the latent for every cached token,
// then each head's causal attention (attention_core.h) over its keys laid out for it.
void attend_naive(const AttentionWeights& w, const Dims& D, float scale, const SequenceKv& kv, int layer, int len,
                  int first, int count, const std::vector<float>& q, std::vector<float>& o, Numerics mode) {
  auto& cache = scratch<struct NaiveCacheRows>(size_t(len) * D.width);
  auto& latent = scratch<struct NaiveLatent>(size_t(len) * D.lora);
  kv.read_rows(layer, 0, len, cache);
  for (int t = 0; t < len; ++t)
    std::copy_n(&cache[size_t(t) * D.width], D.lora, &latent[size_t(t) * D.lora]);
  const int kvb_width = D.heads * (D.nope + D.v);
  auto& kvb = scratch<struct NaiveKvExpanded>(size_t(len) * kvb_width);
  matmul_fp8(latent, len, w.kv_b, kvb, mode);
  const int ldk = attention_key_stride(len);
#pragma omp parallel for schedule(dynamic)
  for (int h = 0; h < D.heads; ++h) {
    // This head's keys transposed ([nope | rope] × keys, zero-padded), values and queries as rows.
    auto& kt = scratch<struct NaiveHeadKeys>(size_t(D.qk) * ldk);  // (each OpenMP thread its own)
    for (int d = 0; d < D.qk; ++d) std::fill(kt.begin() + long(d) * ldk + len, kt.begin() + long(d + 1) * ldk, 0.0f);
    auto& v = scratch<struct NaiveHeadValues>(size_t(len) * D.v);
    auto& qh = scratch<struct NaiveHeadQueries>(size_t(count) * D.qk);
    auto& oh = scratch<struct NaiveHeadOut>(size_t(count) * D.v);
    const float* head_kvb = &kvb[size_t(h) * (D.nope + D.v)];
    transpose_into(head_kvb, kvb_width, len, D.nope, kt.data(), ldk);
    transpose_into(&cache[D.lora], D.width, len, D.rope, kt.data() + size_t(D.nope) * ldk, ldk);
    for (int j = 0; j < len; ++j) std::copy_n(head_kvb + size_t(j) * kvb_width + D.nope, D.v, &v[size_t(j) * D.v]);
    for (int i = 0; i < count; ++i) std::copy_n(&q[(size_t(first + i) * D.heads + h) * D.qk], D.qk, &qh[size_t(i) * D.qk]);
    HeadAttention a;
    a.dq = D.qk;
    a.dv = D.v;
    a.base = len - count;
    a.count = count;
    a.scale = scale;
    a.q = qh.data();
    a.kt = kt.data();
    a.ldk = ldk;
    a.v = v.data();
    a.o = oh.data();
    attend_head(a, mode);
    for (int i = 0; i < count; ++i) {
      float* out = &o[(size_t(first + i) * D.heads + h) * D.v];
      std::copy_n(&oh[size_t(i) * D.v], D.v, out);
      round_activations({out, size_t(D.v)}, mode);
    }
  }
}

// A sequence's tokens that take the absorbed path: its cache holds len rows, the tokens are
// rows first..first+count of q and o.
struct AbsorbedSeq {
  const SequenceKv* kv;
  int len, first, count;
};

// Absorbed path: attention over the latent itself, kv_b_proj folded into query and output
// (model/absorbed_attention.h). Items of up to four heads of one token, heads outermost, in one
// parallel region: a thread's items share its heads' kv_b_proj slices (64 KB each in BF16 on the
// bench model), which stay in its L2 from token to token; at batch 1 the two threads take half
// the heads each. The cache rows are read in place (FP32 or BF16, whichever the pool holds).
void attend_absorbed(const AttentionWeights& w, const Dims& D, float scale, std::span<const AbsorbedSeq> seqs, int layer,
                     const std::vector<float>& q, std::vector<float>& o, Numerics mode) {
  if (seqs.empty()) return;
  const bool f32_rows = seqs[0].kv->pool().dtype() == KvDtype::kF32;
  // Row pointers of every sequence's cache (one table for the layer: the rows live in blocks).
  auto& rows_f32 = scratch_object<struct AbsorbedRowsF32, std::vector<const float*>>();
  auto& rows_bf16 = scratch_object<struct AbsorbedRowsBf16, std::vector<const bf16*>>();
  rows_f32.clear();
  rows_bf16.clear();
  std::vector<size_t> first_row(seqs.size());
  for (size_t s = 0; s < seqs.size(); ++s) {
    first_row[s] = f32_rows ? rows_f32.size() : rows_bf16.size();
    for (int j = 0; j < seqs[s].len; ++j) {
      if (f32_rows) rows_f32.push_back(seqs[s].kv->row_f32(layer, j));
      else rows_bf16.push_back(seqs[s].kv->row_bf16(layer, j));
    }
  }
  struct Token {
    int seq, t, visible;
  };
  std::vector<Token> tokens;
  for (size_t s = 0; s < seqs.size(); ++s)
    for (int i = 0; i < seqs[s].count; ++i)
      tokens.push_back({int(s), seqs[s].first + i, seqs[s].len - seqs[s].count + i + 1});
  constexpr int kGroup = 4;
  const int groups = (D.heads + kGroup - 1) / kGroup, n = groups * int(tokens.size());
  const size_t head_kvb = size_t(D.nope + D.v) * D.lora;
  parallel_for(n, n > 1, [&](int item) {
    const int g = item / int(tokens.size());
    const Token& tok = tokens[size_t(item) % tokens.size()];
    const int h0 = g * kGroup;
    AbsorbedHeads a;
    a.heads = std::min(kGroup, D.heads - h0);
    a.nope = D.nope, a.rope = D.rope, a.v = D.v, a.lora = D.lora;
    a.scale = scale;
    a.q = &q[(size_t(tok.t) * D.heads + h0) * D.qk];
    if (mode == Numerics::kDeepSeek) a.kvb_bf16 = w.kv_b_absorbed_bf16.data() + size_t(h0) * head_kvb;
    else a.kvb_f32 = w.kv_b_absorbed.data() + size_t(h0) * head_kvb;
    a.rows = tok.visible;
    if (f32_rows) a.rows_f32 = rows_f32.data() + first_row[size_t(tok.seq)];
    else a.rows_bf16 = rows_bf16.data() + first_row[size_t(tok.seq)];
    a.o = &o[(size_t(tok.t) * D.heads + h0) * D.v];
    attend_absorbed_heads(a, mode);
  });
}

}  // namespace

void mla_attention(const AttentionWeights& w, const ModelConfig& c, const YarnRope& rope, int layer,
                   const TokenBatch& batch, std::span<const float> x, std::span<float> out, Numerics mode,
                   AttentionPath path) {
  const Dims D(c);
  const int T = batch.tokens();
  auto& qa = scratch<struct MlaQueryLatent>(size_t(T) * c.q_lora_rank);
  auto& q = scratch<struct MlaQueries>(size_t(T) * D.heads * D.qk);
  auto& kva = scratch<struct MlaKvLatent>(size_t(T) * D.width);
  // The two down-projections of x in one call: x prepared once, one parallel region.
  const kernels::Fp8MatmulTask down_projections[] = {{x, T, &w.q_a, qa}, {x, T, &w.kv_a, kva}};
  kernels::matmul_fp8_grouped(down_projections, mode);
  for (int t = 0; t < T; ++t) {
    auto row = std::span<float>(qa).subspan(size_t(t) * c.q_lora_rank, c.q_lora_rank);
    rms_norm(row, w.q_a_norm, c.rms_norm_eps, row);
  }
  round_activations(qa, mode);
  matmul_fp8(qa, T, w.q_b, q, mode);

  // New cache rows: normalized latent and rotated shared key; queries' rotary parts rotated too.
  // Tokens over the threads: each writes its own row of blocks the batch already holds.
  std::vector<int> seq_of(static_cast<size_t>(T));
  for (size_t s = 0; s < batch.kv.size(); ++s)
    for (int i = 0; i < batch.count[s]; ++i) seq_of[size_t(batch.first[s] + i)] = int(s);
  parallel_for(T, T > 1, [&](int t) {
    const int pos = batch.position[t];
    auto src = std::span<float>(kva).subspan(size_t(t) * D.width, D.width);
    auto& row = scratch<struct MlaNewCacheRow>(D.width);
    auto& cos = scratch<struct MlaRopeCos>(D.rope / 2);
    auto& sin = scratch<struct MlaRopeSin>(D.rope / 2);
    rope.angles(pos, cos, sin);
    rms_norm(src.first(D.lora), w.kv_a_norm, c.rms_norm_eps, std::span<float>(row).first(D.lora));
    std::copy_n(src.begin() + D.lora, D.rope, row.begin() + D.lora);
    rope.rotate(std::span<float>(row).subspan(D.lora, D.rope), cos, sin);
    round_activations(row, mode);
    batch.kv[size_t(seq_of[size_t(t)])]->write_row(layer, pos, row);
    for (int h = 0; h < D.heads; ++h) {
      auto qr = std::span<float>(q).subspan((size_t(t) * D.heads + h) * D.qk + D.nope, D.rope);
      rope.rotate(qr, cos, sin);
      round_activations(qr, mode);
    }
  });

  const float scale = float(c.softmax_scale());
  auto& o = scratch<struct MlaHeadOut>(size_t(T) * D.heads * D.v);
  std::vector<AbsorbedSeq> absorbed;
  for (size_t s = 0; s < batch.kv.size(); ++s) {
    if (batch.count[s] == 0) continue;
    const int len = batch.position[batch.first[s] + batch.count[s] - 1] + 1;
    // kAuto: the expanded (naive) path for several tokens, the absorbed one for a single token.
    const AttentionPath p = s < batch.path.size() && batch.path[s] != AttentionPath::kAuto ? batch.path[s] : path;
    const bool naive = p == AttentionPath::kNaive || (p == AttentionPath::kAuto && batch.count[s] > 1);
    if (naive)
      attend_naive(w, D, scale, *batch.kv[s], layer, len, batch.first[s], batch.count[s], q, o, mode);
    else
      absorbed.push_back({batch.kv[s], len, batch.first[s], batch.count[s]});
  }
  attend_absorbed(w, D, scale, absorbed, layer, q, o, mode);
  matmul_fp8(o, T, w.o, out, mode);
}

}  // namespace epserve::model
