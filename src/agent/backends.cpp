#include "llmctl/agent/backends.h"

#include <nlohmann/json.hpp>

#include "llmctl/engine/engine.h"
#include "llmctl/serve/openai_client.h"
#include "llmctl/tokenizer/tokenizer.h"
#include "llmctl/util/error.h"

namespace llmctl::agent {

using json = nlohmann::json;

EngineBackend::EngineBackend(Engine& engine, SamplingParams params, std::string name,
                             const std::atomic<bool>* interrupt)
    : engine_(engine), params_(std::move(params)), name_(std::move(name)), interrupt_(interrupt) {
  if (!engine_.has_tokenizer()) throw Error("the agent's model has no tokenizer");
}

std::string EngineBackend::complete(const std::vector<Message>& messages,
                                    const std::function<void(const std::string&)>& on_delta) {
  const auto prompt = engine_.tokenizer().encode(engine_.chat_template().render(messages, true));
  const auto id = engine_.add_request(prompt, params_);
  std::string text;
  for (bool finished = false; !finished;) {
    if (interrupt_ && interrupt_->load()) {
      engine_.cancel(id);  // frees its blocks; the text so far is the reply
      break;
    }
    for (auto& o : engine_.step()) {
      if (o.id != id) continue;
      if (!o.text.empty()) {
        text += o.text;
        on_delta(o.text);
      }
      finished = finished || o.finished;
    }
  }
  return text;
}

OpenAIBackend::OpenAIBackend(const std::string& endpoint, std::string model, const std::string& api_key,
                             SamplingParams params, const std::atomic<bool>* interrupt)
    : client_(std::make_unique<serve::OpenAIClient>(endpoint, api_key)), model_(std::move(model)),
      params_(std::move(params)), interrupt_(interrupt) {
  if (model_.empty()) model_ = client_->first_model();
}

OpenAIBackend::~OpenAIBackend() = default;

std::string OpenAIBackend::complete(const std::vector<Message>& messages,
                                    const std::function<void(const std::string&)>& on_delta) {
  json msgs = json::array();
  for (const auto& m : messages) msgs.push_back({{"role", m.role}, {"content", m.content}});
  const auto& p = params_;
  json body = {{"model", model_},       {"messages", msgs},      {"stream", true},
               {"temperature", p.temperature}, {"top_p", p.top_p}, {"max_tokens", p.max_new_tokens}};
  // The standard fields always; vLLM's extras only when set, so strict servers accept it.
  if (p.presence_penalty != 0) body["presence_penalty"] = p.presence_penalty;
  if (p.frequency_penalty != 0) body["frequency_penalty"] = p.frequency_penalty;
  if (p.seed) body["seed"] = *p.seed;
  if (!p.stop.empty()) body["stop"] = p.stop;
  if (p.top_k > 0) body["top_k"] = p.top_k;
  if (p.min_p > 0) body["min_p"] = p.min_p;
  if (p.repetition_penalty != 1.0f) body["repetition_penalty"] = p.repetition_penalty;
  std::string text, error;
  const auto end = client_->stream("/v1/chat/completions", body, [&](const json& ev) {
    if (interrupt_ && interrupt_->load()) return false;  // closing the stream cancels it server-side
    if (ev.contains("error")) {
      error = ev["error"].dump();
      return false;
    }
    const auto& choices = ev.value("choices", json::array());
    if (choices.empty() || !choices[0].is_object()) return true;
    const auto& delta = choices[0].value("delta", json::object());
    if (delta.is_object() && delta.contains("content") && delta["content"].is_string()) {
      const auto piece = delta["content"].get<std::string>();
      text += piece;
      if (!piece.empty()) on_delta(piece);
    }
    return true;
  });
  if (error.empty()) error = end.error;
  if (!error.empty()) throw Error("the model server " + client_->endpoint() + " failed: " + error);
  return text;
}

}  // namespace llmctl::agent
