// Learning-rate schedules, as open_clip computes them per step (0-based step, lr for that step).
#pragma once
#include <cstdint>
#include <string>

namespace clipcu::optim {

enum class LrSchedule { Cosine, Const, ConstCooldown };

// "cosine", "const", "const-cooldown"; throws Error otherwise.
LrSchedule parse_lr_schedule(const std::string& s);

struct ScheduleConfig {
  LrSchedule kind = LrSchedule::Cosine;
  double base_lr = 5e-4;
  int64_t warmup = 0;          // linear warm-up steps: lr = base * (step + 1) / warmup
  int64_t total_steps = 1;     // the run's length
  int64_t cooldown_steps = 0;  // const-cooldown: the last steps decay to end_lr
  double cooldown_power = 1.0;
  double cooldown_end_lr = 0.0;
};

double learning_rate(const ScheduleConfig& c, int64_t step);

}  // namespace clipcu::optim
