#pragma once
// Where the agent's model replies come from: the in-process engine (`--model DIR`) or any
// OpenAI-compatible server (`--endpoint URL`: llmctl serve, vLLM, LMDeploy), streamed.
#include <memory>
#include <string>

#include "llmctl/agent/codeact.h"
#include "llmctl/engine/sampling.h"

namespace llmctl {
class Engine;
namespace serve {
class OpenAIClient;
}
}  // namespace llmctl

namespace llmctl::agent {

// Renders the conversation in the model's chat format; the prefix cache keeps earlier
// turns' KV, so each turn computes only the new messages.
class EngineBackend : public ChatBackend {
 public:
  // `interrupt` (Ctrl-C), when set, cancels the reply being generated.
  EngineBackend(Engine& engine, SamplingParams params, std::string name, const std::atomic<bool>* interrupt = nullptr);
  std::string complete(const std::vector<Message>& messages,
                       const std::function<void(const std::string&)>& on_delta) override;
  std::string name() const override { return name_; }

 private:
  Engine& engine_;
  SamplingParams params_;
  std::string name_;
  const std::atomic<bool>* interrupt_;
};

// POST /v1/chat/completions with stream=true; `model` "" takes the server's first model.
class OpenAIBackend : public ChatBackend {
 public:
  OpenAIBackend(const std::string& endpoint, std::string model, const std::string& api_key, SamplingParams params,
                const std::atomic<bool>* interrupt = nullptr);
  ~OpenAIBackend() override;
  std::string complete(const std::vector<Message>& messages,
                       const std::function<void(const std::string&)>& on_delta) override;
  std::string name() const override { return model_; }

 private:
  std::unique_ptr<serve::OpenAIClient> client_;
  std::string model_;
  SamplingParams params_;
  const std::atomic<bool>* interrupt_;
};

}  // namespace llmctl::agent
