#include "model/moe.h"

#include <omp.h>

#include <algorithm>
#include <numeric>

#include "base/error.h"
#include "base/parallel.h"
#include "base/scratch.h"
#include "kernels/simd.h"
#include "kernels/simd_avx2.h"
#include "kernels/vmath_avx2.h"
#include "model/ops.h"

namespace epserve::model {

using kernels::Fp8MatmulTask;
using kernels::Numerics;

namespace {

// h = silu(g) ⊙ u, BF16 between operators in DeepSeek numerics (as Expert.forward in model.py).
// (Over the threads for a prefill's shared expert; per expert, inside run_experts' parallel loop,
// on the calling thread: see round_activations for why small ones stay out of OpenMP.) With
// AVX-512 (AVX2), 16 (8) at a time through a vector exp: std::exp one by one took 5% of a prefill.
void swiglu(std::span<float> g, std::span<const float> u, Numerics mode) {
  const bool deepseek = mode == Numerics::kDeepSeek;
  auto range = [&](long i0, long i1) {
#if defined(__AVX512F__) && defined(__AVX512BW__)
    // Every element through the vector path (the tail masked), so that a value never depends on
    // where it sits in the buffer.
    for (long i = i0; i < i1; i += 16) {
      const __mmask16 lanes = kernels::simd::first_lanes16(int(std::min<long>(16, i1 - i)));
      __m512 a = kernels::simd::silu16(_mm512_maskz_loadu_ps(lanes, &g[size_t(i)]));
      if (deepseek) a = kernels::simd::round_to_bf16x16(a);
      _mm512_mask_storeu_ps(&g[size_t(i)], lanes, _mm512_mul_ps(a, _mm512_maskz_loadu_ps(lanes, &u[size_t(i)])));
    }
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)  // (simd_avx2.h)
    // The same at 8 lanes; the tail by masked loads and stores (the lanes past it are computed on
    // zeros and dropped), so that a value never depends on where it sits in the buffer.
    for (long i = i0; i < i1; i += 8) {
      const int lanes = int(std::min<long>(8, i1 - i));
      __m256 a = kernels::simd::silu8(kernels::simd::load_floats8(&g[size_t(i)], lanes));
      if (deepseek) a = kernels::simd::round_to_bf16x8(a);
      kernels::simd::store_floats8(&g[size_t(i)], _mm256_mul_ps(a, kernels::simd::load_floats8(&u[size_t(i)], lanes)), lanes);
    }
#else
    for (long i = i0; i < i1; ++i) {
      float a = silu(g[size_t(i)]);
      if (deepseek) a = round_to_bf16(a);
      g[size_t(i)] = a * u[size_t(i)];
    }
#endif
  };
  const long n = long(g.size());
  if (n < (1 << 15) || omp_in_parallel()) {
    range(0, n);
  } else {
    const long chunk = 4096;
#pragma omp parallel for schedule(static)
    for (long c = 0; c < n; c += chunk) range(c, std::min(n, c + chunk));
  }
  round_activations(g, mode);
}

// One token's routing buffers, reused from token to token by each thread.
struct RouteScratch {
  std::vector<float> score, biased, keys;
  std::vector<std::pair<float, int>> groups;
  std::vector<char> kept;
  std::vector<int> order;
  RouteScratch(int E, int G, int K) : score(E), biased(E), keys(E), groups(G), kept(G) { order.reserve(size_t(K) + 1); }
};

// One token's K experts and weights from its gate logits (DeepSeek's MoEGate).
void route_one(const MoeWeights& w, const ModelConfig& c, const float* logits, RouteScratch& s, int* expert, float* weight) {
  const int E = c.n_routed_experts, K = c.num_experts_per_tok, G = c.n_group, per_group = E / G;
#if defined(__AVX512F__) && defined(__AVX512BW__)
  for (int e = 0; e < E; e += 16) {  // every expert through the same lanes (the tail masked)
    const __mmask16 lanes = kernels::simd::first_lanes16(E - e);
    const __m512 score = kernels::simd::sigmoid16(_mm512_maskz_loadu_ps(lanes, logits + e));
    _mm512_mask_storeu_ps(&s.score[e], lanes, score);
    _mm512_mask_storeu_ps(&s.biased[e], lanes, _mm512_add_ps(score, _mm512_maskz_loadu_ps(lanes, &w.correction_bias[e])));
  }
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)  // (simd_avx2.h)
  for (int e = 0; e < E; e += 8) {  // every expert through the same lanes (the tail masked)
    const int lanes = std::min(8, E - e);
    const __m256 score = kernels::simd::sigmoid8(kernels::simd::load_floats8(logits + e, lanes));
    kernels::simd::store_floats8(&s.score[e], score, lanes);
    kernels::simd::store_floats8(&s.biased[e], _mm256_add_ps(score, kernels::simd::load_floats8(&w.correction_bias[e], lanes)), lanes);
  }
#else
  for (int e = 0; e < E; ++e) {
    s.score[e] = sigmoid(logits[e]);
    s.biased[e] = s.score[e] + w.correction_bias[e];
  }
#endif
  // Group score: the sum of its two best biased scores (one if a group has a single expert).
  for (int g = 0; g < G; ++g) {
    float best = -INFINITY, second = -INFINITY;
    for (int e = g * per_group; e < (g + 1) * per_group; ++e) {
      if (s.biased[e] > best) { second = best; best = s.biased[e]; }
      else if (s.biased[e] > second) second = s.biased[e];
    }
    s.groups[g] = {per_group >= 2 ? best + second : best, g};
  }
  std::stable_sort(s.groups.begin(), s.groups.end(), [](auto& a, auto& b) { return a.first > b.first; });
  std::fill(s.kept.begin(), s.kept.end(), char(0));
  for (int i = 0; i < c.topk_group; ++i) s.kept[s.groups[i].second] = 1;
  // The K best keys, ties to the lower expert id (what a stable sort by descending key gives),
  // by insertion into a sorted list of K: an expert enters only when strictly better.
  for (int g = 0; g < G; ++g)
    for (int e = g * per_group; e < (g + 1) * per_group; ++e) s.keys[e] = s.kept[g] ? s.biased[e] : -INFINITY;
  s.order.clear();
  for (int e = 0; e < E; ++e) {
    if (int(s.order.size()) == K && !(s.keys[e] > s.keys[s.order.back()])) continue;
    auto at = std::find_if(s.order.begin(), s.order.end(), [&](int o) { return s.keys[e] > s.keys[o]; });
    s.order.insert(at, e);
    if (int(s.order.size()) > K) s.order.pop_back();
  }
  float sum = 0;
  for (int k = 0; k < K; ++k) sum += s.score[s.order[k]];
  for (int k = 0; k < K; ++k) {
    const int e = s.order[k];
    expert[k] = e;
    weight[k] = (c.norm_topk_prob ? s.score[e] / sum : s.score[e]) * float(c.routed_scaling_factor);
  }
}

}  // namespace

