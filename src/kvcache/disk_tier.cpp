#include "kvcache/disk_tier.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>

namespace epserve::kvcache {
namespace fs = std::filesystem;
namespace {

constexpr char kMagic[8] = {'E', 'P', 'S', 'K', 'V', '0', '0', '1'};

struct Header {
  char magic[8];
  uint64_t model_id;
  uint64_t hash;
  uint32_t block_tokens;
  uint32_t reserved;
  uint64_t payload_bytes;
  uint64_t checksum;  // of the tokens and the payload, seeded with the fields above
};
static_assert(sizeof(Header) == 48);

uint64_t checksum_of(const Header& h, std::span<const int> tokens, std::span<const uint8_t> payload) {
  uint64_t c = hash_bytes(&h, offsetof(Header, checksum), 0x636b73756d);
  c = hash_bytes(tokens.data(), tokens.size_bytes(), c);
  return hash_bytes(payload.data(), payload.size(), c);
}

}  // namespace

DiskTier::DiskTier(DiskTierOptions options) : o_(std::move(options)) {
  std::error_code ec;
  fs::create_directories(o_.dir, ec);
  if (ec || !fs::is_directory(o_.dir)) {
    enabled_ = false;
    if (o_.warn) o_.warn("kv_disk_disabled", o_.dir.string() + ": cannot create the directory: " + ec.message());
    return;
  }
  // A probe write: an unwritable directory turns the tier off now rather than on the first block.
  const fs::path probe = o_.dir / ".probe";
  {
    std::ofstream out(probe, std::ios::binary);
    out << "probe";
    if (!out) {
      if (o_.warn) o_.warn("kv_disk_disabled", o_.dir.string() + ": not writable");
      return;
    }
  }
  fs::remove(probe, ec);
  enabled_ = true;
  scan();
  writer_ = std::thread([this] { writer_loop(); });
}

DiskTier::~DiskTier() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (writer_.joinable()) writer_.join();
}

size_t DiskTier::file_bytes() const { return sizeof(Header) + size_t(o_.block_tokens) * sizeof(int) + o_.payload_bytes; }

fs::path DiskTier::file_of(BlockHash h) const { return o_.dir / (hash_hex(h) + ".kv"); }

// Files already there (from an earlier run) enter the LRU list oldest first; temporary files of an
// interrupted write are removed.
void DiskTier::scan() {
  std::vector<std::pair<fs::file_time_type, BlockHash>> found;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(o_.dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.size() > 4 && name.ends_with(".tmp")) {
      fs::remove(e.path(), ec);
      continue;
    }
    if (name.size() != 19 || !name.ends_with(".kv")) continue;
    char* end = nullptr;
    const uint64_t h = std::strtoull(name.substr(0, 16).c_str(), &end, 16);
    if (end != name.c_str() + 16 && *end != '\0') continue;
    found.emplace_back(e.last_write_time(ec), h);
  }
  std::sort(found.begin(), found.end());
  std::lock_guard lk(mu_);
  for (const auto& [t, h] : found) touch_locked(h, fs::file_size(file_of(h), ec));
  evict_locked();
}

void DiskTier::touch_locked(BlockHash h, uint64_t bytes) {
  auto it = files_.find(h);
  if (it != files_.end()) {
    lru_.splice(lru_.begin(), lru_, it->second.lru);
    return;
  }
  lru_.push_front(h);
  files_[h] = {bytes, lru_.begin()};
  stats_.bytes += bytes;
  ++stats_.files;
}

void DiskTier::evict_locked() {
  std::error_code ec;
  while (stats_.bytes > o_.capacity_bytes && !lru_.empty()) {
    const BlockHash h = lru_.back();
    lru_.pop_back();
    auto it = files_.find(h);
    stats_.bytes -= it->second.bytes;
    --stats_.files;
    files_.erase(it);
    fs::remove(file_of(h), ec);
    ++stats_.evictions;
  }
}

bool DiskTier::enabled() const {
  std::lock_guard lk(mu_);
  return enabled_;
}

void DiskTier::disable(const std::string& why) {
  {
    std::lock_guard lk(mu_);
    if (!enabled_) return;
    enabled_ = false;
    queue_.clear();
  }
  if (o_.warn) o_.warn("kv_disk_disabled", why + " (caching continues in RAM only)");
}

void DiskTier::store(BlockHash h, std::span<const int> tokens, std::vector<uint8_t> payload) {
  {
    std::lock_guard lk(mu_);
    if (!enabled_ || files_.count(h)) return;
    for (const auto& p : queue_)
      if (p.hash == h) return;
    if (queue_.size() >= o_.max_queued_writes) {
      ++stats_.dropped_writes;
      return;
    }
    queue_.push_back({h, std::vector<int>(tokens.begin(), tokens.end()), std::move(payload)});
  }
  cv_.notify_one();
}

bool DiskTier::contains(BlockHash h) const {
  std::lock_guard lk(mu_);
  return enabled_ && files_.count(h) > 0;
}

