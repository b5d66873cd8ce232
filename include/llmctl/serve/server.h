#pragma once
// `llmctl serve`'s HTTP side: the OpenAI-compatible routes (/v1/models, /v1/chat/completions,
// /v1/completions, streaming as Server-Sent Events), /health, /metrics, /tokenize,
// /detokenize and the chat page at /, over an AsyncEngine. The HTTP library stays behind
// this header.
#include <cstddef>
#include <memory>
#include <string>

namespace llmctl::serve {

class AsyncEngine;

struct ServerConfig {
  std::string host = "127.0.0.1";
  int port = 8000;                  // 0: any free port (bind() says which)
  std::string api_key;              // empty: no authentication
  std::string model_name;           // the name clients use in "model"
  std::size_t max_body = 1 << 20;   // bytes; larger bodies get 413
  double shutdown_grace_s = 30;     // SIGTERM: how long in-flight requests may take to finish
};

class Server {
 public:
  Server(AsyncEngine& engine, const ServerConfig& cfg);
  ~Server();
  // Binds the listening socket; returns the port. Throws llmctl::Error when it cannot.
  int bind();
  // Serves until shutdown() has run; returns once every connection is closed.
  void run();
  // Stops accepting, lets requests in flight finish within the grace period, cancels the
  // rest. Safe to call from another thread (the signal thread), once or more.
  void shutdown();
  // Ends requests in flight now (a second Ctrl-C during shutdown).
  void cancel_all();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace llmctl::serve
