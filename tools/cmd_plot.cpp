// clipcu plot LOG --out FILE.png: draws a run's metrics (engine/train/plot.h).
#include <cstdio>

#include "engine/train/plot.h"
#include "tools/command.h"

namespace clipcu::tools {
namespace {

Command plot_cmd("plot", "Draw loss, learning rate and validation curves of a run (gnuplot)", [](CLI::App& app) {
  auto log = std::make_shared<std::string>();
  auto out = std::make_shared<std::string>();
  app.add_option("log", *log, "metrics.jsonl of a run, or the run's folder")->required();
  app.add_option("--out", *out, "PNG file to write")->required();
  return [=]() {
    train::plot_metrics(*log, *out);
    std::printf("wrote %s\n", out->c_str());
    return 0;
  };
});

}  // namespace
}  // namespace clipcu::tools
