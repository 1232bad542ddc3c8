// A naive, obviously-correct FP64 forward of DeepSeek-V3 (reference §4–§7), written from the fact
// sheet independently of src/model: plain loops, no cache, no batching, no SIMD. It reads tensors
// straight from the checkpoint and decodes E4M3 from its definition. Tests compare the engine's
// `exact` mode with it.
#pragma once
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "model/checkpoint.h"
#include "model/config.h"

namespace epserve::testing {

class NaiveForward {
 public:
  explicit NaiveForward(const std::filesystem::path& model_dir);
  // Logits (vocab) at the last position of `tokens`, recomputing the whole sequence.
  // With `forced_experts` ([moe layer][token * k + i]), each token uses those routed experts
  // instead of its own choice (weights still from FP64 scores): isolates arithmetic error from
  // discrete routing flips when comparing with quantized numerics.
  std::vector<double> last_logits(const std::vector<int>& tokens,
                                  const std::vector<std::vector<int>>* forced_experts = nullptr);
  const model::ModelConfig& config() const { return config_; }

 private:
  using Matrix = std::vector<double>;  // row-major [rows, cols]
  const Matrix& weight(const std::string& name);  // dequantized, cached
  std::vector<double> vec(const std::string& name);

  model::ModelConfig config_;
  model::Checkpoint checkpoint_;
  std::map<std::string, Matrix> cache_;
  std::map<std::string, std::pair<int, int>> shapes_;
};

}  // namespace epserve::testing
