#include "sim/engine_probe.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>

#include <omp.h>
#include <random>
#include <set>

#include "base/error.h"

namespace epserve::sim {

std::string EngineCase::label() const {
  return role == Role::prefill ? "prefill " + std::to_string(batch) + "x" + std::to_string(length)
                               : "decode " + std::to_string(batch) + " @" + std::to_string(length);
}

std::vector<EngineCase> parse_engine_cases(const std::string& s) {
  std::vector<EngineCase> out;
  size_t at = 0;
  while (at <= s.size()) {
    const size_t end = std::min(s.find(',', at), s.size());
    const std::string item = s.substr(at, end - at);
    at = end + 1;
    if (item.empty()) continue;
    const auto bad = [&] {
      return Error("engine case '" + item + "' must be prefill:PROMPTSxLENGTH or decode:BATCH@CONTEXT");
    };
    const size_t colon = item.find(':');
    if (colon == std::string::npos) throw bad();
    EngineCase c;
    c.role = parse_role(item.substr(0, colon));
    const std::string rest = item.substr(colon + 1);
    const size_t sep = rest.find(c.role == Role::prefill ? 'x' : '@');
    if (sep == std::string::npos) throw bad();
    try {
      size_t u1 = 0, u2 = 0;
      c.batch = std::stoi(rest.substr(0, sep), &u1);
      c.length = std::stoi(rest.substr(sep + 1), &u2);
      if (u1 != sep || u2 != rest.size() - sep - 1) throw bad();
    } catch (const Error&) {
      throw;
    } catch (...) {
      throw bad();
    }
    EPS_REQUIRE(c.batch > 0 && c.length > 0, "engine case '" + item + "': batch and length must be positive");
    out.push_back(c);
  }
  EPS_REQUIRE(!out.empty(), "no engine cases given");
  return out;
}

namespace {

using clock_type = std::chrono::steady_clock;

double ms_since(clock_type::time_point t) {
  return std::chrono::duration<double, std::milli>(clock_type::now() - t).count();
}

double cpu_ms_now() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return 1e3 * double(ts.tv_sec) + 1e-6 * double(ts.tv_nsec);
}

double distinct_per_layer(const std::vector<model::Routing>& log) {
  if (log.empty()) return 0;
  double sum = 0;
  for (const auto& r : log) sum += double(std::set<int>(r.expert.begin(), r.expert.end()).size());
  return sum / double(log.size());
}

}  // namespace

std::vector<EngineTiming> measure_engine(model::Model& m, const std::vector<EngineCase>& cases, int reps,
                                         kernels::Numerics numerics, const std::function<void()>& between_rounds) {
  EPS_REQUIRE(reps >= 1, "repetitions must be at least 1");
  const auto& c = m.config();
  std::mt19937 rng(1);
  auto prompt = [&](int len) {
    std::vector<int> p(len);
    for (int& t : p) t = int(rng() % uint32_t(c.vocab_size));
    return p;
  };
  const size_t n = cases.size();
  std::vector<EngineTiming> out(n);
  std::vector<double> experts(n, 0);
  // Decode cases keep their sequences across repetitions (one more token of context each time).
  std::vector<std::vector<model::SequenceKv>> kvs(n);
  auto step = [&](size_t i, bool record) {
    const auto& ec = cases[i];
    auto& t = out[i];
    std::vector<model::SequenceKv> fresh;
    std::vector<std::vector<int>> tokens;
    std::vector<model::SequenceInput> batch;
    if (ec.role == Role::prefill) {
      for (int b = 0; b < ec.batch; ++b) fresh.push_back(m.new_sequence()), tokens.push_back(prompt(ec.length));
      for (int b = 0; b < ec.batch; ++b) batch.push_back({&fresh[b], tokens[b]});
    } else {
      for (int b = 0; b < ec.batch; ++b) tokens.push_back({int(rng() % uint32_t(c.vocab_size))});
      for (int b = 0; b < ec.batch; ++b) batch.push_back({&kvs[i][b], tokens[b]});
    }
    std::vector<model::Routing> routing;
    model::ForwardOptions options{numerics, model::AttentionPath::kAuto, false, &routing};
    m.profile() = {};
    const double c0 = cpu_ms_now();
    const auto t0 = clock_type::now();
    m.forward(batch, options);
    const double ms = ms_since(t0);
    const double cpu = (cpu_ms_now() - c0) / t.threads;
    if (!record) return;
    if (t.cpu_ms.empty() || cpu < t.best_cpu_ms) t.best_cpu_ms = cpu;
    t.cpu_ms.push_back(cpu);
    if (t.step_ms.empty() || ms < t.best_ms) {
      t.best_ms = ms;
      t.best = m.profile();
    }
    t.step_ms.push_back(ms);
    experts[i] += distinct_per_layer(routing);
  };
  for (size_t i = 0; i < n; ++i) {
    out[i].c = cases[i];
    out[i].threads = omp_get_max_threads();
    if (cases[i].role == Role::decode) {
      std::vector<std::vector<int>> prompts;
      for (int b = 0; b < cases[i].batch; ++b) kvs[i].push_back(m.new_sequence()), prompts.push_back(prompt(cases[i].length));
      for (int b = 0; b < cases[i].batch; b += 8) {  // the contexts, untimed, in groups
        std::vector<model::SequenceInput> batch;
        for (int j = b; j < std::min(cases[i].batch, b + 8); ++j) batch.push_back({&kvs[i][j], prompts[j]});
        m.forward(batch, {numerics});
      }
    }
    step(i, false);  // warm-up: page faults, allocations
  }
  // Round robin over the cases, so that a busy spell of the machine's other processes does not
  // spoil every repetition of one case; the best repetition counts.
  for (int r = 0; r < reps; ++r) {
    for (size_t i = 0; i < n; ++i) step(i, true);
    if (between_rounds) between_rounds();
  }
  for (size_t i = 0; i < n; ++i) {
    auto sorted = out[i].step_ms;
    std::sort(sorted.begin(), sorted.end());
    out[i].median_ms = sorted[sorted.size() / 2];
    out[i].distinct_experts = experts[i] / reps;
  }
  m.profile() = {};
  return out;
}

