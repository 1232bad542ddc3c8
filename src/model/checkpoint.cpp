#include "model/checkpoint.h"

#include <sys/mman.h>
#include <unistd.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "base/json_file.h"
#include "base/error.h"

namespace epserve::model {

using nlohmann::json;

namespace {
std::string shape_string(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << "]";
  return s.str();
}
}  // namespace

Checkpoint Checkpoint::open(const std::filesystem::path& dir) {
  Checkpoint c;
  c.dir_ = dir;
  const auto index_path = dir / "model.safetensors.index.json";
  if (std::filesystem::exists(index_path)) {
    const json index = read_json_file(index_path, "unreadable index", /*require_object=*/false);
    EPS_REQUIRE(index.is_object() && index.contains("weight_map") && index["weight_map"].is_object(),
                index_path.string() + ": missing field \"weight_map\"");
    std::map<std::string, size_t> file_index;
    for (auto& [name, file] : index["weight_map"].items()) {
      EPS_REQUIRE(file.is_string(), index_path.string() + ": weight_map entry for " + name + " is not a file name");
      const auto fname = file.get<std::string>();
      EPS_REQUIRE(fname.find('/') == std::string::npos, index_path.string() + ": shard name " + fname + " must be a plain file name");
      auto it = file_index.find(fname);
      if (it == file_index.end()) {
        EPS_REQUIRE(std::filesystem::exists(dir / fname),
                    (dir / fname).string() + ": shard named by the index is missing");
        c.files_.push_back(std::make_shared<SafetensorsFile>(dir / fname));
        it = file_index.emplace(fname, c.files_.size() - 1).first;
      }
      EPS_REQUIRE(c.files_[it->second]->tensors().count(name),
                  (dir / fname).string() + ": tensor " + name + " is named by the index but absent from the shard");
      c.location_[name] = it->second;
    }
  } else {
    const auto single = dir / "model.safetensors";
    EPS_REQUIRE(std::filesystem::exists(single),
                dir.string() + ": no model.safetensors.index.json or model.safetensors (not a checkpoint directory?)");
    c.files_.push_back(std::make_shared<SafetensorsFile>(single));
    for (const auto& [name, info] : c.files_[0]->tensors()) c.location_[name] = 0;
  }
  return c;
}

std::span<const uint8_t> Checkpoint::tensor(const std::string& name, Dtype dtype,
                                            const std::vector<int64_t>& shape) const {
  auto it = location_.find(name);
  EPS_REQUIRE(it != location_.end(), dir_.string() + ": tensor " + name + " is missing from the checkpoint");
  const auto& file = *files_[it->second];
  const auto& info = file.tensors().at(name);
  EPS_REQUIRE(info.dtype == dtype, file.path().string() + ": tensor " + name + " has dtype " + dtype_name(info.dtype) +
                                       ", expected " + dtype_name(dtype));
  EPS_REQUIRE(info.shape == shape, file.path().string() + ": tensor " + name + " has shape " +
                                       shape_string(info.shape) + ", config.json implies " + shape_string(shape));
  return file.data(info);
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  for (const auto& [name, _] : location_) out.push_back(name);
  return out;
}

void Checkpoint::prefetch(std::span<const uint8_t> bytes) {
  if (bytes.empty()) return;
  const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
  const uintptr_t start = uintptr_t(bytes.data()) & ~(page - 1);
  ::madvise(reinterpret_cast<void*>(start), uintptr_t(bytes.data()) + bytes.size() - start, MADV_WILLNEED);
}

void Checkpoint::release(std::span<const uint8_t> bytes) {
  const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
  const uintptr_t start = (uintptr_t(bytes.data()) + page - 1) & ~(page - 1);  // whole pages inside only
  const uintptr_t end = (uintptr_t(bytes.data()) + bytes.size()) & ~(page - 1);
  if (end > start) ::madvise(reinterpret_cast<void*>(start), end - start, MADV_DONTNEED);
}

}  // namespace epserve::model
