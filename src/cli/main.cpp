// The one `epserve` binary. Subcommands live in their own files (src/cli/<name>.cpp).
#include <algorithm>
#include <cstdio>
#include <exception>

#include "base/error.h"
#include "cli/command.h"

namespace epserve::cli {
std::vector<CommandSpec>& command_registry() {
  static std::vector<CommandSpec> registry;
  return registry;
}
}  // namespace epserve::cli

int main(int argc, char** argv) {
  using namespace epserve::cli;
  CLI::App app{"epserve: DeepSeek-V3-architecture MoE serving on CPUs (expert parallel over MPI)"};
  app.require_subcommand(1);
  auto& registry = command_registry();
  std::sort(registry.begin(), registry.end(),
            [](const CommandSpec& a, const CommandSpec& b) { return a.name < b.name; });
  std::vector<std::pair<CLI::App*, Action>> commands;
  for (const auto& spec : registry) {
    CLI::App* sub = app.add_subcommand(spec.name, spec.summary);
    commands.emplace_back(sub, spec.setup(*sub));
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    for (auto& [sub, action] : commands)
      if (sub->parsed()) return action();
  } catch (const epserve::Error& e) {
    std::fprintf(stderr, "epserve: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "epserve: internal error: %s\n", e.what());
    return 2;
  }
  return 0;
}
