#include "model/model.h"

#include <chrono>

#include "base/error.h"
#include "base/parallel.h"
#include "base/scratch.h"
#include "model/ops.h"

namespace epserve::model {

namespace {
class Stopwatch {
 public:
  explicit Stopwatch(double& sink) : sink_(sink), start_(std::chrono::steady_clock::now()) {}
  ~Stopwatch() { sink_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count(); }

 private:
  double& sink_;
  std::chrono::steady_clock::time_point start_;
};
}  // namespace

Model::Model(ModelWeights weights) : weights_(std::move(weights)), rope_(weights_.config) {}

std::vector<float> Model::forward(std::span<const SequenceInput> batch, const ForwardOptions& options) {
  const auto& c = weights_.config;
  const int d = c.hidden_size;
  const auto mode = options.numerics;
  TokenBatch tb;
  std::vector<int> tokens;
  for (const auto& s : batch) {
    EPS_REQUIRE(s.kv != nullptr, "forward: sequence without a cache");
    tb.kv.push_back(s.kv);
    tb.first.push_back(int(tokens.size()));
    tb.count.push_back(int(s.tokens.size()));
    tb.path.push_back(s.attention);
    for (size_t i = 0; i < s.tokens.size(); ++i) {
      EPS_REQUIRE(s.tokens[i] >= 0 && s.tokens[i] < c.vocab_size,
                  "token id " + std::to_string(s.tokens[i]) + " is outside the vocabulary [0, " +
                      std::to_string(c.vocab_size) + ")");
      tokens.push_back(s.tokens[i]);
      tb.position.push_back(s.kv->length() + int(i));
    }
  }
  const int T = int(tokens.size());
  if (T == 0) {
    // Nothing to compute here, but the routed experts' exchanges are collective: take part in each.
    for (int l = 0; l < c.num_hidden_layers; ++l)
      if (weights_.layers[l].moe) moe_forward(*weights_.layers[l].moe, c, l, {}, 0, {}, mode, *runner_);
    return {};
  }
  for (const auto& s : batch) s.kv->grow(int(s.tokens.size()));

  auto& h = scratch<struct ForwardResidual>(size_t(T) * d);  // every row written before it is read
  auto& x = scratch<struct ForwardNormed>(size_t(T) * d);
  auto& y = scratch<struct ForwardSublayerOut>(size_t(T) * d);
  {
    Stopwatch sw(profile_.embed);
    parallel_for(T, T > 1, [&](int t) {
      for (int j = 0; j < d; ++j) h[size_t(t) * d + j] = bf16_to_float(weights_.embed.values[size_t(tokens[t]) * d + j]);
    });
  }
  auto normalize = [&](const std::vector<float>& norm_weight) {
    Stopwatch sw(profile_.norms);
    parallel_for(T, T > 1, [&](int t) {
      rms_norm(std::span<const float>(h).subspan(size_t(t) * d, d), norm_weight, c.rms_norm_eps,
               std::span<float>(x).subspan(size_t(t) * d, d));
    });
    round_activations(x, mode);
  };
  auto add_residual = [&] {
    const long n = long(h.size());
    parallel_for(n, T > 1, [&](long i) { h[size_t(i)] += y[size_t(i)]; });
    round_activations(h, mode);
  };
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const auto& L = weights_.layers[l];
    normalize(L.attn_norm);
    {
      Stopwatch sw(profile_.attention);
      mla_attention(L.attn, c, rope_, l, tb, x, y, mode, options.attention);
    }
    add_residual();
    normalize(L.ffn_norm);
    if (L.dense) {
      Stopwatch sw(profile_.dense_mlp);
      mlp_forward(*L.dense, x, T, y, mode);
    } else {
      Stopwatch sw(profile_.moe);
      Routing routing;
      moe_forward(*L.moe, c, l, x, T, y, mode, *runner_, options.routing_log ? &routing : nullptr);
      if (options.routing_log) options.routing_log->push_back(std::move(routing));
    }
    add_residual();
  }
  for (const auto& s : batch) s.kv->commit(int(s.tokens.size()));

  // Final norm and lm_head on the rows that need logits.
  std::vector<int> rows;
  for (size_t s = 0; s < batch.size(); ++s) {
    if (options.all_logits) {
      for (int i = 0; i < tb.count[s]; ++i) rows.push_back(tb.first[s] + i);
    } else if (tb.count[s] > 0) {
      rows.push_back(tb.first[s] + tb.count[s] - 1);
    }
  }
  std::vector<float> selected(rows.size() * d);
  {
    Stopwatch sw(profile_.norms);
    for (size_t i = 0; i < rows.size(); ++i)
      rms_norm(std::span<const float>(h).subspan(size_t(rows[i]) * d, d), weights_.final_norm, c.rms_norm_eps,
               std::span<float>(selected).subspan(i * d, d));
    round_activations(selected, mode);
  }
  std::vector<float> logits(rows.size() * size_t(c.vocab_size));
  {
    Stopwatch sw(profile_.lm_head);
    kernels::matmul_bf16(selected, int(rows.size()), weights_.lm_head, logits, mode);
  }
  return logits;
}

}  // namespace epserve::model
