#pragma once
// Wall-clock timing for logs, benchmarks and timeouts: a monotonic clock and seconds elapsed.
#include <chrono>

namespace llmctl {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

}  // namespace llmctl