double predict_engine_step_ms(const Hardware& hw, const model::ModelConfig& cfg, const EngineCase& e) {
  if (e.role == Role::prefill)
    return predict_single_rank_step_ms(hw, cfg, Role::prefill, double(e.batch) * e.length, e.length);
  return predict_single_rank_step_ms(hw, cfg, Role::decode, e.batch, e.length + 1);
}

namespace {

// The fitted constants: every one an efficiency (time ∝ 1/value). (A fixed cost per product was
// tried: the fit over two layer counts gave it a negative value.)
struct Knob {
  const char* name;
  double Hardware::*field;
};
constexpr Knob kKnobs[] = {{"hbm", &Hardware::hbm_eff},         {"decode_flop", &Hardware::decode_flop_eff},
                           {"gemm", &Hardware::gemm_eff},       {"dequant", &Hardware::dequant_eff},
                           {"attn", &Hardware::attn_eff},       {"hbm_dot", &Hardware::hbm_dot_eff},
                           {"attn_prefill", &Hardware::attn_prefill_eff}, {"gemm_bf16", &Hardware::gemm_bf16_eff}};
constexpr int K = int(std::size(kKnobs));

// Solves the normal equations A x = b (n small) by Gaussian elimination with partial pivoting.
std::vector<double> solve(std::vector<std::vector<double>> A, std::vector<double> b) {
  const size_t n = b.size();
  for (size_t i = 0; i < n; ++i) {
    size_t p = i;
    for (size_t r = i + 1; r < n; ++r)
      if (std::abs(A[r][i]) > std::abs(A[p][i])) p = r;
    std::swap(A[i], A[p]);
    std::swap(b[i], b[p]);
    EPS_REQUIRE(std::abs(A[i][i]) > 1e-300, "the fit is singular: the cases do not constrain every efficiency");
    for (size_t r = 0; r < n; ++r) {
      if (r == i) continue;
      const double f = A[r][i] / A[i][i];
      for (size_t c = i; c < n; ++c) A[r][c] -= f * A[i][c];
      b[r] -= f * b[i];
    }
  }
  std::vector<double> x(n);
  for (size_t i = 0; i < n; ++i) x[i] = b[i] / A[i][i];
  return x;
}

}  // namespace

void CpuFit::apply(Hardware& hw) const {
  for (size_t j = 0; j < values.size(); ++j) hw.*kKnobs[j].field = values[j];
  hw.mla_decode_flop_eff = hw.attn_eff;
  hw.mla_decode_mem_eff = hw.hbm_eff;
}

