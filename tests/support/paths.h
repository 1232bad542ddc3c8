// Shared helpers for tests: where things are, running the epserve binary, scratch directories.
#pragma once
#include <filesystem>
#include <string>

namespace epserve::testing {

std::filesystem::path epserve_binary();
std::filesystem::path source_dir();
std::filesystem::path build_dir();

// A fresh, empty directory under the build tree, unique to this process and `name`.
std::filesystem::path scratch_dir(const std::string& name);

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};
// Runs a shell command line and captures its output.
CommandResult run_command(const std::string& command_line);

// A checkpoint made by `epserve gen-model --preset <preset> --seed 7 [extra]`, generated once per
// build tree (under build/test-models) and reused by later tests.
std::filesystem::path generated_model(const std::string& preset, const std::string& extra = "");

}  // namespace epserve::testing
