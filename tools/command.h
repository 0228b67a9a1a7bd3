// The `clipcu` command: each subcommand lives in tools/cmd_<name>.cpp and registers itself with
// a static Command object. Library errors (clipcu::Error) become a message and exit code 1 here.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>
#include <string>

namespace clipcu::tools {

// setup(app) declares the subcommand's options on `app` and returns the function that runs it
// (called after parsing; its return value is the exit code).
using Setup = std::function<std::function<int()>(CLI::App& app)>;

struct Command {
  Command(const std::string& name, const std::string& description, Setup setup);
};

}  // namespace clipcu::tools
