// Where the routed experts live: per MoE layer, the logical expert held by each physical slot.
// Slot s sits on rank s / slots_per_rank. With redundant slots an expert has several replicas;
// a token uses one, chosen by (source rank, token) so that the replicas share the load.
#pragma once
#include <filesystem>
#include <vector>

#include "model/config.h"

namespace epserve::dist {

class ExpertPlacement {
 public:
  // The default: logical expert e in slot e (consecutive experts on one rank, as in DeepSeek's
  // groups), then `redundant` extra slots replicating experts 0, 1, ... Slots must split evenly.
  static ExpertPlacement even(const model::ModelConfig& c, int ranks, int redundant = 0);
  // A JSON file {"ranks": R, "layers": {"<layer>": [logical expert of each slot, ...], ...}}; every
  // MoE layer must be listed and every expert must have a slot. Errors name the file and layer.
  static ExpertPlacement load(const std::filesystem::path& file, const model::ModelConfig& c, int ranks);

  int ranks() const { return ranks_; }
  int slots_per_rank() const { return slots_per_rank_; }
  int rank_of_slot(int slot) const { return slot / slots_per_rank_; }
  // The logical expert of each physical slot, for MoE layer `layer` (a model layer index).
  const std::vector<int>& slots(int layer) const;
  bool rank_owns(int rank, int layer, int expert) const;
  // The slot that serves `expert` for a token of `source_rank` (index `token` in its batch).
  int choose_slot(int layer, int expert, int source_rank, int token) const;

 private:
  void build_replica_index(const model::ModelConfig& c);
  int ranks_ = 1, slots_per_rank_ = 0, first_moe_layer_ = 0;
  std::vector<std::vector<int>> slot_expert_;            // [moe layer][slot]
  std::vector<std::vector<std::vector<int>>> replicas_;  // [moe layer][expert] → slots
};

}  // namespace epserve::dist
