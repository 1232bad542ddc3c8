#include "support/naive_forward.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

namespace epserve::testing {

using model::Dtype;

namespace {

// E4M3 from its definition: S EEEE MMM, bias 7, subnormals at E = 0.
double e4m3(uint8_t code) {
  const int s = code >> 7, e = (code >> 3) & 15, m = code & 7;
  const double v = e == 0 ? m * std::pow(2.0, -9) : (1 + m / 8.0) * std::pow(2.0, e - 7);
  return s ? -v : v;
}

double bf16(const uint8_t* p) {
  uint16_t b;
  std::memcpy(&b, p, 2);
  uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

using Vec = std::vector<double>;

// y = W x for W [rows, cols]
Vec linear(const std::vector<double>& W, int rows, int cols, const Vec& x) {
  Vec y(rows, 0.0);
  for (int r = 0; r < rows; ++r)
    for (int k = 0; k < cols; ++k) y[r] += W[size_t(r) * cols + k] * x[k];
  return y;
}

Vec rms_norm(const Vec& x, const Vec& w, double eps) {
  double ms = 0;
  for (double v : x) ms += v * v;
  ms /= double(x.size());
  Vec y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = w[i] * x[i] / std::sqrt(ms + eps);
  return y;
}

double silu(double z) { return z / (1 + std::exp(-z)); }

}  // namespace

NaiveForward::NaiveForward(const std::filesystem::path& dir)
    : config_(model::ModelConfig::load(dir)), checkpoint_(model::Checkpoint::open(dir)) {}

std::vector<double> NaiveForward::vec(const std::string& name) {
  // norms are BF16, the router bias FP32
  for (Dtype dt : {Dtype::BF16, Dtype::F32}) {
    try {
      const auto& ckpt = checkpoint_;
      // The shape is 1-D; find its length from the name's role.
      int n = config_.hidden_size;
      if (name.find("q_a_layernorm") != std::string::npos) n = config_.q_lora_rank;
      if (name.find("kv_a_layernorm") != std::string::npos) n = config_.kv_lora_rank;
      if (name.find("e_score_correction_bias") != std::string::npos) n = config_.n_routed_experts;
      auto bytes = ckpt.tensor(name, dt, {n});
      Vec v(n);
      for (int i = 0; i < n; ++i) {
        if (dt == Dtype::BF16) {
          v[i] = bf16(bytes.data() + 2 * i);
        } else {
          float f;
          std::memcpy(&f, bytes.data() + 4 * i, 4);
          v[i] = f;
        }
      }
      return v;
    } catch (const std::exception&) {
      if (dt == Dtype::F32) throw;
    }
  }
  return {};
}

const NaiveForward::Matrix& NaiveForward::weight(const std::string& name) {
  auto it = cache_.find(name);
  if (it != cache_.end()) return it->second;
  // Shapes from the fact sheet's table (reference §3).
  const auto& c = config_;
  const int d = c.hidden_size, H = c.num_attention_heads;
  auto ends = [&](const char* s) { return name.size() >= std::strlen(s) && name.ends_with(s); };
  int rows = 0, cols = 0;
  bool fp8 = true;
  if (ends("q_a_proj.weight")) rows = c.q_lora_rank, cols = d;
  else if (ends("q_b_proj.weight")) rows = H * (c.qk_nope_head_dim + c.qk_rope_head_dim), cols = c.q_lora_rank;
  else if (ends("kv_a_proj_with_mqa.weight")) rows = c.kv_lora_rank + c.qk_rope_head_dim, cols = d;
  else if (ends("kv_b_proj.weight")) rows = H * (c.qk_nope_head_dim + c.v_head_dim), cols = c.kv_lora_rank;
  else if (ends("o_proj.weight")) rows = d, cols = H * c.v_head_dim;
  else if (ends("mlp.gate.weight")) rows = c.n_routed_experts, cols = d, fp8 = false;
  else if (ends("lm_head.weight") || ends("embed_tokens.weight")) rows = c.vocab_size, cols = d, fp8 = false;
  else {
    const bool shared = name.find("shared_experts") != std::string::npos;
    const bool expert = name.find("experts") != std::string::npos;
    const int inter = shared ? c.moe_intermediate_size * c.n_shared_experts
                      : expert ? c.moe_intermediate_size : c.intermediate_size;
    if (ends("down_proj.weight")) rows = d, cols = inter;
    else rows = inter, cols = d;
  }
  Matrix W(size_t(rows) * cols);
  if (fp8) {
    auto q = checkpoint_.tensor(name, Dtype::F8_E4M3, {rows, cols});
    const int sr = (rows + 127) / 128, sc = (cols + 127) / 128;
    auto s = checkpoint_.tensor(name + "_scale_inv", Dtype::F32, {sr, sc});
    for (int r = 0; r < rows; ++r)
      for (int k = 0; k < cols; ++k) {
        float scale;
        std::memcpy(&scale, s.data() + 4 * (size_t(r / 128) * sc + k / 128), 4);
        W[size_t(r) * cols + k] = e4m3(q[size_t(r) * cols + k]) * scale;
      }
  } else {
    auto b = checkpoint_.tensor(name, Dtype::BF16, {rows, cols});
    for (size_t i = 0; i < W.size(); ++i) W[i] = bf16(b.data() + 2 * i);
  }
  shapes_[name] = {rows, cols};
  return cache_.emplace(name, std::move(W)).first->second;
}

std::vector<double> NaiveForward::last_logits(const std::vector<int>& tokens,
                                              const std::vector<std::vector<int>>* forced_experts) {
  const auto& c = config_;
  const int S = int(tokens.size()), d = c.hidden_size, H = c.num_attention_heads;
  const int nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim, vd = c.v_head_dim, lora = c.kv_lora_rank;
  auto W = [&](const std::string& n) -> const Matrix& { return weight(n); };
  auto apply = [&](const std::string& n, const Vec& x) {
    const Matrix& m = W(n);
    auto [rows, cols] = shapes_[n];
    return linear(m, rows, cols, x);
  };
  // YaRN frequencies (reference §6), in double.
  std::vector<double> freq(rope / 2);
  {
    const auto& y = c.rope_scaling;
    auto corr = [&](double r) { return rope * std::log(y.original_max_position_embeddings / (2 * M_PI * r)) / (2 * std::log(c.rope_theta)); };
    const double lo = std::max(std::floor(corr(y.beta_fast)), 0.0);
    double hi = std::min(std::ceil(corr(y.beta_slow)), double(rope - 1));
    if (lo == hi) hi += 0.001;
    for (int i = 0; i < rope / 2; ++i) {
      const double f = std::pow(c.rope_theta, -2.0 * i / rope);
      const double ramp = std::clamp((i - lo) / (hi - lo), 0.0, 1.0);
      freq[i] = y.factor > 1 ? f * (1 - ramp) + f / y.factor * ramp : f;
    }
  }
  auto rotate = [&](double* x, int pos) {
    for (int i = 0; i < rope / 2; ++i) {
      const double a = x[2 * i], b = x[2 * i + 1], th = pos * freq[i];
      x[2 * i] = a * std::cos(th) - b * std::sin(th);
      x[2 * i + 1] = a * std::sin(th) + b * std::cos(th);
    }
  };
  const double m = c.rope_scaling.factor > 1 ? 0.1 * c.rope_scaling.mscale_all_dim * std::log(c.rope_scaling.factor) + 1 : 1;
  const double scale = m * m / std::sqrt(double(nope + rope));

  const Matrix& E = W("model.embed_tokens.weight");
  std::vector<Vec> h(S);
  for (int t = 0; t < S; ++t) h[t] = Vec(E.begin() + size_t(tokens[t]) * d, E.begin() + size_t(tokens[t] + 1) * d);

  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const Vec attn_norm = vec(p + "input_layernorm.weight"), ffn_norm = vec(p + "post_attention_layernorm.weight");
    // Attention, naive path: every key and value expanded from the latent.
    std::vector<Vec> q(S), k(S), v(S);
    for (int t = 0; t < S; ++t) {
      const Vec x = rms_norm(h[t], attn_norm, c.rms_norm_eps);
      q[t] = apply(p + "self_attn.q_b_proj.weight",
                   rms_norm(apply(p + "self_attn.q_a_proj.weight", x), vec(p + "self_attn.q_a_layernorm.weight"), c.rms_norm_eps));
      const Vec a = apply(p + "self_attn.kv_a_proj_with_mqa.weight", x);
      const Vec latent = rms_norm(Vec(a.begin(), a.begin() + lora), vec(p + "self_attn.kv_a_layernorm.weight"), c.rms_norm_eps);
      Vec kr(a.begin() + lora, a.end());
      rotate(kr.data(), t);
      const Vec kv = apply(p + "self_attn.kv_b_proj.weight", latent);  // [H][nope + v]
      k[t].resize(size_t(H) * (nope + rope));
      v[t].resize(size_t(H) * vd);
      for (int hh = 0; hh < H; ++hh) {
        rotate(&q[t][size_t(hh) * (nope + rope) + nope], t);
        for (int j = 0; j < nope; ++j) k[t][size_t(hh) * (nope + rope) + j] = kv[size_t(hh) * (nope + vd) + j];
        for (int j = 0; j < rope; ++j) k[t][size_t(hh) * (nope + rope) + nope + j] = kr[j];
        for (int j = 0; j < vd; ++j) v[t][size_t(hh) * vd + j] = kv[size_t(hh) * (nope + vd) + nope + j];
      }
    }
    for (int t = 0; t < S; ++t) {
      Vec o(size_t(H) * vd, 0.0);
      for (int hh = 0; hh < H; ++hh) {
        Vec s(t + 1);
        for (int u = 0; u <= t; ++u) {
          double dot = 0;
          for (int j = 0; j < nope + rope; ++j) dot += q[t][size_t(hh) * (nope + rope) + j] * k[u][size_t(hh) * (nope + rope) + j];
          s[u] = dot * scale;
        }
        const double mx = *std::max_element(s.begin(), s.end());
        double sum = 0;
        for (double& x : s) sum += (x = std::exp(x - mx));
        for (int u = 0; u <= t; ++u)
          for (int j = 0; j < vd; ++j) o[size_t(hh) * vd + j] += s[u] / sum * v[u][size_t(hh) * vd + j];
      }
      q[t] = apply(p + "self_attn.o_proj.weight", o);  // reuse q[t] to hold the output
    }
    for (int t = 0; t < S; ++t)
      for (int j = 0; j < d; ++j) h[t][j] += q[t][j];
    // Feed-forward.
    for (int t = 0; t < S; ++t) {
      const Vec x = rms_norm(h[t], ffn_norm, c.rms_norm_eps);
      auto mlp = [&](const std::string& pre) {
        const Vec g = apply(pre + "gate_proj.weight", x), u = apply(pre + "up_proj.weight", x);
        Vec a(g.size());
        for (size_t i = 0; i < g.size(); ++i) a[i] = silu(g[i]) * u[i];
        return apply(pre + "down_proj.weight", a);
      };
      Vec y(d, 0.0);
      if (l < c.first_k_dense_replace) {
        y = mlp(p + "mlp.");
      } else {
        const int En = c.n_routed_experts, per = En / c.n_group;
        const Vec logits = apply(p + "mlp.gate.weight", x), bias = vec(p + "mlp.gate.e_score_correction_bias");
        Vec s(En), b(En);
        for (int e = 0; e < En; ++e) s[e] = 1 / (1 + std::exp(-logits[e])), b[e] = s[e] + bias[e];
        std::vector<double> gscore(c.n_group);
        for (int g = 0; g < c.n_group; ++g) {
          Vec grp(b.begin() + g * per, b.begin() + (g + 1) * per);
          std::sort(grp.rbegin(), grp.rend());
          gscore[g] = grp[0] + (per > 1 ? grp[1] : 0);
        }
        std::vector<int> go(c.n_group);
        std::iota(go.begin(), go.end(), 0);
        std::stable_sort(go.begin(), go.end(), [&](int a2, int b2) { return gscore[a2] > gscore[b2]; });
        Vec masked(En, -INFINITY);
        for (int i = 0; i < c.topk_group; ++i)
          for (int e = go[i] * per; e < (go[i] + 1) * per; ++e) masked[e] = b[e];
        std::vector<int> order(En);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int a2, int b2) { return masked[a2] > masked[b2]; });
        if (forced_experts) {
          const auto& f = (*forced_experts)[l - c.first_k_dense_replace];
          for (int i = 0; i < c.num_experts_per_tok; ++i) order[i] = f[size_t(t) * c.num_experts_per_tok + i];
        }
        double denom = 0;
        for (int i = 0; i < c.num_experts_per_tok; ++i) denom += s[order[i]];
        for (int i = 0; i < c.num_experts_per_tok; ++i) {
          const int e = order[i];
          const double wgt = (c.norm_topk_prob ? s[e] / denom : s[e]) * c.routed_scaling_factor;
          const Vec out = mlp(p + "mlp.experts." + std::to_string(e) + ".");
          for (int j = 0; j < d; ++j) y[j] += wgt * out[j];
        }
        if (c.n_shared_experts > 0) {
          const Vec out = mlp(p + "mlp.shared_experts.");
          for (int j = 0; j < d; ++j) y[j] += out[j];
        }
      }
      for (int j = 0; j < d; ++j) h[t][j] += y[j];
    }
  }
  const Vec x = rms_norm(h[S - 1], vec("model.norm.weight"), c.rms_norm_eps);
  return apply("lm_head.weight", x);
}

}  // namespace epserve::testing
