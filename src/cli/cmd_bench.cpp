// llmctl bench: engine speed. (a) llama-bench style batch-1 prefill (ppN) and decode (tgN)
// tokens/s plus the share of a decode step spent outside the model; (b) nano-vllm style
// offline throughput: many requests with random prompt and answer lengths submitted at
// once, run under continuous batching (output tokens/s, TTFT and TPOT statistics).
#include <algorithm>
#include <numeric>
#include <random>

#include <ATen/Parallel.h>

#include "common.h"
#include "llmctl/util/clock.h"
#include "llmctl/util/error.h"
#include "llmctl/engine/sequence.h"
#include "llmctl/io/model_dir.h"
#include "llmctl/serve/load_client.h"
#include "llmctl/util/progress.h"

namespace llmctl::cli {

namespace {


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

struct WorkloadShape {
  int requests = 256, min_in = 100, max_in = 1024, min_out = 100, max_out = 1024;
};

// The throughput test's requests: random prompts and answer lengths, the same for a seed
// whether they run offline or against a server.
std::vector<serve::LoadRequest> make_workload(const WorkloadShape& w, int vocab, int limit, std::mt19937_64& rng) {
  auto pick = [&](int lo, int hi) { return lo + static_cast<int>(rng() % static_cast<std::uint64_t>(hi - lo + 1)); };
  std::vector<serve::LoadRequest> work;
  for (int i = 0; i < w.requests; ++i) {
    int in = pick(w.min_in, w.max_in), out = pick(w.min_out, w.max_out);
    in = std::min(in, limit - 1);
    out = std::min(out, limit - in);
    work.push_back({random_tokens(rng, in, vocab), out});
  }
  return work;
}

Throughput bench_throughput(Engine& e, const std::vector<serve::LoadRequest>& work) {
  Throughput r;
  r.requests = static_cast<int>(work.size());
  std::int64_t expected_out = 0;
  const auto before = e.stats();
  const auto t0 = Clock::now();
  for (const auto& w : work) {
    r.input_tokens += static_cast<std::int64_t>(w.prompt.size());
    expected_out += w.max_tokens;
    e.add_request(w.prompt, fixed_length(w.max_tokens));
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

// Prints (or puts in j) what `vllm bench serve` reports for a served run.
void report_served(const serve::LoadResult& res, const std::vector<serve::LoadRequest>& work, bool as_json,
                   nlohmann::json& j) {
  std::int64_t in = 0, out = 0;
  int ok = 0;
  std::vector<double> ttft, tpot, itl, e2e;
  std::string first_error;
  for (std::size_t i = 0; i < res.requests.size(); ++i) {
    const auto& r = res.requests[i];
    if (!r.ok) {
      if (first_error.empty()) first_error = r.error;
      continue;
    }
    ++ok;
    in += static_cast<std::int64_t>(work[i].prompt.size());
    out += r.output_tokens;
    ttft.push_back(r.ttft_s);
    e2e.push_back(r.e2e_s);
    if (r.output_tokens > 1) tpot.push_back((r.e2e_s - r.ttft_s) / (r.output_tokens - 1));
    itl.insert(itl.end(), r.itl_s.begin(), r.itl_s.end());
  }
  const auto s_ttft = summarize(ttft), s_tpot = summarize(tpot), s_itl = summarize(itl), s_e2e = summarize(e2e);
  auto stats = [](const Summary& s) { return nlohmann::json{{"mean", s.mean}, {"median", s.median}, {"p99", s.p99}}; };
  j["served"] = {{"model", res.model},
                 {"requests", res.requests.size()},
                 {"completed", ok},
                 {"failed", static_cast<int>(res.requests.size()) - ok},
                 {"input_tokens", in},
                 {"output_tokens", out},
                 {"wall_s", res.wall_s},
                 {"request_throughput", ok / res.wall_s},
                 {"output_tokens_per_s", out / res.wall_s},
                 {"total_tokens_per_s", (in + out) / res.wall_s},
                 {"ttft_s", stats(s_ttft)},
                 {"tpot_s", stats(s_tpot)},
                 {"itl_s", stats(s_itl)},
                 {"e2e_s", stats(s_e2e)}};
  if (!first_error.empty()) j["served"]["first_error"] = first_error;
  if (as_json) return;
  std::printf("served: %d/%zu requests completed, %lld prompt + %lld output tokens in %.1f s (model '%s')\n", ok,
              res.requests.size(), static_cast<long long>(in), static_cast<long long>(out), res.wall_s, res.model.c_str());
  if (!first_error.empty()) std::printf("  first error: %s\n", first_error.c_str());
  std::printf("  output %.1f tok/s, total %.1f tok/s, %.2f requests/s\n", out / res.wall_s, (in + out) / res.wall_s,
              ok / res.wall_s);
  std::printf("  TTFT mean %.3f s, median %.3f s, p99 %.3f s\n", s_ttft.mean, s_ttft.median, s_ttft.p99);
  std::printf("  TPOT mean %.2f ms, median %.2f ms, p99 %.2f ms\n", 1e3 * s_tpot.mean, 1e3 * s_tpot.median, 1e3 * s_tpot.p99);
  std::printf("  ITL  mean %.2f ms, median %.2f ms, p99 %.2f ms\n", 1e3 * s_itl.mean, 1e3 * s_itl.median, 1e3 * s_itl.p99);
}

}  // namespace

void add_bench(CLI::App& app) {
  struct Opts {
    std::string model;
    int pp = 512, tg = 128, reps = 3;
    WorkloadShape shape;
    serve::LoadConfig load;
    bool skip_latency = false, skip_throughput = false, json = false;
    std::uint64_t seed = 0;
    EngineFlags engine;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand(
      "bench", "Measure the engine (batch-1 prefill/decode, batched throughput) or a server (--endpoint)");
  sub->footer(
      "Offline: llmctl bench --model DIR [--max-num-seqs C]\n"
      "Served:  llmctl bench --endpoint http://127.0.0.1:8000 --max-concurrency C [--model DIR]\n"
      "         (any OpenAI-compatible server; --model only sizes the random prompts' token ids)");
  sub->add_option("--model", o->model, "Model directory or .gguf file")->check(CLI::ExistingPath);
  auto* group = sub->add_option_group("Served (--endpoint)");
  group->add_option("--endpoint", o->load.endpoint,
                                     "Benchmark this OpenAI-compatible server instead (streaming /v1/completions)");
  group->add_option("--api-key", o->load.api_key, "Bearer token for --endpoint")->envname("LLMCTL_API_KEY");
  group->add_option("--model-name", o->load.model, "\"model\" to request (default: the server's first model)");
  group->add_option("--max-concurrency", o->load.max_concurrency, "Requests in flight at once")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  group->add_option("--request-rate", o->load.request_rate, "Requests per second, Poisson arrivals (0: all at once)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  sub->add_option("--pp", o->pp, "Prefill test: prompt tokens (llama-bench's pp512)")->capture_default_str();
  sub->add_option("--tg", o->tg, "Decode test: generated tokens (llama-bench's tg128)")->capture_default_str();
  sub->add_option("--repetitions", o->reps, "Runs of each latency test (the median is reported)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  sub->add_option("--num-requests", o->shape.requests, "Throughput test: requests submitted at once")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  sub->add_option("--min-input", o->shape.min_in, "Throughput test: shortest prompt")->check(CLI::PositiveNumber)->capture_default_str();
  sub->add_option("--max-input", o->shape.max_in, "Throughput test: longest prompt")->check(CLI::PositiveNumber)->capture_default_str();
  sub->add_option("--min-output", o->shape.min_out, "Throughput test: shortest answer")->check(CLI::PositiveNumber)->capture_default_str();
  sub->add_option("--max-output", o->shape.max_out, "Throughput test: longest answer")->check(CLI::PositiveNumber)->capture_default_str();
  sub->add_flag("--skip-latency", o->skip_latency, "Only run the throughput test");
  sub->add_flag("--skip-throughput", o->skip_throughput, "Only run the prefill/decode test");
  sub->add_option("--seed", o->seed, "Seed of the random prompts and lengths")->capture_default_str();
  sub->add_flag("--json", o->json, "Print the results as one JSON object");
  o->engine.add_to(sub);
  sub->callback([o] {
    if (o->shape.min_in > o->shape.max_in || o->shape.min_out > o->shape.max_out)
      throw Error("--min-input/--min-output must not exceed --max-input/--max-output");
    std::mt19937_64 rng(o->seed);
    if (!o->load.endpoint.empty()) {
      // Served: the same workload as offline for this seed (ids sized by --model when given).
      int vocab = 259, limit = 2048;
      if (!o->model.empty()) {
        const auto mc = load_model_config(o->model);
        vocab = static_cast<int>(mc.vocab_size);
        limit = static_cast<int>(std::min<std::int64_t>(mc.max_position_embeddings, 8192));
      }
      if (o->engine.cfg.max_model_len > 0) limit = o->engine.cfg.max_model_len;
      const auto work = make_workload(o->shape, vocab, limit, rng);
      o->load.seed = static_cast<unsigned>(o->seed);
      const auto res = serve::run_load(o->load, work);
      nlohmann::json j = {{"endpoint", o->load.endpoint},
                          {"max_concurrency", o->load.max_concurrency},
                          {"request_rate", o->load.request_rate}};
      report_served(res, work, o->json, j);
      if (o->json) print_json(j);
      return;
    }
    if (o->model.empty()) throw Error("give --model DIR (offline) or --endpoint URL (a server)");
    auto cfg = o->engine.get();
    cfg.max_num_batched_tokens = std::max(cfg.max_num_batched_tokens, o->pp);  // ppN is one step
    Engine engine(o->model, cfg);
    engine.touch_kv_cache();  // untimed: first-touch page faults are start-up, not serving cost
    nlohmann::json j = {{"model", o->model},
                        {"dtype", cfg.dtype},
                        {"kv_dtype", cfg.kv_dtype},
                        {"kv_blocks", engine.num_blocks()},
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
      std::mt19937_64 work_rng(o->seed);  // its own generator: the served run gets the same requests
      const auto work = make_workload(o->shape, static_cast<int>(engine.model_config().vocab_size),
                                      engine.config().max_model_len, work_rng);
      auto t = bench_throughput(engine, work);
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
        std::printf("KV cache: %d blocks of %d tokens, kv dtype %s\n", engine.num_blocks(), cfg.block_size,
                    cfg.kv_dtype == "auto" ? cfg.dtype.c_str() : cfg.kv_dtype.c_str());
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
