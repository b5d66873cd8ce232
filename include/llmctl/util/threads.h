#pragma once
// The thread count behind every --threads flag: 0 (or less) means all cores.
#include <algorithm>
#include <thread>

namespace llmctl {

inline int resolve_threads(int requested) {
  return requested > 0 ? requested : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

}  // namespace llmctl
