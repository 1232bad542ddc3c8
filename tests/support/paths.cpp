#include "support/paths.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <functional>
#include <stdexcept>

namespace epserve::testing {

std::filesystem::path epserve_binary() { return EPSERVE_BINARY; }
std::filesystem::path source_dir() { return EPSERVE_SOURCE_DIR; }
std::filesystem::path build_dir() { return EPSERVE_BUILD_DIR; }

std::filesystem::path scratch_dir(const std::string& name) {
  auto dir = build_dir() / "test-scratch" / (name + "-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

CommandResult run_command(const std::string& command_line) {
  CommandResult result;
  FILE* pipe = ::popen((command_line + " 2>&1").c_str(), "r");
  if (!pipe) throw std::runtime_error("popen failed: " + command_line);
  std::array<char, 4096> buffer;
  size_t n;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0) result.output.append(buffer.data(), n);
  const int status = ::pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

std::filesystem::path generated_model(const std::string& preset, const std::string& extra) {
  const std::string key = preset + (extra.empty() ? "" : "-" + std::to_string(std::hash<std::string>{}(extra)));
  const auto root = build_dir() / "test-models";
  std::filesystem::create_directories(root);
  const auto dir = root / key;
  // Tests run in parallel (ctest -j): one generates, the others wait on the lock.
  const int lock = ::open((root / (key + ".lock")).c_str(), O_CREAT | O_RDWR, 0644);
  ::flock(lock, LOCK_EX);
  if (!std::filesystem::exists(dir / "config.json")) {
    const auto result = run_command(epserve_binary().string() + " gen-model --preset " + preset +
                                    " --seed 7 --out " + dir.string() + " " + extra);
    if (result.exit_code != 0) {
      ::flock(lock, LOCK_UN);
      ::close(lock);
      throw std::runtime_error("gen-model failed: " + result.output);
    }
  }
  ::flock(lock, LOCK_UN);
  ::close(lock);
  return dir;
}

}  // namespace epserve::testing
