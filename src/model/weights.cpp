#include "model/weights.h"

#include <cstdio>
#include <cstring>

#include "base/error.h"
#include "base/fp8.h"
#include "model/absorbed_attention.h"
#include "model/checkpoint_layout.h"

namespace epserve::model {

namespace {

class Loader {
 public:
  Loader(const Checkpoint& ckpt, const ModelConfig& c, HugePageArena& arena)
      : ckpt_(ckpt), config_(c), arena_(arena) {}

  // The matrix with its tiles allocated; they are filled by pack_pending().
  Fp8Matrix fp8(const std::string& name, const std::vector<int64_t>& shape) {
    auto codes = ckpt_.tensor(name, Dtype::F8_E4M3, shape);
    auto scales = ckpt_.tensor(scale_name(name), Dtype::F32, scale_shape(shape));
    bytes_ += codes.size() + scales.size();
    Fp8Matrix w{codes, {reinterpret_cast<const float*>(scales.data()), scales.size() / 4}, int(shape[0]), int(shape[1]), {}};
    const auto tiles = arena_.allocate(kernels::fp8_tiles_bytes(w.rows, w.cols));
    w.tiles = tiles;
    pending_.push_back({w, tiles});
    return w;
  }
  // Packs the tiles of the matrices made since the last call, over the OpenMP threads. The codes
  // stay mapped (dequantize and the twins read them); where the kernels read tiles, the process
  // drops its pages of them after packing.
  void pack_pending() {
#pragma omp parallel for schedule(dynamic, 1)
    for (size_t i = 0; i < pending_.size(); ++i) {
      const auto& [w, tiles] = pending_[i];
      kernels::pack_fp8_tiles(w, tiles);
      if (tiles.empty()) Checkpoint::prefetch(w.codes);  // the kernels stream the mapped codes
      else Checkpoint::release(w.codes);                 // the kernels read the tiles
    }
    pending_.clear();
  }
  // A BF16 matrix read row by row (the embedding): a copy in huge pages, the mapped pages dropped.
  // The mapping's 4 KB pages faulted in at first touch (a prefill's embedding rows, 10-45 ms on a
  // PVM guest) and missed the TLB while a matrix streamed (the lm_head at batch 1: its 265 MB in
  // 6.3-6.5 ms mapped, 5.0 ms in huge pages).
  Bf16Matrix bf16_rows(const std::string& name, const std::vector<int64_t>& shape) {
    auto v = ckpt_.tensor(name, Dtype::BF16, shape);
    bytes_ += v.size();
    auto copy = arena_.allocate(v.size());
    std::memcpy(copy.data(), v.data(), v.size());
    Checkpoint::release(v);
    return Bf16Matrix{{reinterpret_cast<const bf16*>(copy.data()), v.size() / 2}, int(shape[0]), int(shape[1]), {}};
  }
  // A BF16 matrix the kernels multiply (the lm_head, the router gates): where they read tiles
  // (pack_bf16_tiles), those in huge pages and the mapped values dropped (the twins may still read
  // them); elsewhere the row copy above.
  Bf16Matrix bf16_matmul(const std::string& name, const std::vector<int64_t>& shape) {
    const size_t tile_bytes = kernels::bf16_tiles_bytes(int(shape[0]), int(shape[1]));
    if (tile_bytes == 0) return bf16_rows(name, shape);
    auto v = ckpt_.tensor(name, Dtype::BF16, shape);
    bytes_ += v.size();
    Bf16Matrix w{{reinterpret_cast<const bf16*>(v.data()), v.size() / 2}, int(shape[0]), int(shape[1]), {}};
    const auto tiles = arena_.allocate(tile_bytes);
    kernels::pack_bf16_tiles(w, tiles);
    Checkpoint::release(v);
    w.tiles = tiles;
    return w;
  }
  std::vector<float> norm(const std::string& name, int64_t n) {
    auto v = ckpt_.tensor(name, Dtype::BF16, {n});
    std::vector<float> out(n);
    for (int64_t i = 0; i < n; ++i) {
      uint16_t b;
      std::memcpy(&b, v.data() + 2 * i, 2);
      out[i] = bf16_to_float(bf16{b});
    }
    return out;
  }
  std::vector<float> f32(const std::string& name, int64_t n) {
    auto v = ckpt_.tensor(name, Dtype::F32, {n});
    std::vector<float> out(n);
    std::memcpy(out.data(), v.data(), 4 * n);
    return out;
  }
  MlpWeights mlp(const std::string& p, int64_t d, int64_t inter) {
    return {fp8(p + "gate_proj.weight", {inter, d}), fp8(p + "up_proj.weight", {inter, d}),
            fp8(p + "down_proj.weight", {d, inter})};
  }
  size_t bytes() const { return bytes_; }

