// clipcu: the command-line front end. Subcommands register themselves (tools/command.h).
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <vector>

#include "engine/error.h"
#include "tools/command.h"

namespace clipcu::tools {

namespace {
struct Entry {
  std::string name, description;
  Setup setup;
};
std::vector<Entry>& registry() {
  static std::vector<Entry> r;
  return r;
}
}  // namespace

Command::Command(const std::string& name, const std::string& description, Setup setup) {
  registry().push_back({name, description, std::move(setup)});
}

}  // namespace clipcu::tools

int main(int argc, char** argv) {
  using namespace clipcu::tools;
  // libgomp reads OMP_WAIT_POLICY when it loads, before main. Its default lets idle workers spin,
  // and on a busy machine (CI running two tests, a data loader's threads) spinning workers take
  // the cores that OpenBLAS and the next parallel loop need: steps got several times slower. So
  // unless the user chose a policy, run again with "passive" (idle workers sleep).
  if (!std::getenv("OMP_WAIT_POLICY")) {
    setenv("OMP_WAIT_POLICY", "passive", 1);
    execv("/proc/self/exe", argv);  // returns only on failure: then go on with the default
  }
  // progress goes to stderr, results to stdout: keep them in order when both are redirected
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  CLI::App app{"clipcu: train and run CLIP models with hand-written CUDA kernels and a C++ CPU twin"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "clipcu 0.1.0");
  std::vector<std::pair<CLI::App*, std::function<int()>>> runs;
  for (auto& e : registry()) {
    CLI::App* sub = app.add_subcommand(e.name, e.description);
    runs.emplace_back(sub, e.setup(*sub));
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    for (auto& [sub, run] : runs)
      if (sub->parsed()) return run();
  } catch (const clipcu::Error& e) {
    std::fprintf(stderr, "clipcu: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "clipcu: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
