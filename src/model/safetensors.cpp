#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "base/error.h"

namespace epserve::model {

using nlohmann::json;

const char* dtype_name(Dtype d) {
  switch (d) {
    case Dtype::F8_E4M3: return "F8_E4M3";
    case Dtype::BF16: return "BF16";
    case Dtype::F32: return "F32";
  }
  return "?";
}

size_t dtype_size(Dtype d) { return d == Dtype::F8_E4M3 ? 1 : d == Dtype::BF16 ? 2 : 4; }

int64_t TensorInfo::elements() const {
  int64_t n = 1;
  for (auto s : shape) n *= s;
  return n;
}

MappedFile::MappedFile(const std::filesystem::path& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  EPS_REQUIRE(fd >= 0, path.string() + ": cannot open (" + std::strerror(errno) + ")");
  struct stat st {};
  ::fstat(fd, &st);
  size_ = size_t(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
    ::close(fd);
    EPS_REQUIRE(p != MAP_FAILED, path.string() + ": mmap failed (" + std::strerror(errno) + ")");
    data_ = static_cast<const uint8_t*>(p);
  } else {
    ::close(fd);
  }
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

SafetensorsFile::SafetensorsFile(const std::filesystem::path& path)
    : file_(std::make_shared<MappedFile>(path)) {
  const auto bytes = file_->bytes();
  const std::string where = path.string();
  EPS_REQUIRE(bytes.size() >= 8, where + ": truncated (shorter than the 8-byte header length)");
  uint64_t header_len;
  std::memcpy(&header_len, bytes.data(), 8);
  EPS_REQUIRE(header_len <= bytes.size() - 8 && header_len < (100u << 20),
              where + ": bad header (length " + std::to_string(header_len) + " exceeds the file)");
  data_start_ = 8 + header_len;
  json header;
  try {
    header = json::parse(bytes.begin() + 8, bytes.begin() + 8 + header_len);
  } catch (const std::exception& e) {
    throw Error(where + ": bad header (not JSON: " + e.what() + ")");
  }
  EPS_REQUIRE(header.is_object(), where + ": bad header (not a JSON object)");
  const uint64_t data_size = bytes.size() - data_start_;
  for (auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;
    const std::string tw = where + ": tensor " + name;
    EPS_REQUIRE(entry.is_object() && entry.contains("dtype") && entry.contains("shape") &&
                    entry.contains("data_offsets"),
                tw + ": header entry lacks dtype, shape or data_offsets");
    TensorInfo t;
    const auto dtype = entry["dtype"].is_string() ? entry["dtype"].get<std::string>() : "";
    if (dtype == "F8_E4M3") t.dtype = Dtype::F8_E4M3;
    else if (dtype == "BF16") t.dtype = Dtype::BF16;
    else if (dtype == "F32") t.dtype = Dtype::F32;
    else throw Error(tw + ": unsupported dtype " + entry["dtype"].dump());
    try {
      t.shape = entry["shape"].get<std::vector<int64_t>>();
      const auto offsets = entry["data_offsets"].get<std::vector<uint64_t>>();
      EPS_REQUIRE(offsets.size() == 2, "");
      t.begin = offsets[0];
      t.end = offsets[1];
    } catch (const std::exception&) {
      throw Error(tw + ": malformed shape or data_offsets");
    }
    for (auto s : t.shape) EPS_REQUIRE(s >= 0, tw + ": negative dimension");
    EPS_REQUIRE(t.begin <= t.end && uint64_t(t.elements()) * dtype_size(t.dtype) == t.end - t.begin,
                tw + ": data_offsets do not match its shape and dtype");
    EPS_REQUIRE(t.end <= data_size, tw + ": data lies beyond the end of the file (truncated file?)");
    tensors_.emplace(name, std::move(t));
  }
}

std::span<const uint8_t> SafetensorsFile::data(const TensorInfo& t) const {
  return file_->bytes().subspan(data_start_ + t.begin, t.end - t.begin);
}

void SafetensorsWriter::add(const std::string& name, Dtype dtype, std::vector<int64_t> shape,
                            std::vector<uint8_t> bytes) {
  total_ += bytes.size();
  entries_.push_back({name, dtype, std::move(shape), std::move(bytes)});
}

std::vector<std::string> SafetensorsWriter::names() const {
  std::vector<std::string> out;
  for (const auto& e : entries_) out.push_back(e.name);
  return out;
}

void SafetensorsWriter::write(const std::filesystem::path& path) const {
  json header = json::object();
  header["__metadata__"] = {{"format", "pt"}};
  uint64_t offset = 0;
  for (const auto& e : entries_) {
    header[e.name] = {{"dtype", dtype_name(e.dtype)}, {"shape", e.shape}, {"data_offsets", {offset, offset + e.bytes.size()}}};
    offset += e.bytes.size();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keep the data 8-byte aligned
  const uint64_t len = text.size();
  const auto tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary);
    EPS_REQUIRE(out, tmp + ": cannot create");
    out.write(reinterpret_cast<const char*>(&len), 8);
    out.write(text.data(), std::streamsize(text.size()));
    for (const auto& e : entries_) out.write(reinterpret_cast<const char*>(e.bytes.data()), std::streamsize(e.bytes.size()));
    EPS_REQUIRE(out.good(), tmp + ": write failed (disk full?)");
  }
  std::filesystem::rename(tmp, path);
}

}  // namespace epserve::model
