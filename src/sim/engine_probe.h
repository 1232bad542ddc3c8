// Trust: the cpu preset against epserve itself. Times real engine steps on this machine (one rank)
// and gives the simulator's prediction for the same step, so that the two can be compared
// (`epserve sim engine`, tests/sim/test_calibration_serial.cpp, docs/PERFORMANCE.md "Simulator").
#pragma once
#include <nlohmann/json.hpp>
#include <functional>
#include <string>
#include <vector>

#include "kernels/matmul.h"
#include "model/model.h"
#include "sim/hardware.h"
#include "sim/unit.h"

namespace epserve::sim {

// One engine step: prefill of `batch` prompts of `length` tokens in one forward, or one decode step
// of `batch` sequences that hold `length` tokens of context.
struct EngineCase {
  Role role = Role::decode;
  int batch = 1;
  int length = 128;
  std::string label() const;  // "prefill 1x256", "decode 8 @128"
};
// "prefill:2x256,decode:1@128,decode:8@128": roles with batch and length.
std::vector<EngineCase> parse_engine_cases(const std::string& s);

struct EngineTiming {
  EngineCase c;
  int threads = 1;                // OpenMP threads the engine ran with
  std::vector<double> step_ms;    // wall time of every timed repetition
  std::vector<double> cpu_ms;     // process CPU time of every repetition / threads
  double best_ms = 0;             // the fastest repetition (the least disturbed by other processes)
  double median_ms = 0;           // of the wall times
  double best_cpu_ms = 0;         // the least CPU time / threads: on one thread, the step's work
                                  // without the time the thread spent waiting for a core
  double distinct_experts = 0;    // routed experts touched per MoE layer per step (mean)
  model::ForwardProfile best;     // the fastest repetition's per-part seconds
  // What the prediction is compared with: on one thread the least CPU time (robust on a shared
  // machine), on more threads the best wall time (CPU time would count threads' waiting).
  double measured_ms() const { return threads == 1 ? best_cpu_ms : best_ms; }
};

// Times `reps` repetitions of each case on `m` (after one untimed warm-up of each), round robin.
// `between_rounds` runs after each round (e.g. to re-measure the ceilings at other moments).
std::vector<EngineTiming> measure_engine(model::Model& m, const std::vector<EngineCase>& cases, int reps,
                                         kernels::Numerics numerics = kernels::Numerics::kDeepSeek,
                                         const std::function<void()>& between_rounds = {});

// The simulator's single-rank step for the case (predict_single_rank_step_ms), in ms.
double predict_engine_step_ms(const Hardware& hw, const model::ModelConfig& cfg, const EngineCase& e);

// The cpu preset's fitted constants: efficiencies hbm, decode_flop, gemm, dequant, attn, hbm_dot,
// attn_prefill. The
// prediction is a sum of terms, each inversely proportional to one efficiency, so the fit is linear
// least squares in their inverses on relative errors
// (predicted / measured − 1) over the points, each with the ceilings measured with it.
struct FitPoint {
  Hardware hw;  // the cpu preset with the ceilings of the point's measurement
  model::ModelConfig cfg;
  EngineCase c;
  double measured_ms = 0;
};
struct CpuFit {
  std::vector<std::string> names;
  std::vector<double> values;
  void apply(Hardware& hw) const;  // sets the fitted constants (ceilings unchanged)
};
// `keep`: knobs held at the points' preset values (e.g. the decode ones when only the prefill
// kernels changed); the others are fitted around them.
CpuFit fit_cpu_efficiencies(const std::vector<FitPoint>& points, const std::vector<std::string>& keep = {});

nlohmann::json engine_timing_json(const EngineTiming& t, double predicted_ms);

}  // namespace epserve::sim
