#pragma once
// Progress reporting for long jobs: a redrawn bar with rate and ETA on a TTY, a plain log
// line every few seconds otherwise (CI logs, pipes).
#include <chrono>
#include <cstdint>
#include <string>

namespace llmctl {

class Progress {
 public:
  // total == 0 means unknown (no percentage or ETA). `unit` names what is counted.
  Progress(std::string label, std::uint64_t total, std::string unit, bool enabled = true);
  ~Progress();
  void set(std::uint64_t done, const std::string& extra = "");
  void add(std::uint64_t n, const std::string& extra = "") { set(done_ + n, extra); }
  void finish(const std::string& extra = "");

 private:
  void draw(bool final);
  std::string label_, unit_, extra_;
  std::uint64_t total_, done_ = 0;
  bool enabled_, tty_, finished_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

// Human-friendly durations and counts for logs ("1m23s", "12.3k").
std::string format_duration(double seconds);
std::string format_count(double n);

}  // namespace llmctl
