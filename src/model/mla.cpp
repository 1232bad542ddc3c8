#include "model/mla.h"

#include <algorithm>
#include <cmath>

#include "base/bf16.h"
#include "base/parallel.h"
#include "base/scratch.h"
#include "kernels/simd.h"
#include "model/attention_core.h"
#include "model/ops.h"

namespace epserve::model {

using kernels::matmul_fp8;
using kernels::Numerics;

namespace {

// The absorbed path's loops, over a cache row (FP32 or BF16) or a kv_b_proj row, four rows at a
// time: a row of 16 floats is one vector, so the compiler keeps four accumulators (or the four
// rows' updates of one output vector) in registers, where one row at a time re-read and re-stored
// the output for every row and summed each dot product across the lanes on its own (measured:
// 60 µs per layer at batch 1, 1.5 ms per layer at 32 sequences).
inline float to_float(float v) { return v; }
inline float to_float(bf16 v) { return bf16_to_float(v); }
constexpr int kChunk = 16;

// out[i] = Σ_c a[c] · rows[i][c] for the R = 1..4 rows, c < n: per row, 16 lane sums over c (in
// order, a multiply-add each), then the lanes added in order, then the tail (n % 16) in order.
template <int R, typename Row>
void dot_rows(const float* a, const Row* const* rows, int n, float* out) {
  float acc[R][kChunk] = {};
  const int whole = n / kChunk * kChunk;
  for (int c = 0; c < whole; c += kChunk)
    for (int r = 0; r < R; ++r)
#pragma omp simd
      for (int l = 0; l < kChunk; ++l) acc[r][l] += a[c + l] * to_float(rows[r][c + l]);
  for (int r = 0; r < R; ++r) {
    float sum = 0;
    for (int l = 0; l < kChunk; ++l) sum += acc[r][l];
    for (int c = whole; c < n; ++c) sum += a[c] * to_float(rows[r][c]);
    out[r] = sum;
  }
}

// out[i] = Σ_{j < count} a[j] · row(j)[i], i < n, j ascending: four rows' terms per pass over out.
template <typename RowOf>
void add_scaled_rows(const float* a, int count, RowOf row, float* out, int n) {
  int j = 0;
  for (; j + 4 <= count; j += 4) {
    const auto *r0 = row(j), *r1 = row(j + 1), *r2 = row(j + 2), *r3 = row(j + 3);
    const float p0 = a[j], p1 = a[j + 1], p2 = a[j + 2], p3 = a[j + 3];
#pragma omp simd
    for (int i = 0; i < n; ++i) {
      float o = out[i];
      o += p0 * to_float(r0[i]);
      o += p1 * to_float(r1[i]);
      o += p2 * to_float(r2[i]);
      o += p3 * to_float(r3[i]);
      out[i] = o;
    }
  }
  for (; j < count; ++j) {
    const auto* r = row(j);
    const float p = a[j];
#pragma omp simd
    for (int i = 0; i < n; ++i) out[i] += p * to_float(r[i]);
  }
}

// out[j] = Σ_c a[c] · row(j)[c] for j < count, c < n (four rows per pass over a).
template <typename RowOf>
void dot_each_row(const float* a, int count, RowOf row, int n, float* out) {
  int j = 0;
  for (; j + 4 <= count; j += 4) {
    const decltype(row(0)) rows[4] = {row(j), row(j + 1), row(j + 2), row(j + 3)};
    dot_rows<4>(a, rows, n, out + j);
  }
  for (; j < count; ++j) {
    const decltype(row(0)) rows[1] = {row(j)};
    dot_rows<1>(a, rows, n, out + j);
  }
}

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

// Absorbed path: attention over the latent itself; kv_b_proj folded into query and output. The
// cache rows are read in place (FP32 or BF16, whichever the pool holds). All sequences of the step
// in one parallel region (not one per sequence), sequence by sequence and within it head by head,
// so that a sequence's rows (147 KB at 128 tokens of the bench model in FP32) are read from L2 by
// all its heads, and the layer's kv_b_proj (512 KB in BF16) stays there too. (Heads outermost, each
// head re-read every sequence's rows from memory: 1.2–1.5 ms per layer at 32 sequences against
// 0.9–1.0 now, docs/PERFORMANCE.md.)
// kvb: kv_b_proj dequantized, FP32 (exact numerics) or BF16 (DeepSeek's).
template <typename Row, typename Kvb>
void attend_absorbed_rows(const Kvb* kvb, const Dims& D, float scale, std::span<const AbsorbedSeq> seqs,
                          const std::vector<std::vector<const Row*>>& rows, const std::vector<float>& q,
                          std::vector<float>& o, Numerics mode) {
  const int S = int(seqs.size());
#pragma omp parallel for collapse(2) schedule(static)
  for (int s = 0; s < S; ++s)
    for (int h = 0; h < D.heads; ++h) {
      const AbsorbedSeq& seq = seqs[size_t(s)];
      const Kvb* U = kvb + size_t(h) * (D.nope + D.v) * D.lora;  // [nope, lora]
      const Kvb* V = U + size_t(D.nope) * D.lora;                // [v, lora]
      // The query in the cache row's layout: [latent (kv_b_proj's key part folded in) | rope].
      auto& q_row = scratch<struct AbsorbedQueryRow>(D.width);
      auto& o_latent = scratch<struct AbsorbedOutLatent>(D.lora);
      for (int i = 0; i < seq.count; ++i) {
        const int t = seq.first + i, visible = seq.len - seq.count + i + 1;
        const float* qh = &q[(size_t(t) * D.heads + h) * D.qk];
        const auto& r = rows[size_t(s)];
        auto& scores = scratch<struct AbsorbedScores>(size_t(visible));
        std::fill(q_row.begin(), q_row.end(), 0.0f);
        std::fill(o_latent.begin(), o_latent.end(), 0.0f);
        add_scaled_rows(qh, D.nope, [&](int j) { return U + size_t(j) * D.lora; }, q_row.data(), D.lora);
        round_activations(std::span<float>(q_row).first(D.lora), mode);
        std::copy_n(qh + D.nope, D.rope, q_row.begin() + D.lora);
        dot_each_row(q_row.data(), visible, [&](int j) { return r[j]; }, D.width, scores.data());
        for (float& v : scores) v *= scale;
        softmax_probabilities(scores, mode);
        add_scaled_rows(scores.data(), visible, [&](int j) { return r[j]; }, o_latent.data(), D.lora);
        round_activations(o_latent, mode);
        float* oh = &o[(size_t(t) * D.heads + h) * D.v];
        dot_each_row(o_latent.data(), D.v, [&](int e) { return V + size_t(e) * D.lora; }, D.lora, oh);
        round_activations({oh, size_t(D.v)}, mode);
      }
    }
}

void attend_absorbed(const AttentionWeights& w, const Dims& D, float scale, std::span<const AbsorbedSeq> seqs, int layer,
                     const std::vector<float>& q, std::vector<float>& o, Numerics mode) {
  if (seqs.empty()) return;
  auto rows_of = [&](auto row) {
    std::vector<std::vector<decltype(row(*seqs[0].kv, 0))>> rows(seqs.size());
    for (size_t s = 0; s < seqs.size(); ++s)
      for (int j = 0; j < seqs[s].len; ++j) rows[s].push_back(row(*seqs[s].kv, j));
    return rows;
  };
  auto with_rows = [&](const auto& rows) {
    if (mode == Numerics::kDeepSeek) attend_absorbed_rows(w.kv_b_dequantized_bf16.data(), D, scale, seqs, rows, q, o, mode);
    else attend_absorbed_rows(w.kv_b_dequantized.data(), D, scale, seqs, rows, q, o, mode);
  };
  if (seqs[0].kv->pool().dtype() == KvDtype::kF32)
    with_rows(rows_of([&](const SequenceKv& kv, int j) { return kv.row_f32(layer, j); }));
  else
    with_rows(rows_of([&](const SequenceKv& kv, int j) { return kv.row_bf16(layer, j); }));
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
