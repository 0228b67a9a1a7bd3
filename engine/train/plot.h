// Training curves: metrics.jsonl (written by the trainer) drawn by gnuplot into one PNG with
// panels for the training loss, learning rate, logit scale and every validation metric.
#pragma once
#include <string>

namespace clipcu::train {

// log: a metrics.jsonl or the run folder holding one. Writes `out` (PNG) and the gnuplot
// script + data beside it (out + ".data/"). Throws naming the file when the log is unreadable
// or has nothing to plot, or when gnuplot fails.
void plot_metrics(const std::string& log, const std::string& out);

}  // namespace clipcu::train
