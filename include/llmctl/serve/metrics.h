#pragma once
// Server metrics in Prometheus' text exposition format: gauges for what runs now, counters
// for what happened, and latency histograms (time to first token, time per output token,
// whole request).
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace llmctl::serve {

// Cumulative-bucket histogram, as Prometheus defines one.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double v);
  // "# TYPE name histogram" and its _bucket{le=...}, _sum and _count lines.
  std::string render(const std::string& name, const std::string& help) const;
  std::int64_t count() const { return count_; }

 private:
  std::vector<double> bounds_;
  std::vector<std::int64_t> counts_;  // per bucket, not cumulative; last: +Inf
  double sum_ = 0;
  std::int64_t count_ = 0;
};

struct Metrics {
  Metrics();
  std::int64_t prompt_tokens = 0, generation_tokens = 0;
  std::map<std::string, std::int64_t> finished;  // by finish reason
  Histogram ttft, tpot, e2e;
};

// A consistent copy for one /metrics response.
struct MetricsSnapshot {
  Metrics m;
  int running = 0, waiting = 0, blocks_used = 0, blocks_total = 0;
  std::int64_t prefix_query_tokens = 0, prefix_hit_tokens = 0, preemptions = 0;
  std::string render() const;
};

}  // namespace llmctl::serve
