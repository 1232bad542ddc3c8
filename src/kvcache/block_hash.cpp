#include "kvcache/block_hash.h"

#include <algorithm>
#include <cstring>
#include <fstream>

namespace epserve::kvcache {
namespace {

inline uint64_t fmix(uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdULL;
  k ^= k >> 33;
  k *= 0xc4ceb9fe1a85ec53ULL;
  k ^= k >> 33;
  return k;
}

inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

}  // namespace

uint64_t hash_bytes(const void* data, size_t n, uint64_t seed) {
  const auto* p = static_cast<const uint8_t*>(data);
  constexpr uint64_t k1 = 0x87c37b91114253d5ULL, k2 = 0x4cf5ad432745937fULL;
  uint64_t h = seed ^ (n * k2);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    w *= k1;
    w = rotl(w, 31);
    w *= k2;
    h ^= w;
    h = rotl(h, 27) * 5 + 0x52dce729;
  }
  uint64_t tail = 0;
  for (size_t j = 0; i + j < n; ++j) tail |= uint64_t(p[i + j]) << (8 * j);
  h ^= fmix(tail ^ k1);
  return fmix(h);
}

void extend_chain(std::vector<BlockHash>& hashes, uint64_t model_id, std::span<const int> tokens, int block_tokens) {
  const size_t full = tokens.size() / size_t(block_tokens);
  for (size_t b = hashes.size(); b < full; ++b) {
    const uint64_t previous = b == 0 ? model_id : hashes[b - 1];
    hashes.push_back(hash_bytes(tokens.data() + b * block_tokens, size_t(block_tokens) * sizeof(int), previous));
  }
}

uint64_t model_identity(const std::filesystem::path& model_dir, const std::string& kv_dtype) {
  namespace fs = std::filesystem;
  auto read_all = [](const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  uint64_t h = hash_bytes(kv_dtype.data(), kv_dtype.size(), 0x6570736572766531ULL);
  const std::string config = read_all(model_dir / "config.json");
  h = hash_bytes(config.data(), config.size(), h);
  std::vector<fs::path> files;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(model_dir, ec))
    if (e.path().extension() == ".safetensors") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  for (const auto& f : files) {
    const std::string name = f.filename().string();
    const uint64_t size = fs::file_size(f, ec);
    h = hash_bytes(name.data(), name.size(), h ^ size);
    // 4 KiB at 8 places spread over the file: different weights (another seed) differ there.
    std::ifstream in(f, std::ios::binary);
    std::string buf(4096, '\0');
    for (int k = 0; k < 8 && size > 0; ++k) {
      in.clear();
      in.seekg(std::streamoff(size * k / 8));
      in.read(buf.data(), std::streamsize(buf.size()));
      h = hash_bytes(buf.data(), size_t(in.gcount()), h);
    }
  }
  return h;
}

std::string hash_hex(BlockHash h) {
  char s[17];
  std::snprintf(s, sizeof s, "%016llx", static_cast<unsigned long long>(h));
  return s;
}

}  // namespace epserve::kvcache
