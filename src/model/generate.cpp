#include "model/generate.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <numeric>

#include "base/bf16.h"
#include "base/error.h"
#include "base/fp8.h"
#include "model/checkpoint_layout.h"
#include "model/safetensors.h"

namespace epserve::model {

namespace {

// xoshiro256+ seeded by splitmix64: fast and reproducible across platforms (std:: distributions are not).
class Rng {
 public:
  explicit Rng(uint64_t seed) {
    for (auto& s : s_) {
      seed += 0x9e3779b97f4a7c15ull;
      uint64_t z = seed;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
      s = z ^ (z >> 31);
    }
  }
  uint64_t next() {
    const uint64_t result = s_[0] + s_[3], t = s_[1] << 17;
    s_[2] ^= s_[0]; s_[3] ^= s_[1]; s_[1] ^= s_[2]; s_[0] ^= s_[3]; s_[2] ^= t;
    s_[3] = (s_[3] << 45) | (s_[3] >> 19);
    return result;
  }
  double uniform() { return double(next() >> 11) * 0x1.0p-53; }  // [0, 1)
  // Box-Muller pairs.
  double normal() {
    if (has_spare_) { has_spare_ = false; return spare_; }
    const double u = 1.0 - uniform(), v = uniform();
    const double r = std::sqrt(-2.0 * std::log(u));
    spare_ = r * std::sin(2 * M_PI * v);
    has_spare_ = true;
    return r * std::cos(2 * M_PI * v);
  }

 private:
  uint64_t s_[4];
  double spare_ = 0;
  bool has_spare_ = false;
};

uint64_t tensor_seed(uint64_t seed, const std::string& name) {
  uint64_t h = 1469598103934665603ull ^ seed;
  for (unsigned char ch : name) h = (h ^ ch) * 1099511628211ull;
  return h;
}

// Standard deviations chosen so that activations stay near unit scale through the blocks: a linear
// layer with fan-in n gets 1/sqrt(n) (its outputs have the variance of its inputs); the router gets
// 1.5/sqrt(d) so sigmoid scores spread over (0, 1); the lm_head 2/sqrt(d) so logits have std ≈ 2
// (a clear favourite among 129k tokens, without saturating the softmax).
double weight_std(const TensorSpec& t, const ModelConfig& c) {
  if (t.name.ends_with("embed_tokens.weight")) return 1.0;
  if (t.name.ends_with("head.weight")) return 2.0 / std::sqrt(double(c.hidden_size));
  if (t.name.ends_with("mlp.gate.weight")) return 1.5 / std::sqrt(double(c.hidden_size));
  return 1.0 / std::sqrt(double(t.shape.back()));
}

std::vector<uint8_t> bf16_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> out(v.size() * 2);
  for (size_t i = 0; i < v.size(); ++i) {
    const uint16_t b = float_to_bf16(float(v[i])).bits;
    std::memcpy(&out[2 * i], &b, 2);
  }
  return out;
}

struct Generated {
  std::vector<uint8_t> data;
  std::vector<uint8_t> scales;  // FP8 linears only
};

Generated generate_tensor(const TensorSpec& t, const GenerateOptions& o) {
  const auto& c = o.config;
  Rng rng(tensor_seed(o.seed, t.name));
  Generated g;
  const int64_t n = std::accumulate(t.shape.begin(), t.shape.end(), int64_t(1), std::multiplies<>());
  switch (t.role) {
    case TensorRole::kNorm: {
      std::vector<float> v(n);
      for (auto& x : v) x = float(1.0 + 0.1 * rng.normal());
      g.data = bf16_bytes(v);
      break;
    }
    case TensorRole::kBf16: {
      std::vector<float> v(n);
      const double s = weight_std(t, c);
      for (auto& x : v) x = float(s * rng.normal());
      g.data = bf16_bytes(v);
      break;
    }
    case TensorRole::kF32: {  // e_score_correction_bias
      std::vector<float> v(n);
      std::vector<int> rank(n);
      std::iota(rank.begin(), rank.end(), 1);
      for (int64_t i = n - 1; i > 0; --i) std::swap(rank[i], rank[rng.next() % uint64_t(i + 1)]);
      for (int64_t i = 0; i < n; ++i)
        v[i] = float(0.01 * rng.normal() - 0.15 * o.expert_skew * std::log(double(rank[i])));
      g.data.resize(n * 4);
      std::memcpy(g.data.data(), v.data(), n * 4);
      break;
    }
    case TensorRole::kFp8Linear: {
      const int64_t rows = t.shape[0], cols = t.shape[1];
      const auto sshape = scale_shape(t.shape);
      const double s = weight_std(t, c);
      std::vector<float> w(n);
      for (auto& x : w) x = float(s * rng.normal());
      std::vector<float> scales(sshape[0] * sshape[1]);
      g.data.resize(n);
      for (int64_t br = 0; br < sshape[0]; ++br)
        for (int64_t bc = 0; bc < sshape[1]; ++bc) {
          const int64_t r0 = br * 128, r1 = std::min(rows, r0 + 128), c0 = bc * 128, c1 = std::min(cols, c0 + 128);
          float amax = 0;
          for (int64_t r = r0; r < r1; ++r)
            for (int64_t k = c0; k < c1; ++k) amax = std::max(amax, std::fabs(w[r * cols + k]));
          const float scale = std::max(amax, 1e-12f) / kFp8Max;
          scales[br * sshape[1] + bc] = scale;
          for (int64_t r = r0; r < r1; ++r)
            for (int64_t k = c0; k < c1; ++k) g.data[r * cols + k] = float_to_fp8_e4m3(w[r * cols + k] / scale);
        }
      g.scales.resize(scales.size() * 4);
      std::memcpy(g.scales.data(), scales.data(), g.scales.size());
      break;
    }
  }
  return g;
}

size_t spec_bytes(const TensorSpec& t) {
  int64_t n = 1;
  for (auto s : t.shape) n *= s;
  switch (t.role) {
    case TensorRole::kFp8Linear: {
      const auto ss = scale_shape(t.shape);
      return size_t(n) + size_t(ss[0] * ss[1] * 4);
    }
    case TensorRole::kF32: return size_t(n) * 4;
    default: return size_t(n) * 2;
  }
}

}  // namespace

