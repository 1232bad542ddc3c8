// A checkpoint directory as DeepSeek publishes it: config.json plus either one model.safetensors or
// shards named by model.safetensors.index.json. Tensors are looked up by their HuggingFace names and
// checked for dtype and shape on access, so an error names the file and the tensor.
#pragma once
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "model/safetensors.h"

namespace epserve::model {

class Checkpoint {
 public:
  static Checkpoint open(const std::filesystem::path& dir);

  bool has(const std::string& name) const { return location_.count(name) > 0; }
  // The tensor's bytes; throws naming the file and tensor when it is missing, or its dtype or shape
  // differ from what config.json implies.
  std::span<const uint8_t> tensor(const std::string& name, Dtype dtype, const std::vector<int64_t>& shape) const;
  std::vector<std::string> names() const;
  const std::filesystem::path& dir() const { return dir_; }
  // Asks the kernel to read the file pages of these bytes ahead of use.
  static void prefetch(std::span<const uint8_t> bytes);
  // Drops the process's pages of a mapped tensor that the kernels no longer read (their copy in
  // another layout is kept instead); a later read maps them in again from the page cache.
  static void release(std::span<const uint8_t> bytes);

 private:
  std::filesystem::path dir_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> location_;  // tensor name → index into files_
};

}  // namespace epserve::model
