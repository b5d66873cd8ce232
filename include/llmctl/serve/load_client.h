#pragma once
// A load generator for OpenAI-compatible servers (llmctl serve, vLLM, llama-server), as
// `vllm bench serve` measures them: streaming /v1/completions requests with token-id prompts
// and fixed answer lengths (ignore_eos), sent at a request rate or with a cap on concurrency,
// timing each request's first token, the gaps between chunks and its end.
#include <string>
#include <vector>

namespace llmctl::serve {

struct LoadRequest {
  std::vector<int> prompt;
  int max_tokens = 0;
};

struct LoadConfig {
  std::string endpoint;       // http://host:port (a trailing /v1 is accepted)
  std::string api_key;        // sent as a Bearer token when set
  std::string model;          // "model" field; empty: the first of GET /v1/models
  int max_concurrency = 1;    // requests in flight at once
  double request_rate = 0;    // requests per second (Poisson arrivals); 0: all at once
  unsigned seed = 0;          // of the arrival times
  double timeout_s = 600;     // per request
};

struct LoadResult {
  struct Request {
    bool ok = false;
    std::string error;
    int output_tokens = 0;     // from the usage chunk when the server sends one, else max_tokens
    double ttft_s = 0, e2e_s = 0;
    std::vector<double> itl_s;  // gaps between content chunks
  };
  std::vector<Request> requests;
  double wall_s = 0;
  std::string model;
};

// Runs every request; throws llmctl::Error when the server cannot be reached at all.
LoadResult run_load(const LoadConfig& cfg, const std::vector<LoadRequest>& work);

}  // namespace llmctl::serve
