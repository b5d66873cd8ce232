// llmctl bench: engine speed. (a) llama-bench style batch-1 prefill (ppN) and decode (tgN)
// tokens/s plus the share of a decode step spent outside the model; (b) nano-vllm style
// offline throughput: many requests with random prompt and answer lengths submitted at
// once, run under continuous batching (output tokens/s, TTFT and TPOT statistics).
#include <algorithm>
#include <numeric>
#include <random>

#include <ATen/Parallel.h>

#include "common.h"
#include "llmctl/util/error.h"
#include "llmctl/engine/sequence.h"
#include "llmctl/util/progress.h"

namespace llmctl::cli {

namespace {

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::vector<int> random_tokens(std::mt19937_64& rng, int n, int vocab) {
  std::vector<int> ids(n);
  for (auto& t : ids) t = 3 + static_cast<int>(rng() % static_cast<std::uint64_t>(vocab - 3));  // no specials
  return ids;
}

SamplingParams fixed_length(int n) {
  SamplingParams p;
  p.temperature = 0;
  p.max_new_tokens = n;
  p.ignore_eos = true;
  return p;
}

struct Summary {
  double mean = 0, median = 0, p99 = 0;
};
Summary summarize(std::vector<double> v) {
  Summary s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  s.mean = std::accumulate(v.begin(), v.end(), 0.0) / v.size();
  s.median = v[v.size() / 2];
  s.p99 = v[std::min(v.size() - 1, static_cast<std::size_t>(0.99 * v.size()))];
  return s;
}

double median(std::vector<double> v) { return summarize(std::move(v)).median; }

void run_to_end(Engine& e) {
  while (e.has_unfinished()) e.step();
}

struct Latency {
  double pp_tps = 0, tg_tps = 0, overhead_share = 0, overhead_ms = 0, step_ms = 0;
};

Latency bench_latency(Engine& e, int pp, int tg, int reps, std::mt19937_64& rng) {
  const int vocab = static_cast<int>(e.model_config().vocab_size);
  Latency r;
  // Warm-up: first calls allocate and pick kernels.
  e.add_request(random_tokens(rng, std::min(pp, 32), vocab), fixed_length(4));
  run_to_end(e);
  std::vector<double> pp_t, tg_t, overhead, step;
  for (int i = 0; i < reps; ++i) {
    if (pp > 0) {
      e.add_request(random_tokens(rng, pp, vocab), fixed_length(1));
      const auto t0 = Clock::now();
      run_to_end(e);
      pp_t.push_back(pp / seconds_since(t0));
    }
    if (tg > 0) {
      e.add_request(random_tokens(rng, 1, vocab), fixed_length(tg + 1));
      e.step();  // the one-token prefill and the first token
      const auto before = e.stats();
      const auto t0 = Clock::now();
      run_to_end(e);
      const double dt = seconds_since(t0);
      const auto after = e.stats();
      tg_t.push_back(tg / dt);
      const double steps = static_cast<double>(after.steps - before.steps);
      const double outside = (after.step_s - before.step_s) - (after.model_s - before.model_s);
      overhead.push_back(outside / steps * 1e3);
      step.push_back(dt / steps * 1e3);
    }
  }
  r.pp_tps = median(pp_t);
  r.tg_tps = median(tg_t);
  r.overhead_ms = median(overhead);
  r.step_ms = median(step);
  r.overhead_share = r.step_ms > 0 ? r.overhead_ms / r.step_ms : 0;
  return r;
}

struct Throughput {
  int requests = 0;
  std::int64_t input_tokens = 0, output_tokens = 0;
  double wall_s = 0;
  double overhead_share = 0;  // of the engine's step time, spent outside the model's layers
  Summary ttft, tpot;
};

Throughput bench_throughput(Engine& e, int n, int min_in, int max_in, int min_out, int max_out,
                            std::mt19937_64& rng) {
  const int vocab = static_cast<int>(e.model_config().vocab_size);
  const int limit = e.config().max_model_len;
  Throughput r;
  r.requests = n;
  std::int64_t expected_out = 0;
  auto pick = [&](int lo, int hi) { return lo + static_cast<int>(rng() % static_cast<std::uint64_t>(hi - lo + 1)); };
  const auto before = e.stats();
  const auto t0 = Clock::now();
  for (int i = 0; i < n; ++i) {
    int in = pick(min_in, max_in), out = pick(min_out, max_out);
    in = std::min(in, limit - 1);
    out = std::min(out, limit - in);
    r.input_tokens += in;
    expected_out += out;
    e.add_request(random_tokens(rng, in, vocab), fixed_length(out));
  }
  std::vector<double> ttft, tpot;
  Progress bar("throughput", static_cast<std::uint64_t>(expected_out), "tok");
  while (e.has_unfinished()) {
    for (const auto& o : e.step()) {
      r.output_tokens += static_cast<std::int64_t>(o.new_token_ids.size());
      if (!o.finished) continue;
      ttft.push_back(o.ttft_s);
      const auto k = o.output_token_ids.size();
      if (k > 1) tpot.push_back((o.total_s - o.ttft_s) / (k - 1));
    }
    bar.set(static_cast<std::uint64_t>(r.output_tokens));
  }
  bar.finish();
  r.wall_s = seconds_since(t0);
  const auto after = e.stats();
  const double step_s = after.step_s - before.step_s;
  r.overhead_share = step_s > 0 ? (step_s - (after.model_s - before.model_s)) / step_s : 0;
  r.ttft = summarize(ttft);
  r.tpot = summarize(tpot);
  return r;
}

}  // namespace

void add_bench(CLI::App& app) {
  struct Opts {
    std::string model;
    int pp = 512, tg = 128, reps = 3;
    int requests = 256, min_in = 100, max_in = 1024, min_out = 100, max_out = 1024;
    bool skip_latency = false, skip_throughput = false, json = false;
    std::uint64_t seed = 0;
    EngineFlags engine;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("bench", "Measure the engine: batch-1 prefill/decode tokens/s and batched throughput");
  sub->add_option("--model", o->model, "Model directory")->required()->check(CLI::ExistingDirectory);
  sub->add_option("--pp", o->pp, "Prefill test: prompt tokens (llama-bench's pp512)")->capture_default_str();
  sub->add_option("--tg", o->tg, "Decode test: generated tokens (llama-bench's tg128)")->capture_default_str();
  sub->add_option("--repetitions", o->reps, "Runs of each latency test (the median is reported)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  sub->add_option("--num-requests", o->requests, "Throughput test: requests submitted at once")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  sub->add_option("--min-input", o->min_in, "Throughput test: shortest prompt")->check(CLI::PositiveNumber)->capture_default_str();
  sub->add_option("--max-input", o->max_in, "Throughput test: longest prompt")->check(CLI::PositiveNumber)->capture_default_str();
  sub->add_option("--min-output", o->min_out, "Throughput test: shortest answer")->check(CLI::PositiveNumber)->capture_default_str();
  sub->add_option("--max-output", o->max_out, "Throughput test: longest answer")->check(CLI::PositiveNumber)->capture_default_str();
  sub->add_flag("--skip-latency", o->skip_latency, "Only run the throughput test");
  sub->add_flag("--skip-throughput", o->skip_throughput, "Only run the prefill/decode test");
  sub->add_option("--seed", o->seed, "Seed of the random prompts and lengths")->capture_default_str();
  sub->add_flag("--json", o->json, "Print the results as one JSON object");
  o->engine.add_to(sub);
  sub->callback([o] {
    if (o->min_in > o->max_in || o->min_out > o->max_out)
      throw Error("--min-input/--min-output must not exceed --max-input/--max-output");
    auto cfg = o->engine.get();
    cfg.max_num_batched_tokens = std::max(cfg.max_num_batched_tokens, o->pp);  // ppN is one step
    Engine engine(o->model, cfg);
    std::mt19937_64 rng(o->seed);
    nlohmann::json j = {{"model", o->model},
                        {"dtype", cfg.dtype},
                        {"threads", at::get_num_threads()},
                        {"max_num_seqs", cfg.max_num_seqs},
                        {"max_num_batched_tokens", cfg.max_num_batched_tokens}};
    double tg_tps = 0;
    if (!o->skip_latency) {
      auto l = bench_latency(engine, o->pp, o->tg, o->reps, rng);
      tg_tps = l.tg_tps;
      j["pp"] = {{"tokens", o->pp}, {"tokens_per_s", l.pp_tps}};
      j["tg"] = {{"tokens", o->tg}, {"tokens_per_s", l.tg_tps}, {"step_ms", l.step_ms},
                 {"overhead_ms", l.overhead_ms}, {"overhead_share", l.overhead_share}};
      if (!o->json) {
        std::printf("%-10s %12s\n", "test", "tokens/s");
        std::printf("pp%-8d %12.1f\n", o->pp, l.pp_tps);
        std::printf("tg%-8d %12.1f\n", o->tg, l.tg_tps);
        std::printf("decode step %.3f ms, of which %.3f ms (%.1f%%) outside the model (scheduling, batch "
                    "tables, sampling)\n",
                    l.step_ms, l.overhead_ms, 100 * l.overhead_share);
      }
    }
    if (!o->skip_throughput) {
      auto t = bench_throughput(engine, o->requests, o->min_in, o->max_in, o->min_out, o->max_out, rng);
      const auto st = engine.stats();
      j["throughput"] = {{"requests", t.requests},
                         {"input_tokens", t.input_tokens},
                         {"output_tokens", t.output_tokens},
                         {"wall_s", t.wall_s},
                         {"output_tokens_per_s", t.output_tokens / t.wall_s},
                         {"total_tokens_per_s", (t.input_tokens + t.output_tokens) / t.wall_s},
                         {"ttft_s", {{"mean", t.ttft.mean}, {"median", t.ttft.median}, {"p99", t.ttft.p99}}},
                         {"tpot_s", {{"mean", t.tpot.mean}, {"median", t.tpot.median}, {"p99", t.tpot.p99}}},
                         {"preemptions", st.preemptions},
                         {"overhead_share", t.overhead_share}};
      const double ratio = tg_tps > 0 ? t.output_tokens / t.wall_s / tg_tps : 0.0;
      if (ratio > 0) j["throughput"]["vs_batch1_decode"] = ratio;
      if (!o->json) {
        std::printf("throughput: %d requests, %lld prompt + %lld output tokens in %.1f s\n", t.requests,
                    static_cast<long long>(t.input_tokens), static_cast<long long>(t.output_tokens), t.wall_s);
        std::printf("  output %.1f tok/s, total %.1f tok/s, %lld preemptions, %.1f%% of step time outside the model\n",
                    t.output_tokens / t.wall_s, (t.input_tokens + t.output_tokens) / t.wall_s,
                    static_cast<long long>(st.preemptions), 100 * t.overhead_share);
        std::printf("  TTFT mean %.3f s, median %.3f s, p99 %.3f s\n", t.ttft.mean, t.ttft.median, t.ttft.p99);
        std::printf("  TPOT mean %.2f ms, median %.2f ms, p99 %.2f ms\n", 1e3 * t.tpot.mean, 1e3 * t.tpot.median,
                    1e3 * t.tpot.p99);
        if (ratio > 0) std::printf("  output tokens/s = %.1fx the batch-1 decode rate (tg%d) of this run\n", ratio, o->tg);
      }
    }
    if (o->json) print_json(j);
  });
}

}  // namespace llmctl::cli
