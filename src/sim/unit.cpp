#include "sim/unit.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "base/error.h"

namespace epserve::sim {

Role parse_role(const std::string& s) {
  if (s == "prefill") return Role::prefill;
  if (s == "decode") return Role::decode;
  throw Error("unknown role '" + s + "' (known: prefill, decode)");
}

const char* role_name(Role r) { return r == Role::prefill ? "prefill" : "decode"; }

EngineEfficiency fitted_efficiency() {
  // FITTED (the only fitted constants of the unit model): the ratio between what DeepSeek's engine
  // reached on its published day (H800, 2025-02-27) and the kernel-level rates of hardware.cpp, for
  // each role. `epserve sim calibrate` refits them from the published day and prints both. The fit
  // goes through the day model, so it depends on its assumptions (target utilization 0.85, length
  // sigma 0.5; see docs/ARCHITECTURE.md "Fitted vs predicted").
  // Everything else (H100, SGLang's figures, the sweeps) is predicted with these values.
  EngineEfficiency e;
  e.prefill = 0.547;
  e.decode = 0.790;
  return e;
}

namespace {

struct Ctx {
  const Hardware& hw;
  const model::ModelConfig& c;
  double sm_frac = 1;  // fraction of SMs computing (prefill overlap gives some to communication)
};

double pad_rows(double m, int tile) {
  return m <= 0 ? 0 : tile <= 1 ? m : std::ceil(m / tile - 1e-9) * tile;
}

// epserve's CPU kernels (the cpu preset): seconds for y[M,N] = x[M,K] · W[N,K]ᵀ with wb bytes per
// weight. Decode regime (M ≤ decode_max_m): the weights stream from memory once and every widened
// weight is multiplied with the M rows (FP32 FMA). Prefill regime: each 128×128 weight tile is widened
// (FP8: dequantized; BF16: read) once per block of 128 activation rows, then multiplied with rows
// padded to 16 (panels of 32 rows in two vectors, a last one of ≤ 16 in one) at the dot-product peak
// for FP8 weights, at the FP32 FMA peak for BF16 ones. Sums, not maxima: one
// core both loads and multiplies.
// bf16_acts: BF16 weights times BF16 activations (the lm_head in DeepSeek numerics), whose products
// run as BF16 dot products (vdpbf16ps) where the CPU has them: at the dot rate, like FP8 weights.
double cpu_gemm_s(const Hardware& hw, double m, double n, double k, double wb, bool bf16_acts = false) {
  if (m <= 0) return 0;
  const double fp32 = hw.fp32_tflops * 1e12;
  const double mult_rate = bf16_acts ? hw.fp8_tflops * 1e12 : fp32;
  if (m <= hw.decode_max_m) {
    // The BF16-dot kernel streams its weights with less work per byte than the FP8 decode kernels
    // (no widening, two products per instruction): its own efficiency.
    const double stream = bf16_acts ? hw.hbm_dot_eff : hw.hbm_eff;
    return n * k * wb / (hw.hbm_gbps * 1e9 * stream) + 2 * m * n * k / (mult_rate * hw.decode_flop_eff);
  }
  const double blocks = std::ceil(m / 128 - 1e-9);
  const double mult = 2 * pad_rows(m, hw.gemm_row_tile) * n * k;
  if (wb == 1) return n * k * blocks / (fp32 * hw.dequant_eff) + mult / (hw.fp8_tflops * 1e12 * hw.gemm_eff);
  // BF16 weights: the AVX-512 kernels load their tiles as they are (the cost of reading them, once
  // per block of rows); the AVX2 kernels widen each 128 × 128 block into an FP32 tile as they do FP8
  // ones (per block of rows, at the dequantization's rate). Their products have their own efficiency.
  const double tiles = hw.bf16_widened ? n * k * blocks / (fp32 * hw.dequant_eff)
                                       : n * k * wb * blocks / (hw.hbm_gbps * 1e9 * hw.hbm_eff);
  return tiles + mult / (mult_rate * hw.gemm_bf16_eff);
}

// One GEMM y[M,N] = x[M,K] · W[N,K]ᵀ on one GPU: roofline of the padded FLOPs at the kernel rate and
// the bytes of weights (wb bytes each), FP8 activations in, BF16 out. Seconds; adds to flops/bytes.
double gemm(const Ctx& x, double m, double n, double k, double wb, bool bf16, double& flops, double& bytes,
            bool bf16_acts = false) {
  if (m <= 0) return 0;
  const double f = 2 * m * n * k;
  const double fpad = 2 * pad_rows(m, x.hw.gemm_row_tile) * n * k;
  const double b = n * k * wb + m * k * (bf16 ? 2 : 1) + m * n * 2;
  flops += f;
  bytes += b;
  if (x.hw.cpu_kernels) return cpu_gemm_s(x.hw, m, n, k, wb, bf16_acts);
  const double rate = (bf16 ? x.hw.bf16_tflops : x.hw.fp8_tflops) * 1e12 * x.hw.gemm_eff * x.sm_frac;
  return std::max(fpad / rate, b / (x.hw.hbm_gbps * 1e9 * x.hw.hbm_eff));
}

struct Workload {
  Role role;
  int ep, tp, slots, spg;
  double kv_len, hit, prefix_per_new, seq_per_token, eplb, attn_imb;
};

// Compute stages for one micro-batch of n tokens per GPU. Returns ATTN-0, ATTN-1, SHARED, MLP.
std::vector<StageCost> compute_stages(const Ctx& x, const Workload& w, double n, bool moe) {
  const auto& c = x.c;
  const double d = c.hidden_size, h = c.num_attention_heads, qr = c.q_lora_rank, kvr = c.kv_lora_rank,
               rope = c.qk_rope_head_dim, nope = c.qk_nope_head_dim, vd = c.v_head_dim;
  const double tp = w.tp, mt = n * tp;  // an attention TP group computes its DP rank's tokens together
  StageCost a0{"attn0"}, a1{"attn1"}, sh{"shared"}, mlp{"mlp"};
  double t;
  // ATTN-0: projections into the attention.
  t = gemm(x, mt, qr / tp, d, 1, false, a0.flops, a0.bytes);
  t += gemm(x, mt, (kvr + rope) / tp, d, 1, false, a0.flops, a0.bytes);
  t += gemm(x, mt, h * (nope + rope) / tp, qr, 1, false, a0.flops, a0.bytes);
  if (w.role == Role::decode && x.hw.cpu_kernels) {
    // epserve's absorbed path: q̃_h = U_hᵀ qn_h in the attention loops (below, ATTN-1)
  } else if (w.role == Role::decode) {
    // absorbed path: q̃_h = U_hᵀ qn_h, per head, BF16 (the demo dequantises kv_b to BF16)
    t += gemm(x, mt, h * kvr / tp, nope, 2, true, a0.flops, a0.bytes);
  } else {
    // naive path: K and V up-projected for the new tokens and the cached prefix
    t += gemm(x, mt * (1 + w.prefix_per_new), h * (nope + vd) / tp, kvr, 1, false, a0.flops, a0.bytes);
  }
  a0.ms = t * 1e3 * w.attn_imb;
  // ATTN-1: core attention, output projection, gate.
  double core;
  if (w.role == Role::decode && x.hw.cpu_kernels) {
    // epserve's absorbed attention kernel (model/absorbed_attention.h) per query token and head:
    // U absorb (nope·kvr), scores over the latent and rope (576·L), P·latent (512·L), V (v·kvr), at
    // the kernel's rate; plus kv_b_proj's BF16 U and Vᵀ, read once per step (they stay in cache from
    // token to token), streamed like weights.
    const double f = n * 2 * (h / tp) * (nope * kvr + ((kvr + rope) + kvr) * w.kv_len + vd * kvr);
    const double kv_b = (h / tp) * (nope + vd) * kvr * 2;
    a1.flops += f;
    a1.bytes += n * w.seq_per_token * w.kv_len * (kvr + rope) * 4 + kv_b;  // FP32 latent rows
    core = f / (x.hw.fp32_tflops * 1e12 * x.hw.attn_eff) + kv_b / (x.hw.hbm_gbps * 1e9 * x.hw.hbm_eff);
  } else if (w.role == Role::decode) {
    const double f = n * 2 * (h / tp) * ((kvr + rope) + kvr) * w.kv_len;       // QK over 576, PV over 512
    const double b = n * w.seq_per_token * w.kv_len * (kvr + rope) * 2;         // BF16 latent, once per sequence
    a1.flops += f;
    a1.bytes += b;
    core = std::max(f / (x.hw.bf16_tflops * 1e12 * x.hw.mla_decode_flop_eff * x.sm_frac),
                    b / (x.hw.hbm_gbps * 1e9 * x.hw.mla_decode_mem_eff));
    core += gemm(x, mt, h * vd / tp, kvr, 2, true, a1.flops, a1.bytes);  // V_h õ_h
  } else {
    // causal attention: a new token at offset i of the new part sees prefix + i keys
    const double ctx = w.kv_len * (1 + w.hit) / 2;
    const double f = n * 2 * (h / tp) * ((nope + rope) + vd) * ctx;
    a1.flops += f;
    // (cpu preset: epserve's blocked causal kernel, src/model/attention_core.cpp, FP32 FMAs)
    core = x.hw.cpu_kernels ? f / (x.hw.fp32_tflops * 1e12 * x.hw.attn_prefill_eff)
                            : f / (x.hw.bf16_tflops * 1e12 * x.hw.attn_prefill_eff * x.sm_frac);
  }
  t = core + gemm(x, mt, d / tp, h * vd, 1, false, a1.flops, a1.bytes);
  if (tp > 1) t += 2 * (tp - 1) / tp * mt * d * 2 / (x.hw.nvlink_gbps * 1e9 * x.hw.nvlink_eff);  // all-reduce
  if (moe) t += gemm(x, n, c.n_routed_experts, d, 2, true, a1.flops, a1.bytes);
  a1.ms = t * 1e3 * w.attn_imb;
  const double fi = moe ? c.moe_intermediate_size : c.intermediate_size;
  if (moe) {
    // SHARED: the shared expert(s) on the rank's own tokens.
    t = 0;
    for (int s = 0; s < c.n_shared_experts; ++s) {
      t += gemm(x, n, 2 * fi, d, 1, false, sh.flops, sh.bytes);
      t += gemm(x, n, d, fi, 1, false, sh.flops, sh.bytes);
    }
    sh.ms = t * 1e3;
    // MLP: routed experts on the slowest GPU (rows = its dispatch-receive load).
    const double k = c.num_experts_per_tok;
    const double rows = n * k * w.eplb;
    const double per_slot = rows / w.spg;
    const double mean_rows_per_slot = n * k * w.ep / w.slots;
    const double touched = w.spg * (1 - std::exp(-mean_rows_per_slot));
    const double fpad = 2 * w.spg * pad_rows(per_slot, x.hw.gemm_row_tile) * 3 * fi * d;
    mlp.flops = 2 * rows * 3 * fi * d;
    mlp.bytes = touched * 3 * fi * d + rows * (d + 2 * fi * 2 + d * 2);
    const double rate = x.hw.fp8_tflops * 1e12 * x.hw.gemm_eff * x.sm_frac;
    mlp.ms = 1e3 * std::max(fpad / rate, mlp.bytes / (x.hw.hbm_gbps * 1e9 * x.hw.hbm_eff));
    if (x.hw.cpu_kernels) {
      // epserve's grouped expert products: a slot's rows are Poisson with the mean above; each
      // touched slot runs gate+up (2·fi × d) and down (d × fi) on its r rows, in r's regime.
      const double lambda = rows / w.spg;
      double s = 0, p = std::exp(-lambda);
      const int rmax = int(lambda + 10 * std::sqrt(lambda) + 20);
      for (int r = 1; r <= rmax; ++r) {
        p *= lambda / r;
        s += p * (cpu_gemm_s(x.hw, r, 2 * fi, d, 1) + cpu_gemm_s(x.hw, r, d, fi, 1));
      }
      mlp.ms = 1e3 * w.spg * s;
    }
  } else {
    // dense layer: the SwiGLU MLP, data-parallel like attention
    t = gemm(x, n, 2 * fi, d, 1, false, mlp.flops, mlp.bytes);
    t += gemm(x, n, d, fi, 1, false, mlp.flops, mlp.bytes);
    mlp.ms = t * 1e3;
  }
  return {a0, a1, sh, mlp};
}

// Dispatch and combine for one micro-batch of n tokens per GPU (ms on the slowest GPU).
std::pair<StageCost, StageCost> comm_stages(const Ctx& x, const Workload& w, double n) {
  StageCost disp{"dispatch"}, comb{"combine"};
  disp.comm = comb.comm = true;
  if (w.ep <= 1 || n <= 0) return {disp, comb};
  const auto& c = x.c;
  const auto& hw = x.hw;
  const double d = c.hidden_size, k = c.num_experts_per_tok;
  const double disp_row = d + d / 128 * 4 + 16;  // FP8 + FP32 scales per 128 + header = 7,408 B
  const double comb_row = d * 2;                 // BF16 = 14,336 B
  const int gpn = std::max(1, hw.gpus_per_node);
  const int nodes = (w.ep + gpn - 1) / gpn;
  const double lat = hw.rdma_latency_us * 1e-6;
  if (w.role == Role::decode) {
    // Low-latency kernels: one row per (token, expert) pair, all over RDMA once the unit spans nodes.
    const double pairs = n * k;
    const double bw = (nodes > 1 ? hw.rdma_gbps * hw.ll_comm_eff : hw.nvlink_gbps * hw.nvlink_eff) * 1e9;
    disp.bytes = pairs * disp_row;
    comb.bytes = pairs * comb_row;
    disp.ms = 1e3 * (disp.bytes * w.eplb / bw + lat);
    comb.ms = 1e3 * (comb.bytes * w.eplb / bw + lat);
    return {disp, comb};
  }
  // Normal kernels: one row per destination node over RDMA, then one per destination GPU over
  // NVLink. Group-limited routing: topk_group of n_group groups; with G % N == 0 a node holds G/N
  // groups (EPLB's hierarchical policy), otherwise experts land on nodes as if at random.
  const double G = c.n_group, kg = c.topk_group;
  double p_node_untouched;
  if (nodes > 1 && c.n_group % nodes == 0) {
    const double g = G / nodes;
    auto choose = [](double a, double b) { return b > a ? 0.0 : std::tgamma(a + 1) / std::tgamma(b + 1) / std::tgamma(a - b + 1); };
    p_node_untouched = choose(G - g, kg) / choose(G, kg);
  } else {
    p_node_untouched = std::pow(1 - 1.0 / nodes, k);
  }
  const double remote_nodes = (nodes - 1) * (1 - p_node_untouched);
  const double other_gpus = (w.ep - 1) * (1 - std::pow(1 - 1.0 / w.ep, k));
  const double rdma_bw = hw.rdma_gbps * hw.normal_comm_eff * 1e9;
  const double nvl_bw = hw.nvlink_gbps * hw.nvlink_eff * 1e9;
  auto time = [&](double row) {
    const double rdma = n * remote_nodes * row, nvl = n * other_gpus * row;
    return std::pair{rdma + nvl, std::max(nodes > 1 ? rdma / rdma_bw : 0.0, nvl / nvl_bw)};
  };
  auto [db, dt] = time(disp_row);
  auto [cb, ct] = time(comb_row);
  disp.bytes = db;
  comb.bytes = cb;
  disp.ms = 1e3 * (dt * w.eplb + lat);
  comb.ms = 1e3 * (ct * w.eplb + lat);
  return {disp, comb};
}

struct Layer {
  std::vector<StageCost> stages;  // attn0 attn1 shared mlp dispatch combine (one micro-batch)
  double ms = 0;
  double imbalance = 1;           // max / mean expert load per GPU, EPLB and routing noise
};

double serial_ms(const std::vector<StageCost>& s) {
  double t = 0;
  for (const auto& x : s) t += x.ms;
  return t;
}

Layer moe_layer(const Hardware& hw, const model::ModelConfig& c, const Workload& w, double n, bool split,
                double eff) {
  Ctx x{hw, c, 1.0};
  if (split && w.role == Role::prefill && hw.sms > 0)
    x.sm_frac = double(hw.sms - hw.comm_sms_prefill) / hw.sms;
  const double nm = split ? n / 2 : n;
  // The slowest GPU: EPLB's static imbalance times the routing noise of a finite batch. A GPU's
  // received rows are about Poisson with mean R = n·k; the largest of P such GPUs is about
  // R + sqrt(2·ln P · R) (the Gaussian tail bound), a factor 1 + sqrt(2 ln P / R).
  Workload wl = w;
  const double mean_rows = nm * c.num_experts_per_tok;
  if (w.ep > 1 && mean_rows > 0) wl.eplb = w.eplb * (1 + std::sqrt(2 * std::log(double(w.ep)) / mean_rows));
  auto st = compute_stages(x, wl, nm, true);
  for (auto& s : st) s.ms /= eff;
  auto [d, cb] = comm_stages(x, wl, nm);
  st.push_back(d);
  st.push_back(cb);
  Layer L;
  L.stages = st;
  L.imbalance = wl.eplb;
  const double A0 = st[0].ms, A1 = st[1].ms, S = st[2].ms, M = st[3].ms, D = st[4].ms, C = st[5].ms;
  if (!split) {
    L.ms = A0 + A1 + S + M + D + C;
  } else if (w.role == Role::prefill) {
    // Prefill, two micro-batches (DeepSeek's figure): compute ATTN1 | SHARED0 | ATTN0 | MLP1 | MLP0 |
    // SHARED1 against COMBINE0 | DISPATCH1 | DISPATCH0 | COMBINE1.
    const double A = A0 + A1;
    L.ms = std::max(A + S, C) + std::max(A, D) + std::max(M, D) + std::max(M + S, C);
  } else {
    // Decode, five stages per micro-batch: SHARED+ATTN-0 against DISPATCH, MLP alone, ATTN-1
    // against COMBINE; the two micro-batches alternate.
    L.ms = 2 * (std::max(S + A0, D) + M + std::max(A1, C));
  }
  return L;
}

void validate(const Hardware& hw, const model::ModelConfig& c, const UnitSpec& s) {
  EPS_REQUIRE(s.ep >= 1, "--ep must be at least 1 (got " + std::to_string(s.ep) + ")");
  EPS_REQUIRE(s.redundant >= 0, "--redundant must not be negative (got " + std::to_string(s.redundant) + ")");
  const int slots = c.n_routed_experts + s.redundant;
  EPS_REQUIRE(slots % s.ep == 0, "EP size " + std::to_string(s.ep) + " does not divide the " +
                                     std::to_string(slots) + " expert slots (" +
                                     std::to_string(c.n_routed_experts) + " routed + " +
                                     std::to_string(s.redundant) + " redundant); change --ep or --redundant");
  const int dp = s.dp == 0 ? s.ep : s.dp;
  EPS_REQUIRE(dp >= 1 && s.ep % dp == 0, "--dp " + std::to_string(dp) + " must divide --ep " + std::to_string(s.ep));
  EPS_REQUIRE(std::isfinite(s.tokens_per_gpu) && s.tokens_per_gpu > 0, "--tokens-per-gpu must be positive");
  EPS_REQUIRE(std::isfinite(s.batch_per_gpu) && s.batch_per_gpu > 0, "--batch-per-gpu must be positive");
  EPS_REQUIRE(std::isfinite(s.kv_len) && s.kv_len >= 0, "--kv-len must not be negative");
  EPS_REQUIRE(s.hit_rate >= 0 && s.hit_rate < 1, "--hit-rate must be in [0, 1)");
  EPS_REQUIRE(s.eplb_imbalance >= 1, "--eplb-imbalance is max/mean load and must be at least 1");
  EPS_REQUIRE(s.attn_imbalance >= 1, "--attn-imbalance is max/mean load and must be at least 1");
  EPS_REQUIRE(s.mtp_accept >= 0 && s.mtp_accept <= std::max(1, c.num_nextn_predict_layers),
              "--mtp-accept must be in [0, MTP depth]");
  EPS_REQUIRE(s.efficiency >= 0 && s.efficiency <= 1, "--efficiency must be in (0, 1]");
  EPS_REQUIRE(hw.fp8_tflops > 0 && hw.hbm_gbps > 0, "hardware '" + hw.name + "' has no compute or memory rate");
}

}  // namespace

UnitResult simulate_unit(const Hardware& hw, const model::ModelConfig& c, const UnitSpec& spec_in) {
  UnitSpec spec = spec_in;
  if (spec.kv_len == 0) spec.kv_len = spec.role == Role::decode ? 4989 : 4096;
  if (spec.role == Role::decode) spec.hit_rate = 0;
  validate(hw, c, spec);
  const int dp = spec.dp == 0 ? spec.ep : spec.dp;
  Workload w;
  w.role = spec.role;
  w.ep = spec.ep;
  w.tp = spec.ep / dp;
  w.slots = c.n_routed_experts + spec.redundant;
  w.spg = w.slots / spec.ep;
  w.kv_len = spec.kv_len;
  w.hit = spec.hit_rate;
  w.prefix_per_new = spec.hit_rate / (1 - spec.hit_rate);
  const double q = 1 + (spec.mtp_accept > 0 ? 1 : 0);  // query tokens per sequence per step
  w.seq_per_token = 1 / q;
  w.eplb = spec.eplb_imbalance;
  w.attn_imb = spec.attn_imbalance;

  UnitResult r;
  r.spec = spec;
  r.hw = hw.name;
  r.gpus = spec.ep;
  const int gpn = std::max(1, hw.gpus_per_node);
  r.nodes = (spec.ep + gpn - 1) / gpn;
  r.experts_per_gpu = w.spg;
  // The engine efficiencies stand for what DeepSeek's production engine loses against its kernels;
  // the cpu preset's kernel efficiencies are fitted to epserve's engine itself, so it has none.
  const double eff = spec.efficiency > 0 ? spec.efficiency
                     : hw.cpu_kernels              ? 1.0
                     : spec.role == Role::prefill ? fitted_efficiency().prefill
                                                  : fitted_efficiency().decode;
  r.efficiency = eff;
  const double n = spec.role == Role::prefill ? spec.tokens_per_gpu : spec.batch_per_gpu * q;
  r.tokens_per_step = n;

  const int moe_layers = c.num_hidden_layers - c.first_k_dense_replace + (spec.mtp_accept > 0 ? 1 : 0);
  const int dense_layers = c.first_k_dense_replace;
  const Layer serial = moe_layer(hw, c, w, n, false, eff);
  Layer chosen = serial;
  if (spec.overlap) {
    // The engine splits only when that helps (for tiny batches it does not): overlap is never slower.
    const Layer split = moe_layer(hw, c, w, n, true, eff);
    if (split.ms < serial.ms) {
      chosen = split;
      r.split = true;
    }
  }
  r.microbatch_tokens = r.split ? n / 2 : n;
  r.stages = chosen.stages;
  r.moe_layer_ms = chosen.ms;
  r.moe_layer_serial_ms = serial.ms;
  r.expert_imbalance = chosen.imbalance;
  {
    Ctx x{hw, c, 1.0};
    auto st = compute_stages(x, w, n, false);
    r.dense_layers_ms = dense_layers * serial_ms(st) / eff;
    double f = 0, b = 0;
    const double rows = spec.role == Role::decode
                            ? n * (spec.mtp_accept > 0 ? 2 : 1)  // MTP runs its own head on the drafts
                            : std::max(1.0, n / std::max(1.0, spec.kv_len * (1 - spec.hit_rate)));
    r.head_ms = 1e3 * gemm(x, rows, c.vocab_size, c.hidden_size, 2, true, f, b, /*bf16_acts=*/true) / eff;
  }
  r.step_ms = moe_layers * r.moe_layer_ms + r.dense_layers_ms + r.head_ms;
  for (const auto& s : serial.stages) (s.comm ? r.comm_ms : r.compute_ms) += s.ms * moe_layers;
  r.compute_ms += r.dense_layers_ms + r.head_ms;

  const double kv_token_bytes = double(c.num_hidden_layers) * (c.kv_lora_rank + c.qk_rope_head_dim) * 2;
  if (spec.role == Role::prefill) {
    const double cached = n * w.prefix_per_new;
    r.kv_load_ms = hw.kv_read_gbps_per_node > 0
                       ? 1e3 * cached * kv_token_bytes / (hw.kv_read_gbps_per_node * 1e9 / gpn)
                       : 0;
    r.step_ms = std::max(r.step_ms, r.kv_load_ms);
    const double s = r.step_ms / 1e3;
    r.computed_tokens_per_node_s = gpn * n / s;
    r.input_tokens_per_node_s = r.computed_tokens_per_node_s / (1 - spec.hit_rate);
    r.ttft_step_s = s;
  } else {
    const double s = r.step_ms / 1e3;
    r.output_tokens_per_user_s = (1 + spec.mtp_accept) / s;
    r.output_tokens_per_node_s = gpn * spec.batch_per_gpu * (1 + spec.mtp_accept) / s;
  }
  // Memory per GPU: FP8 weights (attention split by TP), BF16 embedding + head, KV cache (BF16).
  const auto p = model::parameter_counts(c);
  r.weights_gb = (p.attention_per_layer / w.tp * c.num_hidden_layers + p.dense_mlp_per_layer * dense_layers +
                  p.expert * (w.spg + c.n_shared_experts) * (c.num_hidden_layers - dense_layers) +
                  2 * p.gate_per_layer * (c.num_hidden_layers - dense_layers) + 2 * 2 * p.embedding) /
                 1e9;
  const double kv_tokens = spec.role == Role::decode ? spec.batch_per_gpu * spec.kv_len
                                                     : n * (1 + w.prefix_per_new);
  r.kv_gb = kv_tokens * kv_token_bytes / 1e9;
  r.fits_in_memory = r.weights_gb + r.kv_gb <= 0.9 * hw.hbm_gb;
  return r;
}

UnitResult decode_at_slo(const Hardware& hw, const model::ModelConfig& c, UnitSpec spec, double min_user_tok_s) {
  EPS_REQUIRE(min_user_tok_s > 0, "the per-user speed target must be positive");
  spec.role = Role::decode;
  auto ok = [&](double b) {
    spec.batch_per_gpu = b;
    const UnitResult r = simulate_unit(hw, c, spec);
    return r.output_tokens_per_user_s >= min_user_tok_s && r.fits_in_memory;
  };
  double lo = 1, hi = 4096;
  if (!ok(lo)) {
    spec.batch_per_gpu = 1;
    return simulate_unit(hw, c, spec);
  }
  while (hi - lo > 1) {
    const double mid = std::floor((lo + hi) / 2);
    (ok(mid) ? lo : hi) = mid;
  }
  spec.batch_per_gpu = lo;
  return simulate_unit(hw, c, spec);
}

double predict_single_rank_step_ms(const Hardware& hw, const model::ModelConfig& c, Role role, double batch,
                                   double kv_len) {
  UnitSpec s;
  s.role = role;
  s.ep = 1;
  s.redundant = 0;
  s.overlap = false;
  s.efficiency = 1.0;
  if (role == Role::prefill) {
    s.tokens_per_gpu = batch;
    s.kv_len = kv_len > 0 ? kv_len : batch;
  } else {
    s.batch_per_gpu = batch;
    s.kv_len = kv_len;
  }
  return simulate_unit(hw, c, s).step_ms;
}

double eplb_imbalance(const std::vector<std::vector<double>>& load, int slots, int gpus) {
  EPS_REQUIRE(!load.empty(), "the load matrix is empty");
  EPS_REQUIRE(gpus >= 1 && slots % gpus == 0, "GPUs must divide the expert slots");
  double sum = 0;
  for (const auto& row : load) {
    const int e = int(row.size());
    EPS_REQUIRE(e >= 1 && slots >= e, "the load matrix has more experts than slots");
    for (double v : row) EPS_REQUIRE(v >= 0 && std::isfinite(v), "the load matrix has a negative or non-finite load");
    // REPLICATE: each extra slot goes to the expert with the largest load per replica.
    std::vector<int> cnt(e, 1);
    for (int s = e; s < slots; ++s) {
      int best = 0;
      for (int j = 1; j < e; ++j)
        if (row[j] / cnt[j] > row[best] / cnt[best]) best = j;
      ++cnt[best];
    }
    std::vector<double> items;
    for (int j = 0; j < e; ++j)
      for (int r = 0; r < cnt[j]; ++r) items.push_back(row[j] / cnt[j]);
    std::sort(items.begin(), items.end(), std::greater<>());
    // PACK: heaviest first into the least loaded GPU that still has a free slot.
    const int cap = slots / gpus;
    std::vector<double> bin(gpus, 0);
    std::vector<int> used(gpus, 0);
    for (double v : items) {
      int b = -1;
      for (int g = 0; g < gpus; ++g)
        if (used[g] < cap && (b < 0 || bin[g] < bin[b])) b = g;
      bin[b] += v;
      ++used[b];
    }
    const double mean = std::accumulate(bin.begin(), bin.end(), 0.0) / gpus;
    sum += mean > 0 ? *std::max_element(bin.begin(), bin.end()) / mean : 1.0;
  }
  return sum / load.size();
}

nlohmann::json UnitResult::to_json() const {
  nlohmann::json j;
  j["hw"] = hw;
  j["role"] = role_name(spec.role);
  j["ep"] = spec.ep;
  j["dp"] = spec.dp == 0 ? spec.ep : spec.dp;
  j["redundant_experts"] = spec.redundant;
  j["gpus"] = gpus;
  j["nodes"] = nodes;
  j["experts_per_gpu"] = experts_per_gpu;
  if (spec.role == Role::prefill) {
    j["tokens_per_gpu"] = spec.tokens_per_gpu;
    j["prompt_len"] = spec.kv_len;
    j["hit_rate"] = spec.hit_rate;
  } else {
    j["batch_per_gpu"] = spec.batch_per_gpu;
    j["kv_len"] = spec.kv_len;
    j["mtp_accept"] = spec.mtp_accept;
  }
  j["overlap"] = spec.overlap;
  j["two_microbatches"] = split;
  j["eplb_imbalance"] = spec.eplb_imbalance;
  j["expert_imbalance"] = expert_imbalance;
  j["attn_imbalance"] = spec.attn_imbalance;
  j["engine_efficiency"] = efficiency;
  j["tokens_per_step_per_gpu"] = tokens_per_step;
  j["microbatch_tokens"] = microbatch_tokens;
  j["step_ms"] = step_ms;
  nlohmann::json st = nlohmann::json::object();
  for (const auto& s : stages)
    st[s.name] = {{"ms", s.ms}, {"flops", s.flops}, {"bytes", s.bytes}, {"kind", s.comm ? "comm" : "compute"}};
  j["stages_per_moe_layer_per_microbatch"] = st;
  j["moe_layer_ms"] = moe_layer_ms;
  j["moe_layer_serial_ms"] = moe_layer_serial_ms;
  j["dense_layers_ms"] = dense_layers_ms;
  j["head_ms"] = head_ms;
  j["compute_ms"] = compute_ms;
  j["comm_ms"] = comm_ms;
  if (spec.role == Role::prefill) {
    j["kv_load_ms"] = kv_load_ms;
    j["input_tokens_per_node_s"] = input_tokens_per_node_s;
    j["computed_tokens_per_node_s"] = computed_tokens_per_node_s;
    j["step_s"] = ttft_step_s;
  } else {
    j["output_tokens_per_node_s"] = output_tokens_per_node_s;
    j["output_tokens_per_user_s"] = output_tokens_per_user_s;
  }
  j["weights_gb_per_gpu"] = weights_gb;
  j["kv_gb_per_gpu"] = kv_gb;
  j["fits_in_memory"] = fits_in_memory;
  return j;
}

}  // namespace epserve::sim