Routing route_tokens(const MoeWeights& w, const ModelConfig& c, std::span<const float> x, int T, Numerics mode) {
  const int E = c.n_routed_experts, K = c.num_experts_per_tok;
  Routing r;
  r.k = K;
  if (T == 0) return r;
  // FP32 logits; in DeepSeek numerics x holds BF16 values, so the BF16 dot products are exact
  // products (kernels/matmul.h), at twice the FP32 rate. (A buffer kept between calls: a fresh
  // 2 MB vector per layer of a 2,048-token prefill cost 5–9 ms on a PVM guest, base/scratch.h.)
  auto& logits = scratch<struct RouterLogits>(size_t(T) * E);
  kernels::matmul_bf16(x, T, w.gate, logits, mode);
  r.expert.resize(size_t(T) * K);
  r.weight.resize(size_t(T) * K);
  // Tokens are independent: spread over the threads, each with its own buffers.
  parallel_ranges(T, T > 1, [&](int t0, int t1) {
    RouteScratch scratch(E, c.n_group, K);
    for (int t = t0; t < t1; ++t)
      route_one(w, c, &logits[size_t(t) * E], scratch, &r.expert[size_t(t) * K], &r.weight[size_t(t) * K]);
  });
  return r;
}

void mlp_forward(const MlpWeights& w, std::span<const float> x, int T, std::span<float> out, Numerics mode) {
  const int inter = w.gate.rows;
  auto& g = scratch<struct MlpGate>(size_t(T) * inter);
  auto& u = scratch<struct MlpUp>(size_t(T) * inter);
  kernels::matmul_fp8(x, T, w.gate, g, mode);
  kernels::matmul_fp8(x, T, w.up, u, mode);
  swiglu(g, u, mode);
  kernels::matmul_fp8(g, T, w.down, out, mode);
}

