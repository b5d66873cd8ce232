#pragma once
// Learning-rate schedule: linear warmup, then cosine decay to a floor.
#include <cstdint>

namespace llmctl {

struct LrSchedule {
  double peak = 5e-4;
  double min_ratio = 0.1;       // the floor is peak * min_ratio
  std::int64_t warmup = 0;      // steps of linear warmup from peak / warmup
  std::int64_t total = 1;       // steps in the whole run

  // lr for optimizer step `step` (0-based).
  double at(std::int64_t step) const;
};

}  // namespace llmctl
