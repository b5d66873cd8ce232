#include "llmctl/serve/metrics.h"

#include <algorithm>
#include <cstdio>

namespace llmctl::serve {

namespace {

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

std::string metric(const std::string& name, const char* type, const std::string& help, const std::string& value) {
  return "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n" + name + " " + value + "\n";
}

}  // namespace

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double v) {
  const auto i = std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin();
  ++counts_[static_cast<std::size_t>(i)];
  sum_ += v;
  ++count_;
}

std::string Histogram::render(const std::string& name, const std::string& help) const {
  std::string s = "# HELP " + name + " " + help + "\n# TYPE " + name + " histogram\n";
  std::int64_t cum = 0;
  for (std::size_t i = 0; i < bounds_.size(); ++i) {
    cum += counts_[i];
    s += name + "_bucket{le=\"" + num(bounds_[i]) + "\"} " + std::to_string(cum) + "\n";
  }
  s += name + "_bucket{le=\"+Inf\"} " + std::to_string(count_) + "\n";
  s += name + "_sum " + num(sum_) + "\n" + name + "_count " + std::to_string(count_) + "\n";
  return s;
}

Metrics::Metrics()
    : ttft({0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80}),
      tpot({0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5}),
      e2e({0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960}) {}

std::string MetricsSnapshot::render() const {
  std::string s;
  s += metric("llmctl_requests_running", "gauge", "Sequences in the running batch.", std::to_string(running));
  s += metric("llmctl_requests_waiting", "gauge", "Sequences queued (or preempted) waiting to run.", std::to_string(waiting));
  s += metric("llmctl_kv_blocks_used", "gauge", "KV cache blocks held by sequences.", std::to_string(blocks_used));
  s += metric("llmctl_kv_blocks_total", "gauge", "KV cache blocks in the pool.", std::to_string(blocks_total));
  s += metric("llmctl_kv_cache_usage_ratio", "gauge", "Share of KV cache blocks in use (0-1).",
              num(blocks_total ? static_cast<double>(blocks_used) / blocks_total : 0.0));
  s += metric("llmctl_prefix_cache_queries_total", "counter", "Prompt tokens looked up in the prefix cache.",
              std::to_string(prefix_query_tokens));
  s += metric("llmctl_prefix_cache_hits_total", "counter", "Prompt tokens served from the prefix cache.",
              std::to_string(prefix_hit_tokens));
  s += metric("llmctl_prefix_cache_hit_rate", "gauge", "Prefix cache hits / queries, in tokens, since start.",
              num(prefix_query_tokens ? static_cast<double>(prefix_hit_tokens) / prefix_query_tokens : 0.0));
  s += metric("llmctl_preemptions_total", "counter", "Sequences preempted (recomputed later) for lack of KV blocks.",
              std::to_string(preemptions));
  s += metric("llmctl_prompt_tokens_total", "counter", "Prompt tokens of finished requests.", std::to_string(m.prompt_tokens));
  s += metric("llmctl_generation_tokens_total", "counter", "Tokens generated.", std::to_string(m.generation_tokens));
  s += "# HELP llmctl_requests_finished_total Finished sequences by finish reason.\n"
       "# TYPE llmctl_requests_finished_total counter\n";
  for (const char* reason : {"stop", "length", "cancelled", "timeout", "error"}) {
    auto it = m.finished.find(reason);
    s += std::string("llmctl_requests_finished_total{finished_reason=\"") + reason + "\"} " +
         std::to_string(it == m.finished.end() ? 0 : it->second) + "\n";
  }
  s += m.ttft.render("llmctl_time_to_first_token_seconds", "Arrival to first token.");
  s += m.tpot.render("llmctl_time_per_output_token_seconds", "Mean time per output token after the first.");
  s += m.e2e.render("llmctl_e2e_request_latency_seconds", "Arrival to finish.");
  return s;
}

}  // namespace llmctl::serve
