#include "llmctl/serve/server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <optional>
#include <thread>

#include "llmctl/serve/api.h"
#include "llmctl/serve/async_engine.h"
#include "llmctl/tokenizer/chat_format.h"
#include "llmctl/tokenizer/tokenizer.h"
#include "llmctl/util/error.h"
#include "llmctl/util/log.h"

namespace llmctl::serve {

const char* chat_page();  // src/serve/web/chat.html, embedded at build time

namespace {

using json = nlohmann::json;
using std::chrono::milliseconds;

// How long an HTTP thread waits for news before checking its client again (a streaming
// client gets an SSE comment after this long without tokens, which also tells whether it is
// still there).
constexpr milliseconds kPoll{1000};

void send_json(httplib::Response& res, int status, const json& j) {
  res.status = status;
  res.set_content(dump(j), "application/json");
}

void send_error(httplib::Response& res, const ApiError& e) {
  send_json(res, e.status, e.body());
  if (e.status == 429 || e.status == 503) res.set_header("Retry-After", "1");
}

ApiError overload_error(const Overloaded& e) {
  return e.draining ? ApiError(503, e.what(), "server_error", "", "shutting_down")
                    : ApiError(429, e.what(), "rate_limit_error", "", "queue_full");
}

// The error a sequence that did not end normally turns into.
ApiError finish_error(const SeqEvent& ev, double timeout_s) {
  if (ev.finish_reason == "timeout")
    return ApiError(504, "the request did not finish within --request-timeout (" + std::to_string(timeout_s) + " s)",
                    "timeout_error", "", "timeout");
  if (ev.finish_reason == "cancelled")
    return ApiError(503, "the server is shutting down; the request was cancelled", "server_error", "", "shutting_down");
  return ApiError(500, "generation failed: " + ev.error, "server_error", "", "internal_error");
}

bool normal_finish(const SeqEvent& ev) { return ev.finish_reason == "stop" || ev.finish_reason == "length"; }

// Comparing keys in time that does not depend on where they first differ.
bool constant_time_equal(const std::string& a, const std::string& b) {
  const std::size_t n = std::max(a.size(), b.size());
  unsigned diff = a.size() != b.size();
  for (std::size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= static_cast<unsigned>(x ^ y);
  }
  return diff == 0;
}

bool needs_key(const std::string& path) {
  return path.rfind("/v1/", 0) == 0 || path == "/v1" || path == "/tokenize" || path == "/detokenize";
}

std::string sse(const json& j) { return "data: " + dump(j) + "\n\n"; }

// One HTTP request's generation: its prompts, sequences and what has come back so far.
struct Generation {
  GenerationRequest req;
  ResponseMeta meta;
  std::vector<int> prompt_lengths;      // one per prompt
  std::shared_ptr<RequestHandle> handle;
  std::vector<Choice> choices;          // whole texts (non-streaming)
  std::vector<int> completion_tokens;   // per choice
  std::vector<int> cached_tokens;       // per choice
  int finished = 0;

  Usage usage() const {
    Usage u;
    for (int l : prompt_lengths) u.prompt_tokens += l;
    for (std::size_t i = 0; i < choices.size(); ++i) {
      u.completion_tokens += completion_tokens[i];
      if (i % static_cast<std::size_t>(req.n) == 0) u.cached_tokens += cached_tokens[i];
    }
    return u;
  }
  // Folds one event into the totals; returns the choice's delta.
  Choice absorb(const SeqEvent& ev) {
    Choice d;
    d.index = ev.index;
    d.text = ev.text;
    d.logprobs = ev.logprobs;
    Choice& c = choices[static_cast<std::size_t>(ev.index)];
    d.text_offset = static_cast<int>(c.text.size());
    c.text += ev.text;
    c.logprobs.insert(c.logprobs.end(), ev.logprobs.begin(), ev.logprobs.end());
    if (ev.finished) {
      ++finished;
      d.finish_reason = c.finish_reason = ev.finish_reason;
      completion_tokens[static_cast<std::size_t>(ev.index)] = ev.completion_tokens;
      cached_tokens[static_cast<std::size_t>(ev.index)] = ev.cached_tokens;
    }
    return d;
  }
  bool done() const { return finished == static_cast<int>(choices.size()); }
};

}  // namespace

struct Server::Impl {
  AsyncEngine& engine;
  ServerConfig cfg;
  const Tokenizer& tok;
  const ChatTemplate& chat;
  ServedModel model;
  httplib::Server http;
  std::atomic<bool> draining{false};
  std::atomic<int> open_streams{0};  // SSE responses not yet fully written
  int listen_fd = -1;                // the listening socket, to widen its backlog
  std::mutex shutdown_m;
  bool shutdown_started = false;

