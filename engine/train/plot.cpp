#include "engine/train/plot.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "engine/error.h"

namespace clipcu::train {

namespace {
struct Series {
  std::vector<std::pair<double, double>> points;  // (step, value)
};

}  // namespace

void plot_metrics(const std::string& log, const std::string& out) {
  std::string path = log;
  if (std::filesystem::is_directory(path)) path += "/metrics.jsonl";
  std::ifstream in(path);
  CLIPCU_CHECK(in, "cannot open metrics log '" << path << "'");
  std::map<std::string, Series> train, val;
  std::string line;
  int lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.empty()) continue;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    CLIPCU_CHECK(!j.is_discarded() && j.is_object(), "metrics log '" << path << "' line " << lineno << " is not JSON");
    if (!j.contains("step") || !j["step"].is_number()) continue;
    double step = j["step"].get<double>();
    bool is_val = j.value("kind", "") == "val";
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (!it.value().is_number() || it.key() == "step" || it.key() == "epoch") continue;
      (is_val ? val : train)[it.key()].points.emplace_back(step, it.value().get<double>());
    }
  }
  CLIPCU_CHECK(!train.empty() || !val.empty(), "metrics log '" << path << "' has no numeric records");
  // data files for gnuplot beside the output
  std::string base = out + ".data";
  std::filesystem::create_directories(base);
  auto write = [&](const std::string& name, const Series& s) {
    std::string f = base + "/" + name + ".dat";
    std::ofstream o(f);
    for (auto& [x, y] : s.points) o << x << ' ' << y << '\n';
    return f;
  };
  std::vector<std::pair<std::string, std::string>> panels;  // (title, plot command)
  auto add_panel = [&](const std::string& title, const std::vector<std::pair<std::string, const Series*>>& ss,
                       bool logy) {
    std::ostringstream cmd;
    cmd << (logy ? "set logscale y\n" : "unset logscale y\n") << "set title '" << title << "'\nplot ";
    bool first = true;
    for (auto& [n, s] : ss) {
      if (!first) cmd << ", ";
      first = false;
      cmd << "'" << write(n, *s) << "' using 1:2 with linespoints pointtype 7 pointsize 0.6 title '" << n << "'";
    }
    panels.emplace_back(title, cmd.str() + "\n");
  };
  if (train.count("loss")) add_panel("training loss", {{"loss", &train["loss"]}}, false);
  if (train.count("lr")) add_panel("learning rate", {{"lr", &train["lr"]}}, false);
  if (train.count("logit_scale")) add_panel("logit scale", {{"logit_scale", &train["logit_scale"]}}, false);
  std::vector<std::pair<std::string, const Series*>> vs;
  // validation panel: the scores in [0, 1] (zero-shot accuracy, retrieval recalls), not ranks or counts
  for (auto& [k, s] : val) {
    bool score = k.rfind("zeroshot_", 0) == 0 || k.find("_r1") != std::string::npos ||
                 k.find("_r5") != std::string::npos || k.find("_r10") != std::string::npos;
    if (score) vs.emplace_back("val_" + k, &s);
  }
  if (!vs.empty()) add_panel("validation", vs, false);
  CLIPCU_CHECK(!panels.empty(), "metrics log '" << path << "' has no loss, lr, logit_scale or validation values");
  int rows = int(panels.size() + 1) / 2;
  std::string script = base + "/plot.gp";
  {
    std::ofstream g(script);
    g << "set terminal pngcairo noenhanced size 1200," << 380 * rows << " font ',10'\n"
      << "set output '" << out << "'\nset grid\nset key top right\nset xlabel 'step'\n"
      << "set multiplot layout " << rows << ",2\n";
    for (auto& p : panels) g << p.second;
    g << "unset multiplot\n";
  }
  std::string cmd = "gnuplot '" + script + "' 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  CLIPCU_CHECK(p, "cannot run gnuplot (install gnuplot-nox)");
  std::string msg;
  char buf[512];
  while (fgets(buf, sizeof buf, p)) msg += buf;
  int rc = pclose(p);
  CLIPCU_CHECK(rc == 0, "gnuplot failed (is gnuplot-nox installed?): " << msg);
}


}  // namespace clipcu::train
