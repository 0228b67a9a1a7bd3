#include "engine/train/progress.h"

#include <unistd.h>

#include <cmath>

namespace clipcu::train {

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  char buf[32];
  long t = long(s + 0.5);
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t / 60) % 60);
  else if (t >= 60)
    std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  else
    std::snprintf(buf, sizeof buf, "%lds", t);
  return buf;
}

Progress::Progress(std::string label, int64_t total, FILE* out, int64_t plain_every)
    : label_(std::move(label)),
      total_(total),
      plain_every_(plain_every > 0 ? plain_every : std::max<int64_t>(1, total / 20)),
      out_(out),
      tty_(isatty(fileno(out)) != 0),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_ - std::chrono::seconds(1)) {}

double Progress::elapsed_seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

std::string Progress::line(const std::string& fields) const {
  double el = elapsed_seconds();
  double rate = el > 0 ? double(done_) / el : 0;
  double eta = rate > 0 ? double(total_ - done_) / rate : NAN;
  char head[160];
  std::snprintf(head, sizeof head, "%s %lld/%lld (%3.0f%%) %.2f/s elapsed %s eta %s", label_.c_str(),
                static_cast<long long>(done_), static_cast<long long>(total_),
                total_ ? 100.0 * double(done_) / double(total_) : 100.0, rate, format_duration(el).c_str(),
                format_duration(eta).c_str());
  return fields.empty() ? std::string(head) : std::string(head) + " | " + fields;
}

void Progress::update(int64_t done, const std::string& fields) {
  done_ = done;
  if (tty_) {
    auto now = std::chrono::steady_clock::now();
    if (now - last_draw_ < std::chrono::milliseconds(100) && done_ < total_) return;
    last_draw_ = now;
    std::fprintf(out_, "\r\033[K%s", line(fields).c_str());
    std::fflush(out_);
  } else if (done_ / plain_every_ != last_plain_ / plain_every_ || done_ == total_) {
    last_plain_ = done_;
    std::fprintf(out_, "%s\n", line(fields).c_str());
    std::fflush(out_);
  }
}

void Progress::finish(const std::string& fields) {
  if (tty_) {
    std::fprintf(out_, "\r\033[K%s\n", line(fields).c_str());
  } else if (last_plain_ != done_) {
    std::fprintf(out_, "%s\n", line(fields).c_str());
  }
  std::fflush(out_);
}

}  // namespace clipcu::train