void run_experts(const MoeWeights& w, const ModelConfig& c, const std::vector<ExpertInput>& inputs,
                 const std::vector<std::vector<float*>>& out_rows, Numerics mode) {
  const int E = c.n_routed_experts, inter = c.moe_intermediate_size;
  // Every expert's gate and up outputs in two buffers that only grow (base/scratch.h says why):
  // per-expert vectors resized layer after layer zero-filled and faulted in about 12 ms per MoE
  // layer of a 2,048-token prefill.
  std::vector<size_t> offset(size_t(E) + 1, 0);
  for (int e = 0; e < E; ++e) offset[size_t(e) + 1] = offset[size_t(e)] + size_t(inputs[e].rows) * inter;
  auto& gate_out = scratch_object<struct ExpertGate, std::vector<float>>();
  auto& up_out = scratch_object<struct ExpertUp, std::vector<float>>();
  if (gate_out.size() < offset.back()) gate_out.resize(offset.back());
  if (up_out.size() < offset.back()) up_out.resize(offset.back());
  auto g = [&](int e) { return std::span<float>(gate_out).subspan(offset[size_t(e)], offset[size_t(e) + 1] - offset[size_t(e)]); };
  auto u = [&](int e) { return std::span<float>(up_out).subspan(offset[size_t(e)], offset[size_t(e) + 1] - offset[size_t(e)]); };
  std::vector<Fp8MatmulTask> up_tasks, down_tasks;
  for (int e = 0; e < E; ++e) {
    const int M = inputs[e].rows;
    if (M == 0) continue;
    EPS_REQUIRE(w.experts[e].has_value(), "tokens were routed to expert " + std::to_string(e) +
                                              ", which this process does not hold");
    // DeepSeek numerics: the rows quantized at the token's home rank, as they arrived.
    const kernels::Fp8RowsView* xq = mode == Numerics::kDeepSeek ? &inputs[e].fp8 : nullptr;
    up_tasks.push_back({inputs[e].f32, M, &w.experts[e]->gate, g(e), xq});
    up_tasks.push_back({inputs[e].f32, M, &w.experts[e]->up, u(e), xq});
  }
  kernels::matmul_fp8_grouped(up_tasks, mode);
  // (A decode step's few rows on the calling thread: less than a parallel region costs.)
  parallel_for_dynamic(E, offset.back() >= (size_t(1) << 15), [&](int e) {
    if (inputs[e].rows > 0) swiglu(g(e), u(e), mode);
  });
  for (int e = 0; e < E; ++e) {
    if (inputs[e].rows == 0) continue;
    down_tasks.push_back({g(e), inputs[e].rows, &w.experts[e]->down, {}, nullptr, out_rows[size_t(e)]});
  }
  kernels::matmul_fp8_grouped(down_tasks, mode);
}

ExpertRows::ExpertRows(std::span<const int> rows_per_expert, int hidden, Numerics mode)
    : hidden_(hidden), blocks_(kernels::ceil_div(hidden, kernels::kQuantBlock)), mode_(mode), offset_(rows_per_expert.size() + 1, 0) {
  for (size_t e = 0; e < rows_per_expert.size(); ++e) offset_[e + 1] = offset_[e] + size_t(rows_per_expert[e]);
  const size_t rows = offset_.back();
  f32_ = &scratch<struct ExpertRowsF32>(mode == Numerics::kExact ? rows * hidden : 0);
  codes_ = &scratch<struct ExpertRowsCodes, uint8_t>(mode == Numerics::kDeepSeek ? rows * hidden : 0);
  scales_ = &scratch<struct ExpertRowsScales>(mode == Numerics::kDeepSeek ? rows * blocks_ : 0);
}

std::vector<ExpertInput> ExpertRows::inputs() const {
  std::vector<ExpertInput> in(offset_.size() - 1);
  for (size_t e = 0; e < in.size(); ++e) {
    const size_t first = offset_[e], rows = offset_[e + 1] - first;
    in[e].rows = int(rows);
    if (mode_ == Numerics::kExact) {
      in[e].f32 = std::span<const float>(*f32_).subspan(first * hidden_, rows * hidden_);
    } else {
      in[e].fp8.codes = std::span<const uint8_t>(*codes_).subspan(first * hidden_, rows * hidden_);
      in[e].fp8.scales = std::span<const float>(*scales_).subspan(first * blocks_, rows * blocks_);
      in[e].fp8.rows = int(rows);
      in[e].fp8.cols = hidden_;
    }
  }
  return in;
}

