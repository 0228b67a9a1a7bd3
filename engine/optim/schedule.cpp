#include "engine/optim/schedule.h"

#include <algorithm>
#include <cmath>

#include "engine/error.h"

namespace clipcu::optim {

LrSchedule parse_lr_schedule(const std::string& s) {
  if (s == "cosine") return LrSchedule::Cosine;
  if (s == "const") return LrSchedule::Const;
  if (s == "const-cooldown") return LrSchedule::ConstCooldown;
  CLIPCU_FAIL("unknown learning-rate schedule '" << s << "' (expected cosine, const or const-cooldown)");
}

double learning_rate(const ScheduleConfig& c, int64_t step) {
  if (step < c.warmup) return c.base_lr * double(step + 1) / double(c.warmup);
  switch (c.kind) {
    case LrSchedule::Const: return c.base_lr;
    case LrSchedule::Cosine: {
      double e = double(step - c.warmup);
      double es = double(std::max<int64_t>(c.total_steps - c.warmup, 1));
      return 0.5 * (1.0 + std::cos(M_PI * std::min(e / es, 1.0))) * c.base_lr;
    }
    case LrSchedule::ConstCooldown: {
      int64_t start = c.total_steps - c.cooldown_steps;
      if (step < start) return c.base_lr;
      double e = double(step - start);
      double es = double(std::max<int64_t>(c.cooldown_steps, 1));
      double decay = std::pow(1.0 - std::min(e / es, 1.0), c.cooldown_power);
      return decay * (c.base_lr - c.cooldown_end_lr) + c.cooldown_end_lr;
    }
  }
  return c.base_lr;
}

}  // namespace clipcu::optim
