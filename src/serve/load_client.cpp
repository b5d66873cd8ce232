#include "llmctl/serve/load_client.h"

#include <atomic>
#include <chrono>
#include <random>
#include <thread>

#include <nlohmann/json.hpp>

#include "llmctl/serve/openai_client.h"
#include "llmctl/util/clock.h"
#include "llmctl/util/error.h"

namespace llmctl::serve {

namespace {

using json = nlohmann::json;


// One streaming request, timed as its chunks arrive.
LoadResult::Request run_one(OpenAIClient& cli, const std::string& model, const LoadRequest& w) {
  LoadResult::Request r;
  r.output_tokens = w.max_tokens;
  const json body = {{"model", model},          {"prompt", w.prompt},  {"max_tokens", w.max_tokens},
                     {"temperature", 0},        {"ignore_eos", true},  {"stream", true},
                     {"stream_options", {{"include_usage", true}}}};
  bool first = true;
  Clock::time_point last;
  const auto t0 = Clock::now();
  const auto end = cli.stream("/v1/completions", body, [&](const json& ev) {
    if (ev.contains("error")) {
      r.error = ev["error"].dump();
      return false;
    }
    if (ev.contains("usage") && ev["usage"].is_object())
      r.output_tokens = ev["usage"].value("completion_tokens", r.output_tokens);
    const auto& choices = ev.value("choices", json::array());
    if (choices.empty() || choices[0].value("text", "").empty()) return true;
    const auto now = Clock::now();
    if (first) {
      r.ttft_s = std::chrono::duration<double>(now - t0).count();
      first = false;
    } else {
      r.itl_s.push_back(std::chrono::duration<double>(now - last).count());
    }
    last = now;
    return true;
  });
  r.e2e_s = seconds_since(t0);
  if (r.error.empty()) r.error = end.error;
  r.ok = r.error.empty();
  return r;
}

}  // namespace

LoadResult run_load(const LoadConfig& cfg_in, const std::vector<LoadRequest>& work) {
  LoadConfig cfg = cfg_in;
  cfg.endpoint = normalize_endpoint(cfg.endpoint);
  if (cfg.max_concurrency < 1) throw Error("--max-concurrency must be at least 1");
  LoadResult out;
  {
    OpenAIClient probe(cfg.endpoint, cfg.api_key, cfg.timeout_s);
    out.model = cfg.model.empty() ? probe.first_model() : cfg.model;
  }
  // Arrival times: a Poisson process at request_rate, or everything at t = 0.
  std::vector<double> arrival(work.size(), 0.0);
  if (cfg.request_rate > 0) {
    std::mt19937_64 rng(cfg.seed);
    std::exponential_distribution<double> gap(cfg.request_rate);
    double t = 0;
    for (auto& a : arrival) a = (t += gap(rng));
  }
  out.requests.resize(work.size());
  std::atomic<std::size_t> next{0};
  const auto t0 = Clock::now();
  auto worker = [&] {
    OpenAIClient cli(cfg.endpoint, cfg.api_key, cfg.timeout_s);
    for (std::size_t i; (i = next.fetch_add(1)) < work.size();) {
      const auto due = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(arrival[i]));
      std::this_thread::sleep_until(due);
      out.requests[i] = run_one(cli, out.model, work[i]);
    }
  };
  std::vector<std::thread> threads;
  const int n = std::min<int>(cfg.max_concurrency, static_cast<int>(work.size()));
  for (int i = 0; i < n; ++i) threads.emplace_back(worker);
  for (auto& t : threads) t.join();
  out.wall_s = seconds_since(t0);
  return out;
}

}  // namespace llmctl::serve
