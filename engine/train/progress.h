// Progress reporting for long work: a live, rewritten line on a terminal; plain lines otherwise.
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace clipcu::train {

class Progress {
 public:
  // total: number of units (steps, images); label: "train", "embed", ...
  // plain_every: in plain (non-terminal) mode, print every this many units (and the last).
  Progress(std::string label, int64_t total, FILE* out = stderr, int64_t plain_every = 0);
  // Reports that `done` units are finished; `fields` is free text ("loss 1.23 lr 4e-4").
  void update(int64_t done, const std::string& fields = "");
  // Ends the live line (newline) with a final report.
  void finish(const std::string& fields = "");
  double elapsed_seconds() const;
  bool is_terminal() const { return tty_; }

 private:
  std::string label_;
  int64_t total_, plain_every_, done_ = 0, last_plain_ = -1;
  FILE* out_;
  bool tty_;
  std::chrono::steady_clock::time_point start_, last_draw_;
  std::string line(const std::string& fields) const;
};

// "1h02m", "3m05s", "12s"
std::string format_duration(double seconds);

}  // namespace clipcu::train
