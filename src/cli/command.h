// How a subcommand joins the `epserve` binary: one file per subcommand defines a static
// CommandRegistration. Its setup function adds the options to the CLI11 sub-app and returns the
// action that runs once the command line has been parsed. The action returns the exit status.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <vector>

namespace epserve::cli {

using Action = std::function<int()>;
using Setup = std::function<Action(CLI::App&)>;

struct CommandSpec {
  std::string name;
  std::string summary;
  Setup setup;
};

std::vector<CommandSpec>& command_registry();

struct CommandRegistration {
  CommandRegistration(std::string name, std::string summary, Setup setup) {
    command_registry().push_back({std::move(name), std::move(summary), std::move(setup)});
  }
};

}  // namespace epserve::cli