  Impl(AsyncEngine& e, const ServerConfig& c)
      : engine(e), cfg(c), tok(e.engine().tokenizer()), chat(e.engine().chat_template()) {
    model.name = cfg.model_name;
    model.max_model_len = e.engine().config().max_model_len;
    model.vocab_size = static_cast<int>(e.engine().model_config().vocab_size);
    model.max_n = std::min(16, e.capacity());
    model.defaults = e.engine().model_config().generation;
    model.created = std::chrono::duration_cast<std::chrono::seconds>(
                        std::chrono::system_clock::now().time_since_epoch())
                        .count();
    setup();
  }

  void setup() {
    // One thread per connection: enough for every sequence the engine admits plus a few
    // for /health and /metrics, so overload is answered with 429, not a stalled socket.
    const int threads = engine.capacity() + 16;
    http.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<std::size_t>(threads)); };
    http.set_payload_max_length(cfg.max_body);
    http.set_socket_options([this](socket_t sock) {
      httplib::default_socket_options(sock);
      listen_fd = sock;
    });
    http.set_keep_alive_timeout(5);
    http.set_tcp_nodelay(true);  // SSE events are small writes: no Nagle delay
    http.set_read_timeout(30);
    http.set_write_timeout(30);

    http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (cfg.api_key.empty() || !needs_key(req.path)) return httplib::Server::HandlerResponse::Unhandled;
      const std::string given = req.get_header_value("Authorization");
      if (constant_time_equal(given, "Bearer " + cfg.api_key)) return httplib::Server::HandlerResponse::Unhandled;
      send_error(res, ApiError(401, "missing or invalid API key (send 'Authorization: Bearer <key>')",
                               "invalid_request_error", "", "invalid_api_key"));
      res.set_header("WWW-Authenticate", "Bearer");
      return httplib::Server::HandlerResponse::Handled;
    });
    // httplib's own errors (404, 413, 400 on bad HTTP) get an OpenAI-style body too.
    http.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
      std::string msg = res.status == 404   ? "no route for " + req.method + " " + req.path
                        : res.status == 413 ? "the request body is larger than --max-body"
                                            : "bad request";
      send_error(res, ApiError(res.status, msg, res.status >= 500 ? "server_error" : "invalid_request_error"));
      return httplib::Server::HandlerResponse::Handled;
    }));
    http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      std::string what = "unknown error";
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      log::error("request failed: " + what);
      send_error(res, ApiError(500, "internal error: " + what, "server_error"));
    });
    http.set_logger([](const httplib::Request& req, const httplib::Response& res) {
      const std::string line = req.method + " " + req.path + " " + std::to_string(res.status);
      if (req.path.rfind("/v1/", 0) == 0 || res.status >= 400)
        log::info(line);
      else
        log::debug(line);
    });

    http.Get("/", [](const httplib::Request&, httplib::Response& res) { res.set_content(chat_page(), "text/html; charset=utf-8"); });
    http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
      if (draining)
        send_error(res, ApiError(503, "shutting down", "server_error", "", "shutting_down"));
      else
        send_json(res, 200, {{"status", "ok"}});
    });
    http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(engine.metrics().render(), "text/plain; version=0.0.4");
    });
    http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
      send_json(res, 200, {{"object", "list"}, {"data", json::array({model_json()})}});
    });
    http.Get(R"(/v1/models/(.+))", [this](const httplib::Request& req, httplib::Response& res) {
      if (req.matches[1] != model.name)
        send_error(res, ApiError(404, "The model '" + std::string(req.matches[1]) + "' does not exist",
                                 "invalid_request_error", "model", "model_not_found"));
      else
        send_json(res, 200, model_json());
    });
    http.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
      handle_generation(ApiKind::Chat, req, res);
    });
    http.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
      handle_generation(ApiKind::Completion, req, res);
    });
    http.Post("/tokenize", [this](const httplib::Request& req, httplib::Response& res) {
      try {
        const auto r = parse_tokenize_request(req.body);
        const auto ids = tok.encode(r.messages.empty() ? r.prompt : chat.render(r.messages, r.add_generation_prompt));
        send_json(res, 200, {{"tokens", ids}, {"count", ids.size()}, {"max_model_len", model.max_model_len}});
      } catch (const ApiError& e) {
        send_error(res, e);
      }
    });
    http.Post("/detokenize", [this](const httplib::Request& req, httplib::Response& res) {
      try {
        send_json(res, 200, {{"prompt", tok.decode(parse_detokenize_request(req.body, model.vocab_size))}});
      } catch (const ApiError& e) {
        send_error(res, e);
      }
    });
  }

  json model_json() const {
    return {{"id", model.name},
            {"object", "model"},
            {"created", model.created},
            {"owned_by", "llmctl"},
            {"max_model_len", model.max_model_len}};
  }

  // Parses, tokenizes, admits; then answers whole or as a stream.
  void handle_generation(ApiKind kind, const httplib::Request& req, httplib::Response& res) {
    auto g = std::make_shared<Generation>();
    try {
      if (draining) throw ApiError(503, "the server is shutting down", "server_error", "", "shutting_down");
      g->req = parse_request(kind, req.body, model);
      std::vector<std::vector<int>> prompts;
      if (kind == ApiKind::Chat) {
        prompts.push_back(tok.encode(chat.render(g->req.messages, true)));
      } else {
        for (const auto& t : g->req.prompt_texts) prompts.push_back(tok.encode(t));
        for (const auto& ids : g->req.prompt_ids) prompts.push_back(ids);
      }
      std::vector<std::vector<int>> seq_prompts;
      std::vector<SamplingParams> seq_params;
      for (const auto& p : prompts) {
        SamplingParams params = g->req.params;
        params.max_new_tokens = max_new_tokens_for(g->req, static_cast<int>(p.size()), model);
        g->prompt_lengths.push_back(static_cast<int>(p.size()));
        for (int j = 0; j < g->req.n; ++j) {
          SamplingParams pj = params;
          if (pj.seed) pj.seed = *pj.seed + static_cast<std::uint64_t>(j);  // n different answers, reproducibly
          seq_prompts.push_back(p);
          seq_params.push_back(std::move(pj));
        }
      }
      g->meta = new_response_meta(kind, model.name);
      g->meta.with_logprobs = g->req.logprobs >= 0;
      g->choices.resize(seq_prompts.size());
      for (std::size_t i = 0; i < seq_prompts.size(); ++i) g->choices[i].index = static_cast<int>(i);
      g->completion_tokens.assign(seq_prompts.size(), 0);
      g->cached_tokens.assign(seq_prompts.size(), 0);
      try {
        g->handle = engine.submit(seq_prompts, seq_params, g->req.logprobs);
      } catch (const Overloaded& e) {
        throw overload_error(e);
      }
    } catch (const ApiError& e) {
      send_error(res, e);
      return;
    }
    if (g->req.stream) {
      ++open_streams;
      respond_stream(g, res);
    } else {
      respond_whole(*g, res);
    }
  }

  void respond_whole(Generation& g, httplib::Response& res) {
    std::optional<ApiError> failure;
    while (!g.done()) {
      for (const auto& ev : g.handle->wait(kPoll)) {
        g.absorb(ev);
        if (ev.finished && !normal_finish(ev) && !failure) failure = finish_error(ev, request_timeout_s());
      }
    }
    if (failure) {
      send_error(res, *failure);
      return;
    }
    send_json(res, 200, response_json(g.meta, g.choices, g.usage(), &tok));
  }

  void respond_stream(const std::shared_ptr<Generation>& g, httplib::Response& res) {
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
    auto started = std::make_shared<bool>(false);
    auto failed = std::make_shared<bool>(false);
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, g, started, failed](std::size_t, httplib::DataSink& sink) {
          auto write = [&](const std::string& s) { return sink.write(s.data(), s.size()); };
          const bool usage_field = g->req.include_usage;
          if (!*started) {  // the chat stream opens each choice with its role
            *started = true;
            if (g->meta.kind == ApiKind::Chat)
              for (const auto& c : g->choices)
                if (!write(sse(chunk_json(g->meta, Choice{c.index, "", "", {}}, true, usage_field, &tok)))) return false;
          }
          const auto events = g->handle->wait(kPoll);
          if (events.empty() && !g->done()) return write(": keep-alive\n\n");  // also notices a client that left
          for (const auto& ev : events) {
            Choice d = g->absorb(ev);
            if (ev.finished && !normal_finish(ev)) {
              if (!*failed && !write(sse(finish_error(ev, request_timeout_s()).body()))) return false;
              *failed = true;
              continue;
            }
            if (d.text.empty() && d.logprobs.empty() && d.finish_reason.empty()) continue;
            if (!write(sse(chunk_json(g->meta, d, false, usage_field, &tok)))) return false;
          }
          if (g->done()) {
            if (usage_field && !*failed && !write(sse(usage_chunk_json(g->meta, g->usage())))) return false;
            if (!write("data: [DONE]\n\n")) return false;
            sink.done();
          }
          return true;
        },
        [this, g](bool) {
          // Connection closed (normally or not): whatever still runs is cancelled and its
          // KV blocks freed. A no-op when every sequence has finished.
          engine.cancel(g->handle);
          --open_streams;
        });
  }

  double request_timeout_s() const { return engine.config().request_timeout_s; }
};