CpuFit fit_cpu_efficiencies(const std::vector<FitPoint>& points, const std::vector<std::string>& keep) {
  std::string all;
  for (const auto& k : kKnobs) all += (all.empty() ? "" : ", ") + std::string(k.name);
  std::vector<bool> held(K, false);
  for (const auto& name : keep) {
    const auto it = std::find_if(std::begin(kKnobs), std::end(kKnobs), [&](const Knob& k) { return name == k.name; });
    EPS_REQUIRE(it != std::end(kKnobs), "no efficiency '" + name + "' to keep (" + all + ")");
    held[size_t(it - std::begin(kKnobs))] = true;
  }
  std::vector<int> free;
  for (int j = 0; j < K; ++j)
    if (!held[size_t(j)]) free.push_back(j);
  const int F = int(free.size());
  EPS_REQUIRE(F > 0, "every efficiency is kept: nothing to fit");
  EPS_REQUIRE(points.size() >= size_t(F), "the fit needs at least " + std::to_string(F) + " measured cases");
  // Column j, row i: point i's time with efficiency j = 1 and every other term switched off, over
  // the measured time; the prediction is Σ_j column_j / eff_j. Held efficiencies' terms (at the
  // point's own preset value) move to the right-hand side: Σ_free column_j x_j ≈ 1 − Σ_held column_j / eff_j.
  std::vector<std::vector<double>> X(points.size(), std::vector<double>(K));
  std::vector<double> rhs(points.size(), 1.0);
  for (size_t i = 0; i < points.size(); ++i) {
    EPS_REQUIRE(points[i].hw.cpu_kernels, "only the cpu preset is fitted to the engine");
    for (int j = 0; j < K; ++j) {
      Hardware h = points[i].hw;
      for (int q = 0; q < K; ++q) h.*kKnobs[q].field = q == j ? 1.0 : 1e30;
      X[i][j] = predict_engine_step_ms(h, points[i].cfg, points[i].c) / points[i].measured_ms;
      if (held[size_t(j)]) rhs[i] -= X[i][j] / (points[i].hw.*kKnobs[j].field);
    }
  }
  std::vector<std::vector<double>> A(F, std::vector<double>(F, 0));
  std::vector<double> b(F, 0);
  for (size_t i = 0; i < points.size(); ++i)
    for (int r = 0; r < F; ++r) {
      b[r] += X[i][free[r]] * rhs[i];
      for (int c = 0; c < F; ++c) A[r][c] += X[i][free[r]] * X[i][free[c]];
    }
  const auto x = solve(A, b);
  CpuFit fit;
  for (int j = 0; j < K; ++j) {
    fit.names.push_back(kKnobs[j].name);
    if (held[size_t(j)]) {
      fit.values.push_back(points.front().hw.*kKnobs[j].field);
      continue;
    }
    const double v = x[size_t(std::find(free.begin(), free.end(), j) - free.begin())];
    EPS_REQUIRE(v > 0, "the fit gave '" + std::string(kKnobs[j].name) +
                           "' no positive value: add cases where it matters (decode at batch 1 and 8 for hbm "
                           "and decode_flop, prefill for gemm and dequant, long contexts for attn, batch 1 "
                           "on two layer counts for hbm_dot, long prompts for attn_prefill)");
    fit.values.push_back(1 / v);
  }
  return fit;
}

nlohmann::json engine_timing_json(const EngineTiming& t, double predicted_ms) {
  const auto& p = t.best;
  const std::string spec = std::string(role_name(t.c.role)) + ":" + std::to_string(t.c.batch) +
                           (t.c.role == Role::prefill ? "x" : "@") + std::to_string(t.c.length);
  return {{"case", t.c.label()},
          {"spec", spec},
          {"role", role_name(t.c.role)},
          {"batch", t.c.batch},
          {"length", t.c.length},
          {"measured_best_wall_ms", t.best_ms},
          {"measured_median_ms", t.median_ms},
          {"threads", t.threads},
          {"measured_best_cpu_ms", t.best_cpu_ms},
          {"cpu_ms", t.cpu_ms},
          {"predicted_ms", predicted_ms},
          {"measured_ms", t.measured_ms()},
          {"error", predicted_ms / t.measured_ms() - 1},
          {"distinct_experts_per_layer", t.distinct_experts},
          {"steps_ms", t.step_ms},
          {"best_profile_ms",
           {{"attention", 1e3 * p.attention},
            {"moe", 1e3 * p.moe},
            {"dense_mlp", 1e3 * p.dense_mlp},
            {"lm_head", 1e3 * p.lm_head},
            {"norms", 1e3 * p.norms},
            {"embed", 1e3 * p.embed}}}};
}

}  // namespace epserve::sim