void DiskTier::writer_loop() {
  for (;;) {
    Pending p;
    {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) {
        idle_cv_.notify_all();
        if (stop_) return;
        continue;
      }
      p = std::move(queue_.front());
      queue_.pop_front();
      writing_ = true;
    }
    const bool ok = write_file(p);
    {
      std::lock_guard lk(mu_);
      writing_ = false;
      if (ok) {
        ++stats_.writes;
        touch_locked(p.hash, file_bytes());
        evict_locked();
      }
    }
    idle_cv_.notify_all();
  }
}

// Written to a temporary name, synced, then renamed: a reader never sees half a file under the
// real name (a crash leaves a .tmp that the next scan removes).
bool DiskTier::write_file(const Pending& p) {
  Header h{};
  std::memcpy(h.magic, kMagic, 8);
  h.model_id = o_.model_id;
  h.hash = p.hash;
  h.block_tokens = uint32_t(o_.block_tokens);
  h.payload_bytes = p.payload.size();
  h.checksum = checksum_of(h, p.tokens, p.payload);
  const fs::path final_path = file_of(p.hash);
  const fs::path tmp = o_.dir / (hash_hex(p.hash) + ".tmp");
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  auto fail = [&](const char* what) {
    const std::string msg = tmp.string() + ": " + what + ": " + std::strerror(errno);
    if (fd >= 0) ::close(fd);
    std::error_code ec;
    fs::remove(tmp, ec);
    {
      std::lock_guard lk(mu_);
      ++stats_.write_errors;
    }
    disable(msg);
    return false;
  };
  if (fd < 0) return fail("open");
  auto put = [&](const void* data, size_t n) {
    const auto* b = static_cast<const uint8_t*>(data);
    while (n > 0) {
      const ssize_t w = ::write(fd, b, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return false;
      b += w;
      n -= size_t(w);
    }
    return true;
  };
  if (!put(&h, sizeof h) || !put(p.tokens.data(), p.tokens.size() * sizeof(int)) ||
      !put(p.payload.data(), p.payload.size()))
    return fail("write");
  if (::fdatasync(fd) != 0) return fail("fdatasync");
  if (::close(fd) != 0) {
    const std::string msg = tmp.string() + ": close: " + std::strerror(errno);
    disable(msg);
    return false;
  }
  std::error_code ec;
  fs::rename(tmp, final_path, ec);
  if (ec) {
    fs::remove(tmp, ec);
    disable(final_path.string() + ": rename failed");
    return false;
  }
  return true;
}

std::optional<std::vector<uint8_t>> DiskTier::load(BlockHash hash, std::span<const int> tokens) {
  {
    std::lock_guard lk(mu_);
    if (!enabled_ || !files_.count(hash)) {
      ++stats_.misses;
      return std::nullopt;
    }
  }
  const fs::path path = file_of(hash);
  auto bad = [&](const std::string& why) -> std::optional<std::vector<uint8_t>> {
    std::error_code ec;
    fs::remove(path, ec);
    {
      std::lock_guard lk(mu_);
      auto it = files_.find(hash);
      if (it != files_.end()) {
        stats_.bytes -= it->second.bytes;
        --stats_.files;
        lru_.erase(it->second.lru);
        files_.erase(it);
      }
      ++stats_.corrupt;
      ++stats_.misses;
    }
    if (o_.warn) o_.warn("kv_disk_bad_file", path.string() + ": " + why + "; removed, counted as a miss");
    return std::nullopt;
  };
  std::ifstream in(path, std::ios::binary);
  if (!in) return bad("cannot open");
  Header h{};
  in.read(reinterpret_cast<char*>(&h), sizeof h);
  if (in.gcount() != std::streamsize(sizeof h)) return bad("truncated header");
  if (std::memcmp(h.magic, kMagic, 8) != 0) return bad("not a KV block file");
  if (h.model_id != o_.model_id) return bad("written for another model or numerics");
  if (h.hash != hash || h.block_tokens != uint32_t(o_.block_tokens) || h.payload_bytes != o_.payload_bytes)
    return bad("header does not match the block");
  std::vector<int> file_tokens(size_t(o_.block_tokens));
  in.read(reinterpret_cast<char*>(file_tokens.data()), std::streamsize(file_tokens.size() * sizeof(int)));
  std::vector<uint8_t> payload(o_.payload_bytes);
  in.read(reinterpret_cast<char*>(payload.data()), std::streamsize(payload.size()));
  if (!in || in.peek() != std::char_traits<char>::eof()) return bad("truncated or too long");
  if (checksum_of(h, file_tokens, payload) != h.checksum) return bad("checksum mismatch");
  if (!std::equal(tokens.begin(), tokens.end(), file_tokens.begin(), file_tokens.end()))
    return bad("tokens differ (hash collision)");
  std::lock_guard lk(mu_);
  ++stats_.hits;
  touch_locked(hash, file_bytes());
  return payload;
}

void DiskTier::flush() {
  std::unique_lock lk(mu_);
  idle_cv_.wait(lk, [&] { return !enabled_ || (queue_.empty() && !writing_) || !writer_.joinable(); });
}

DiskTierStats DiskTier::stats() const {
  std::lock_guard lk(mu_);
  DiskTierStats s = stats_;
  s.enabled = enabled_;
  return s;
}

}  // namespace epserve::kvcache