Server::Server(AsyncEngine& engine, const ServerConfig& cfg) : impl_(std::make_unique<Impl>(engine, cfg)) {}

Server::~Server() = default;

int Server::bind() {
  auto& http = impl_->http;
  int port = impl_->cfg.port;
  if (port == 0) {
    port = http.bind_to_any_port(impl_->cfg.host);
    if (port < 0) throw Error("cannot listen on " + impl_->cfg.host + " (any port)");
  } else if (!http.bind_to_port(impl_->cfg.host, port)) {
    throw Error("cannot listen on " + impl_->cfg.host + ":" + std::to_string(port) +
                " (in use, or not an address of this machine)");
  }
  // Debian's cpp-httplib listens with a backlog of 5: a burst of clients overflows it and
  // some connections get reset. listen() again on the bound socket widens the queue.
  if (impl_->listen_fd >= 0) ::listen(impl_->listen_fd, SOMAXCONN);
  return port;
}

void Server::run() { impl_->http.listen_after_bind(); }

void Server::shutdown() {
  {
    std::lock_guard<std::mutex> lk(impl_->shutdown_m);
    if (impl_->shutdown_started) return;
    impl_->shutdown_started = true;
  }
  // New requests get 503 from here on; streams in flight keep going (httplib would cut
  // them if the listener closed first), then the listener closes.
  impl_->draining = true;
  impl_->engine.begin_drain();
  const auto grace = std::chrono::milliseconds(static_cast<std::int64_t>(impl_->cfg.shutdown_grace_s * 1000));
  if (!impl_->engine.wait_idle(grace)) {
    log::warn("shutdown: requests still running after the grace period; cancelling them");
    impl_->engine.cancel_all();
    impl_->engine.wait_idle(std::chrono::seconds(5));
  }
  // Let the streams write their last events and [DONE].
  for (int i = 0; i < 500 && impl_->open_streams > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  impl_->http.stop();  // run() returns once the open connections are done
}

void Server::cancel_all() { impl_->engine.cancel_all(); }

}  // namespace llmctl::serve