void generate_checkpoint(const GenerateOptions& o, const std::filesystem::path& out) {
  o.config.validate("gen-model");
  std::vector<TensorSpec> specs = global_tensors(o.config);
  // DeepSeek's shards run in layer order with the globals first.
  const int blocks = o.config.num_hidden_layers + (o.include_mtp ? o.config.num_nextn_predict_layers : 0);
  for (int l = 0; l < blocks; ++l) {
    auto layer = layer_tensors(o.config, l);
    specs.insert(specs.end(), layer.begin(), layer.end());
  }
  // Assign tensors to shards by size, then name the shards.
  std::vector<int> shard_of(specs.size());
  size_t total = 0, in_shard = 0;
  int shards = 1;
  for (size_t i = 0; i < specs.size(); ++i) {
    const size_t b = spec_bytes(specs[i]);
    if (!o.single_file && in_shard > 0 && in_shard + b > o.shard_bytes) {
      ++shards;
      in_shard = 0;
    }
    shard_of[i] = shards - 1;
    in_shard += b;
    total += b;
  }
  std::filesystem::create_directories(out);
  auto shard_name = [&](int s) {
    if (o.single_file) return std::string("model.safetensors");
    char buf[64];
    std::snprintf(buf, sizeof buf, "model-%05d-of-%05d.safetensors", s + 1, shards);
    return std::string(buf);
  };
  nlohmann::json weight_map = nlohmann::json::object();
  size_t done = 0;
  for (int s = 0; s < shards; ++s) {
    std::vector<size_t> members;
    for (size_t i = 0; i < specs.size(); ++i)
      if (shard_of[i] == s) members.push_back(i);
    std::vector<Generated> generated(members.size());
#pragma omp parallel for schedule(dynamic)
    for (size_t j = 0; j < members.size(); ++j) generated[j] = generate_tensor(specs[members[j]], o);
    SafetensorsWriter writer;
    for (size_t j = 0; j < members.size(); ++j) {
      const auto& t = specs[members[j]];
      const Dtype dtype = t.role == TensorRole::kFp8Linear ? Dtype::F8_E4M3
                          : t.role == TensorRole::kF32     ? Dtype::F32
                                                           : Dtype::BF16;
      done += generated[j].data.size() + generated[j].scales.size();
      writer.add(t.name, dtype, t.shape, std::move(generated[j].data));
      weight_map[t.name] = shard_name(s);
      if (t.role == TensorRole::kFp8Linear) {
        writer.add(scale_name(t.name), Dtype::F32, scale_shape(t.shape), std::move(generated[j].scales));
        weight_map[scale_name(t.name)] = shard_name(s);
      }
    }
    writer.write(out / shard_name(s));
    if (o.progress && total > (64u << 20))
      std::fprintf(stderr, "\rgen-model: wrote %s (%.0f/%.0f MB)", shard_name(s).c_str(), done / 1e6, total / 1e6);
  }
  if (o.progress && total > (64u << 20)) std::fprintf(stderr, "\n");
  if (!o.single_file) {
    nlohmann::json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    std::ofstream(out / "model.safetensors.index.json") << index.dump(2) << "\n";
  }
  std::ofstream(out / "config.json") << o.config.to_json().dump(2) << "\n";
  if (!o.tokenizer_dir.empty()) {
    for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
      const auto src = o.tokenizer_dir / f;
      EPS_REQUIRE(std::filesystem::exists(src),
                  src.string() + ": missing (run scripts/fetch-node-deps.sh, or pass --tokenizer-dir)");
      std::filesystem::copy_file(src, out / f, std::filesystem::copy_options::overwrite_existing);
    }
  }
}

}  // namespace epserve::model