void LocalExpertRunner::run(int layer, const MoeWeights& w, const ModelConfig& c, const Routing& r,
                            std::span<const float> x, int T, Numerics mode, std::vector<float>& rows) {
  const int E = c.n_routed_experts, d = c.hidden_size, blocks = kernels::ceil_div(d, kernels::kQuantBlock);
  // Buffers kept between calls (base/scratch.h says why).
  auto& xq = scratch_object<struct ExpertRunnerQuantized, kernels::Fp8Rows>();
  auto& out_rows = scratch_object<struct ExpertRunnerOutRows, std::vector<std::vector<float*>>>();
  if (mode == Numerics::kDeepSeek) kernels::quantize_rows_fp8(x, T, d, xq);
  // Each (token, choice) gets the next row of its expert's input, in token order; the rows are then
  // copied in parallel (every copy has its own destination).
  auto& count = scratch<struct ExpertRunnerCounts, int>(size_t(E));
  std::fill(count.begin(), count.end(), 0);
  auto& slot = scratch<struct ExpertInputSlot, int>(size_t(T) * r.k);  // row within the expert
  for (int t = 0; t < T; ++t)
    for (int k = 0; k < r.k; ++k) slot[size_t(t) * r.k + k] = count[size_t(r.expert[size_t(t) * r.k + k])]++;
  ExpertRows buffers(count, d, mode);
  parallel_for(T, T > 1, [&](int t) {
    for (int k = 0; k < r.k; ++k) {
      const size_t i = size_t(t) * r.k + k, row = buffers.first_row(r.expert[i]) + size_t(slot[i]);
      if (mode == Numerics::kExact) {
        std::copy_n(x.begin() + size_t(t) * d, d, buffers.f32_row(row));
      } else {
        std::copy_n(xq.codes.begin() + size_t(t) * d, d, buffers.codes_row(row));
        std::copy_n(xq.scales.begin() + size_t(t) * blocks, blocks, buffers.scales_row(row));
      }
    }
  });
  // The down products write each output row straight to its (token, choice) place in rows.
  rows.resize(size_t(T) * r.k * d);
  out_rows.resize(E);
  for (int e = 0; e < E; ++e) out_rows[size_t(e)].resize(size_t(count[size_t(e)]));
  for (size_t i = 0; i < size_t(T) * r.k; ++i) out_rows[size_t(r.expert[i])][size_t(slot[i])] = rows.data() + i * d;
  run_experts(w, c, buffers.inputs(), out_rows, mode);
}

void moe_forward(const MoeWeights& w, const ModelConfig& c, int layer, std::span<const float> x, int T,
                 std::span<float> out, Numerics mode, ExpertRunner& runner, Routing* routing_out) {
  const int d = c.hidden_size;
  const Routing r = route_tokens(w, c, x, T, mode);
  auto& rows = scratch<struct MoeExpertRows>(size_t(T) * r.k * d);  // the runner fills every row
  runner.run(layer, w, c, r, x, T, mode, rows);
  auto& shared = scratch<struct MoeSharedOut>(size_t(T) * d);
  if (w.shared && T > 0) mlp_forward(*w.shared, x, T, shared, mode);
  else std::fill(shared.begin(), shared.end(), 0.0f);
  // Per output element: 0 + w0·row0 + … + w7·row7, then + shared, in that order; one choice's row
  // at a time over all of d, so that the loop runs along the rows (vectorized) instead of across them.
  parallel_for(T, T > 1, [&](int t) {
    float* o = &out[size_t(t) * d];
    std::fill(o, o + d, 0.0f);
    for (int k = 0; k < r.k; ++k) {
      const float wk = r.weight[size_t(t) * r.k + k];
      const float* row = &rows[(size_t(t) * r.k + k) * d];
      for (int j = 0; j < d; ++j) o[j] += wk * row[j];
    }
    const float* sh = &shared[size_t(t) * d];
    for (int j = 0; j < d; ++j) o[j] += sh[j];
  });
  round_activations(out.first(size_t(T) * d), mode);
  if (routing_out) *routing_out = r;
}

}  // namespace epserve::model
