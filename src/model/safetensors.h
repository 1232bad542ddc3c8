// The safetensors file format: an 8-byte little-endian header length, a JSON header mapping each
// tensor name to {dtype, shape, data_offsets}, then the raw row-major data. Files are mmap'd, so a
// rank touches only the pages of the tensors it uses (an EP rank reads only its experts).
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace epserve::model {

enum class Dtype { F8_E4M3, BF16, F32 };
const char* dtype_name(Dtype d);
size_t dtype_size(Dtype d);

struct TensorInfo {
  Dtype dtype = Dtype::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte range within the data section
  int64_t elements() const;
};

// A read-only memory map of one file; unmapped when the last owner goes away.
class MappedFile {
 public:
  explicit MappedFile(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  std::span<const uint8_t> bytes() const { return {data_, size_}; }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

class SafetensorsFile {
 public:
  // Validates the header: JSON, known dtypes, byte ranges consistent with shapes and inside the file.
  explicit SafetensorsFile(const std::filesystem::path& path);
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  std::span<const uint8_t> data(const TensorInfo& t) const;
  const std::filesystem::path& path() const { return file_->path(); }

 private:
  std::shared_ptr<MappedFile> file_;
  size_t data_start_ = 0;
  std::map<std::string, TensorInfo> tensors_;
};

// Writes one safetensors file; tensors are added with their bytes and written in insertion order.
class SafetensorsWriter {
 public:
  void add(const std::string& name, Dtype dtype, std::vector<int64_t> shape, std::vector<uint8_t> bytes);
  size_t bytes() const { return total_; }
  size_t count() const { return entries_.size(); }
  void write(const std::filesystem::path& path) const;
  std::vector<std::string> names() const;

 private:
  struct Entry {
    std::string name;
    Dtype dtype;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
  };
  std::vector<Entry> entries_;
  size_t total_ = 0;
};

}  // namespace epserve::model
