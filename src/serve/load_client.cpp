#include "llmctl/serve/load_client.h"

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <random>
#include <thread>

#include <nlohmann/json.hpp>

#include "llmctl/util/error.h"

namespace llmctl::serve {

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string base_url(std::string url) {
  while (!url.empty() && url.back() == '/') url.pop_back();
  if (url.size() >= 3 && url.compare(url.size() - 3, 3, "/v1") == 0) url.resize(url.size() - 3);
  if (url.rfind("http://", 0) != 0) throw Error("--endpoint must be an http:// URL, got '" + url + "'");
  return url;
}

httplib::Headers auth_headers(const LoadConfig& cfg) {
  httplib::Headers h;
  if (!cfg.api_key.empty()) h.emplace("Authorization", "Bearer " + cfg.api_key);
  return h;
}

std::string first_model(httplib::Client& cli, const LoadConfig& cfg) {
  auto res = cli.Get("/v1/models", auth_headers(cfg));
  if (!res) throw Error("cannot reach " + cfg.endpoint + ": " + httplib::to_string(res.error()));
  if (res->status != 200) throw Error("GET /v1/models answered " + std::to_string(res->status) + ": " + res->body);
  try {
    return json::parse(res->body).at("data").at(0).at("id").get<std::string>();
  } catch (const std::exception&) {
    throw Error("GET /v1/models: no model in " + res->body.substr(0, 200));
  }
}

// One streaming request, timed as its chunks arrive.
LoadResult::Request run_one(httplib::Client& cli, const LoadConfig& cfg, const std::string& model, const LoadRequest& w) {
  LoadResult::Request r;
  r.output_tokens = w.max_tokens;
  const json body = {{"model", model},          {"prompt", w.prompt},  {"max_tokens", w.max_tokens},
                     {"temperature", 0},        {"ignore_eos", true},  {"stream", true},
                     {"stream_options", {{"include_usage", true}}}};
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.headers = auth_headers(cfg);
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  std::string buf;
  bool done = false, first = true;
  Clock::time_point last;
  const auto t0 = Clock::now();
  req.content_receiver = [&](const char* data, std::size_t n, std::uint64_t, std::uint64_t) {
    buf.append(data, n);
    std::size_t nl;
    while ((nl = buf.find('\n')) != std::string::npos) {
      std::string line = buf.substr(0, nl);
      buf.erase(0, nl + 1);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.rfind("data: ", 0) != 0) continue;
      const std::string payload = line.substr(6);
      if (payload == "[DONE]") {
        done = true;
        continue;
      }
      json ev = json::parse(payload, nullptr, false);
      if (ev.is_discarded()) continue;
      if (ev.contains("error")) {
        r.error = ev["error"].dump();
        return false;
      }
      if (ev.contains("usage") && ev["usage"].is_object())
        r.output_tokens = ev["usage"].value("completion_tokens", r.output_tokens);
      const auto& choices = ev.value("choices", json::array());
      if (choices.empty() || choices[0].value("text", "").empty()) continue;
      const auto now = Clock::now();
      if (first) {
        r.ttft_s = std::chrono::duration<double>(now - t0).count();
        first = false;
      } else {
        r.itl_s.push_back(std::chrono::duration<double>(now - last).count());
      }
      last = now;
    }
    return true;
  };
  httplib::Response res;
  httplib::Error err = httplib::Error::Success;
  const bool sent = cli.send(req, res, err);
  r.e2e_s = since(t0);
  if (!sent && r.error.empty()) r.error = httplib::to_string(err);
  else if (res.status != 200 && r.error.empty()) r.error = "HTTP " + std::to_string(res.status) + " " + res.body.substr(0, 200);
  else if (!done && r.error.empty()) r.error = "the stream ended without [DONE]";
  r.ok = r.error.empty();
  return r;
}

}  // namespace

LoadResult run_load(const LoadConfig& cfg_in, const std::vector<LoadRequest>& work) {
  LoadConfig cfg = cfg_in;
  cfg.endpoint = base_url(cfg.endpoint);
  if (cfg.max_concurrency < 1) throw Error("--max-concurrency must be at least 1");
  LoadResult out;
  {
    httplib::Client probe(cfg.endpoint);
    out.model = cfg.model.empty() ? first_model(probe, cfg) : cfg.model;
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
    httplib::Client cli(cfg.endpoint);
    const auto secs = static_cast<time_t>(cfg.timeout_s);
    cli.set_read_timeout(secs, 0);
    cli.set_write_timeout(secs, 0);
    cli.set_keep_alive(false);  // a fresh connection per request: no stale keep-alive sockets
    cli.set_tcp_nodelay(true);
    for (std::size_t i; (i = next.fetch_add(1)) < work.size();) {
      const auto due = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(arrival[i]));
      std::this_thread::sleep_until(due);
      out.requests[i] = run_one(cli, cfg, out.model, work[i]);
    }
  };
  std::vector<std::thread> threads;
  const int n = std::min<int>(cfg.max_concurrency, static_cast<int>(work.size()));
  for (int i = 0; i < n; ++i) threads.emplace_back(worker);
  for (auto& t : threads) t.join();
  out.wall_s = since(t0);
  return out;
}

}  // namespace llmctl::serve
