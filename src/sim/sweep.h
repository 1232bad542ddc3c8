// The explorations: each sweep varies one thing, returns its table as JSON and its chart as panels.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "sim/day.h"
#include "sim/svg.h"

namespace epserve::sim {

struct SweepResult {
  std::string what;
  nlohmann::json table;  // {"what", "description", "rows": [...]}
  std::vector<Panel> panels;
};

std::vector<std::string> sweep_names();  // ep, overlap, cache, hit-rate, speed, price
SweepResult run_sweep(const std::string& what, const Hardware& hw, const model::ModelConfig& cfg,
                      const DayInputs& day);

// The day's chart: nodes in service per hour, and cost vs revenue per hour.
std::vector<Panel> day_panels(const DayResult& r);

}  // namespace epserve::sim