 private:
  const Checkpoint& ckpt_;
  const ModelConfig& config_;
  HugePageArena& arena_;
  std::vector<std::pair<Fp8Matrix, std::span<uint8_t>>> pending_;
  size_t bytes_ = 0;
};

std::vector<float> dequantize(const Fp8Matrix& w) {
  std::vector<float> out(size_t(w.rows) * w.cols);
  const int kb = kernels::ceil_div(w.cols, 128);
  for (int r = 0; r < w.rows; ++r)
    for (int k = 0; k < w.cols; ++k)
      out[size_t(r) * w.cols + k] =
          fp8_e4m3_to_float(w.codes[size_t(r) * w.cols + k]) * w.block_scales[size_t(r / 128) * kb + k / 128];
  return out;
}

}  // namespace

ModelWeights ModelWeights::load(const std::filesystem::path& dir, const LoadOptions& options) {
  ModelWeights m;
  m.config = ModelConfig::load(dir);
  m.checkpoint_ = std::make_shared<Checkpoint>(Checkpoint::open(dir));
  const auto& c = m.config;
  m.arena_ = std::make_unique<HugePageArena>();
  Loader load(*m.checkpoint_, c, *m.arena_);
  const int64_t d = c.hidden_size, h = c.num_attention_heads;
  m.embed = load.bf16_rows("model.embed_tokens.weight", {c.vocab_size, d});
  m.lm_head = load.bf16_matmul("lm_head.weight", {c.vocab_size, d});
  m.final_norm = load.norm("model.norm.weight", d);
  const bool show = options.progress && weight_bytes(c, c.n_routed_experts) > (256 << 20);
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    LayerWeights L;
    const std::string p = layer_prefix(l);
    L.attn_norm = load.norm(p + "input_layernorm.weight", d);
    L.ffn_norm = load.norm(p + "post_attention_layernorm.weight", d);
    auto& a = L.attn;
    a.q_a = load.fp8(p + "self_attn.q_a_proj.weight", {c.q_lora_rank, d});
    a.q_a_norm = load.norm(p + "self_attn.q_a_layernorm.weight", c.q_lora_rank);
    a.q_b = load.fp8(p + "self_attn.q_b_proj.weight", {h * c.qk_head_dim(), c.q_lora_rank});
    a.kv_a = load.fp8(p + "self_attn.kv_a_proj_with_mqa.weight", {c.kv_lora_rank + c.qk_rope_head_dim, d});
    a.kv_a_norm = load.norm(p + "self_attn.kv_a_layernorm.weight", c.kv_lora_rank);
    a.kv_b = load.fp8(p + "self_attn.kv_b_proj.weight", {h * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank});
    a.o = load.fp8(p + "self_attn.o_proj.weight", {d, h * c.v_head_dim});
    a.kv_b_absorbed = absorbed_kv_b<float>(dequantize(a.kv_b), h, c.qk_nope_head_dim, c.v_head_dim, c.kv_lora_rank);
    a.kv_b_absorbed_bf16.resize(a.kv_b_absorbed.size());
    std::transform(a.kv_b_absorbed.begin(), a.kv_b_absorbed.end(), a.kv_b_absorbed_bf16.begin(), float_to_bf16);
    if (!c.is_moe_layer(l)) {
      L.dense = load.mlp(p + "mlp.", d, c.intermediate_size);
    } else {
      MoeWeights moe;
      moe.gate = load.bf16_matmul(p + "mlp.gate.weight", {c.n_routed_experts, d});
      moe.correction_bias = load.f32(p + "mlp.gate.e_score_correction_bias", c.n_routed_experts);
      moe.experts.resize(c.n_routed_experts);
      for (int e = 0; e < c.n_routed_experts; ++e)
        if (!options.owns_expert || options.owns_expert(l, e))
          moe.experts[e] = load.mlp(p + "mlp.experts." + std::to_string(e) + ".", d, c.moe_intermediate_size);
      if (c.n_shared_experts > 0)
        moe.shared = load.mlp(p + "mlp.shared_experts.", d, int64_t(c.moe_intermediate_size) * c.n_shared_experts);
      L.moe = std::move(moe);
    }
    load.pack_pending();
    m.layers.push_back(std::move(L));
    if (show) std::fprintf(stderr, "\rloading %s: layer %d/%d (%.0f MB mapped)", dir.c_str(), l + 1,
                           c.num_hidden_layers, load.bytes() / 1e6);
  }
  if (show) std::fprintf(stderr, "\n");
  return m;
}

double weight_bytes(const ModelConfig& c, double experts_owned_per_layer) {
  const auto p = parameter_counts(c);
  const int moe_layers = c.num_hidden_layers - c.first_k_dense_replace;
  // FP8 linears carry one 4-byte scale per 128×128 block: 4/16384 bytes per parameter.
  const double fp8 = 1.0 + 4.0 / 16384;
  double bytes = 2 * p.embedding * 2;  // embed_tokens + lm_head, BF16
  bytes += c.num_hidden_layers * p.attention_per_layer * fp8;
  bytes += c.first_k_dense_replace * p.dense_mlp_per_layer * fp8;
  bytes += moe_layers * (p.gate_per_layer * 2 + p.expert * c.n_shared_experts * fp8 +
                         p.expert * experts_owned_per_layer * fp8);
  return bytes;
}

}  // namespace epserve::model
