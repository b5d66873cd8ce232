#pragma once
// A small client for OpenAI-compatible servers (llmctl serve, vLLM, LMDeploy, llama-server):
// model discovery and streaming (server-sent events) POSTs. Used by `llmctl bench
// --endpoint` and `llmctl agent --endpoint`. One instance per thread.
#include <functional>
#include <memory>
#include <string>

#include <nlohmann/json_fwd.hpp>

namespace llmctl::serve {

// "http://host:port[/v1][/]" -> "http://host:port"; anything else is an Error naming `flag`.
std::string normalize_endpoint(std::string url, const std::string& flag = "--endpoint");

class OpenAIClient {
 public:
  OpenAIClient(const std::string& endpoint, std::string api_key, double timeout_s = 600);
  ~OpenAIClient();
  OpenAIClient(const OpenAIClient&) = delete;
  OpenAIClient& operator=(const OpenAIClient&) = delete;

  const std::string& endpoint() const { return endpoint_; }
  // The first id of GET /v1/models; throws llmctl::Error when unreachable or empty.
  std::string first_model();

  struct StreamEnd {
    std::string error;  // "" on success: transport error, HTTP status + body, or a missing [DONE]
  };
  // POSTs `body` to `path` and hands each `data:` event (parsed JSON) to on_event as it
  // arrives; on_event returns false to stop reading.
  StreamEnd stream(const std::string& path, const nlohmann::json& body,
                   const std::function<bool(const nlohmann::json&)>& on_event);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string endpoint_, api_key_;
};

}  // namespace llmctl::serve
