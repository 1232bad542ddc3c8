#include "dist/expert_placement.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "base/json_file.h"
#include "base/error.h"

namespace epserve::dist {

ExpertPlacement ExpertPlacement::even(const model::ModelConfig& c, int ranks, int redundant) {
  EPS_REQUIRE(ranks >= 1, "ranks must be >= 1");
  EPS_REQUIRE(redundant >= 0, "redundant experts must be >= 0");
  const int slots = c.n_routed_experts + redundant;
  EPS_REQUIRE(slots % ranks == 0, std::to_string(c.n_routed_experts) + " experts + " + std::to_string(redundant) +
                                      " redundant slots do not split evenly over " + std::to_string(ranks) + " ranks");
  ExpertPlacement p;
  p.ranks_ = ranks;
  p.slots_per_rank_ = slots / ranks;
  p.first_moe_layer_ = c.first_k_dense_replace;
  std::vector<int> layout(slots);
  for (int s = 0; s < slots; ++s) layout[s] = s % c.n_routed_experts;
  p.slot_expert_.assign(c.num_hidden_layers - c.first_k_dense_replace, layout);
  p.build_replica_index(c);
  return p;
}

ExpertPlacement ExpertPlacement::load(const std::filesystem::path& file, const model::ModelConfig& c, int ranks) {
  const std::string where = file.string();
  const nlohmann::json j = read_json_file(file, "placement file", /*require_object=*/false);
  EPS_REQUIRE(j.is_object() && j.contains("layers") && j["layers"].is_object(), where + ": missing object \"layers\"");
  if (j.contains("ranks"))
    EPS_REQUIRE(j["ranks"] == ranks, where + ": written for " + j["ranks"].dump() + " ranks, this unit has " +
                                         std::to_string(ranks));
  ExpertPlacement p;
  p.ranks_ = ranks;
  p.first_moe_layer_ = c.first_k_dense_replace;
  for (int l = c.first_k_dense_replace; l < c.num_hidden_layers; ++l) {
    const std::string key = std::to_string(l), lw = where + ": layer " + key;
    EPS_REQUIRE(j["layers"].contains(key), lw + " is missing");
    const auto& arr = j["layers"][key];
    EPS_REQUIRE(arr.is_array() && !arr.empty(), lw + " must be a non-empty array of expert ids");
    std::vector<int> layout;
    std::vector<char> seen(c.n_routed_experts, 0);
    for (const auto& v : arr) {
      EPS_REQUIRE(v.is_number_integer() && v.get<int>() >= 0 && v.get<int>() < c.n_routed_experts,
                  lw + ": " + v.dump() + " is not an expert id in [0, " + std::to_string(c.n_routed_experts) + ")");
      layout.push_back(v.get<int>());
      seen[layout.back()] = 1;
    }
    EPS_REQUIRE(int(layout.size()) % ranks == 0,
                lw + ": " + std::to_string(layout.size()) + " slots do not split evenly over " + std::to_string(ranks) + " ranks");
    const auto missing = std::find(seen.begin(), seen.end(), 0);
    EPS_REQUIRE(missing == seen.end(), lw + ": expert " + std::to_string(missing - seen.begin()) + " has no slot");
    if (p.slots_per_rank_ == 0) p.slots_per_rank_ = int(layout.size()) / ranks;
    EPS_REQUIRE(int(layout.size()) / ranks == p.slots_per_rank_, lw + ": every layer must have the same number of slots");
    p.slot_expert_.push_back(std::move(layout));
  }
  p.build_replica_index(c);
  return p;
}

void ExpertPlacement::build_replica_index(const model::ModelConfig& c) {
  replicas_.assign(slot_expert_.size(), std::vector<std::vector<int>>(c.n_routed_experts));
  for (size_t l = 0; l < slot_expert_.size(); ++l)
    for (size_t s = 0; s < slot_expert_[l].size(); ++s) replicas_[l][slot_expert_[l][s]].push_back(int(s));
}

const std::vector<int>& ExpertPlacement::slots(int layer) const { return slot_expert_.at(layer - first_moe_layer_); }

bool ExpertPlacement::rank_owns(int rank, int layer, int expert) const {
  for (int s : replicas_.at(layer - first_moe_layer_).at(expert))
    if (rank_of_slot(s) == rank) return true;
  return false;
}

int ExpertPlacement::choose_slot(int layer, int expert, int source_rank, int token) const {
  const auto& r = replicas_.at(layer - first_moe_layer_).at(expert);
  return r[size_t(source_rank + token) % r.size()];
}

}  // namespace epserve::dist
