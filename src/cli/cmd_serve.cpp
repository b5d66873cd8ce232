// llmctl serve: the OpenAI-compatible HTTP server (src/serve/) on the inference engine.
// SIGTERM / SIGINT stop it cleanly: no new connections, requests in flight get
// --shutdown-grace seconds to finish, then the rest are cancelled, and it exits 0. A second
// signal cancels at once.
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "common.h"
#include "llmctl/serve/async_engine.h"
#include "llmctl/serve/server.h"
#include "llmctl/util/error.h"
#include "llmctl/util/log.h"

namespace llmctl::cli {

namespace {

// Watches for SIGTERM/SIGINT (blocked in every other thread) until `done`.
void watch_signals(const sigset_t& set, serve::Server& server, const std::atomic<bool>& done) {
  int received = 0;
  std::thread shutdown_thread;
  const timespec tick{0, 200 * 1000 * 1000};
  while (!done) {
    siginfo_t info;
    const int sig = sigtimedwait(&set, &info, &tick);
    if (sig <= 0) continue;
    if (++received == 1) {
      log::info(std::string("received ") + (sig == SIGTERM ? "SIGTERM" : "SIGINT") +
                ": shutting down (again to cancel requests in flight)");
      shutdown_thread = std::thread([&server] { server.shutdown(); });
    } else {
      log::warn("cancelling requests in flight");
      server.cancel_all();
    }
  }
  if (shutdown_thread.joinable()) shutdown_thread.join();
}

}  // namespace

void add_serve(CLI::App& app) {
  struct Opts {
    std::string model;
    serve::ServerConfig server;
    serve::AsyncEngineConfig async;
    EngineFlags engine;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("serve", "OpenAI-compatible HTTP server (chat, completions, streaming, metrics, web chat)");
  sub->footer(
      "Routes: GET / (chat page), GET /health, GET /metrics (Prometheus), GET /v1/models,\n"
      "POST /v1/chat/completions, POST /v1/completions (both stream with \"stream\": true),\n"
      "POST /tokenize, POST /detokenize. SIGTERM/SIGINT: finish or cancel requests in flight, exit 0.");
  sub->add_option("--model", o->model, "Model directory or .gguf file")->required()->check(CLI::ExistingPath);
  sub->add_option("--host", o->server.host, "Address to listen on (0.0.0.0: every interface)")->capture_default_str();
  sub->add_option("--port", o->server.port, "Port to listen on (0: any free port, printed at start)")
      ->capture_default_str()
      ->check(CLI::Range(0, 65535));
  sub->add_option("--api-key", o->server.api_key,
                  "Require 'Authorization: Bearer KEY' on /v1 routes, /tokenize and /detokenize")
      ->envname("LLMCTL_API_KEY");
  sub->add_option("--served-model-name", o->server.model_name,
                  "Model name clients use (default: the model directory's name)");
  sub->add_option("--max-queue", o->async.max_queue,
                  "Sequences that may wait beyond --max-num-seqs; more get 429 with Retry-After")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--max-body", o->server.max_body, "Largest request body in bytes (413 beyond)")
      ->capture_default_str()
      ->check(CLI::Range(std::size_t{64}, std::size_t{1} << 30));
  sub->add_option("--request-timeout", o->async.request_timeout_s,
                  "Seconds a request may take; then it is ended (504, or an error event when streaming)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sub->add_option("--stream-interval", o->async.stream_interval,
                  "Send streamed tokens in groups of this many (fewer wake-ups on small machines)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  sub->add_option("--shutdown-grace", o->server.shutdown_grace_s,
                  "On SIGTERM/SIGINT: seconds requests in flight may take to finish before they are cancelled")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  o->engine.add_to(sub);
  sub->callback([o] {
    // Signals go to the watcher thread only: block them before any other thread starts.
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    signal(SIGPIPE, SIG_IGN);  // a client that hangs up is a failed write, not a dead server

    auto engine = std::make_unique<Engine>(o->model, o->engine.get());
    if (!engine->has_tokenizer()) throw Error("--model " + o->model + " has no tokenizer; the server needs one");
    const auto& ec = engine->config();
    const std::string kv_desc = cat(engine->num_blocks(), " blocks of ", ec.block_size, " tokens, ",
                                    ec.kv_dtype == "auto" ? ec.dtype : ec.kv_dtype);
    if (o->server.model_name.empty())
      o->server.model_name = std::filesystem::path(o->model).lexically_normal().filename().string();
    if (o->server.model_name.empty() || o->server.model_name == ".")
      o->server.model_name = std::filesystem::absolute(o->model).lexically_normal().parent_path().filename().string();
    serve::AsyncEngine async(std::move(engine), o->async);
    serve::Server server(async, o->server);
    const int port = server.bind();
    log::info(cat("serving '", o->server.model_name, "' on http://", o->server.host, ":", port,
                  o->server.api_key.empty() ? "" : " (API key required)", "; KV cache ",
                  kv_desc));

    std::atomic<bool> done{false};
    std::thread watcher([&] { watch_signals(set, server, done); });
    std::thread http([&] {
      server.run();  // returns after shutdown() has closed every connection
      async.stop();
    });
    async.run();  // the engine steps on this thread, the one that loaded the model (see AsyncEngine::run)
    http.join();
    done = true;
    watcher.join();
    log::info("server stopped");
  });
}

}  // namespace llmctl::cli
