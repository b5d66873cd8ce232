#pragma once
// The OpenAI wire format, apart from any HTTP library: request bodies of
// /v1/chat/completions and /v1/completions parsed and validated into a GenerationRequest
// (every problem an ApiError with the HTTP status, type and offending parameter), and the
// response objects and stream chunks built from results. Pure functions: fuzzed and unit
// tested without a socket.
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "llmctl/data/jsonl.h"
#include "llmctl/engine/sampling.h"
#include "llmctl/model/config.h"

namespace llmctl {
class Tokenizer;
}

namespace llmctl::serve {

// An error as OpenAI reports it: {"error": {"message", "type", "param", "code"}}.
struct ApiError : std::runtime_error {
  int status;
  std::string type, param, code;
  ApiError(int status, const std::string& message, std::string type = "invalid_request_error", std::string param = "",
           std::string code = "");
  nlohmann::json body() const;
};

// What the server serves, for validation and for the response objects.
struct ServedModel {
  std::string name;
  int max_model_len = 0;   // prompt + answer
  int vocab_size = 0;
  int max_n = 16;          // most choices per request
  int max_logprobs = 20;   // most top_logprobs alternatives
  std::int64_t created = 0;
  // Request fields left out take these (the model's generation_config.json, vLLM's rule).
  GenerationDefaults defaults;
};

enum class ApiKind { Chat, Completion };

struct GenerationRequest {
  ApiKind kind = ApiKind::Chat;
  std::vector<Message> messages;             // chat
  std::vector<std::string> prompt_texts;     // completions: text prompts (one choice set each) ...
  std::vector<std::vector<int>> prompt_ids;  // ... or token-id prompts
  SamplingParams params;                     // max_new_tokens < 0: fill the context
  int n = 1;
  bool stream = false, include_usage = false;
  int logprobs = -1;  // -1: none; k >= 0: the sampled token's logprob and k alternatives
  std::string user;
};

// Parses and validates a request body; throws ApiError. Checks that need the prompt's
// length (context overflow) come later, in check_prompt_length.
GenerationRequest parse_request(ApiKind kind, const std::string& body, const ServedModel& model);
// The answer length for a prompt of this many tokens: max_tokens when given, else what is
// left of the context. Throws ApiError (400, context_length_exceeded) when the prompt
// (plus max_tokens) does not fit.
int max_new_tokens_for(const GenerationRequest& req, int prompt_tokens, const ServedModel& model);

// POST /tokenize: {"prompt": "..."} or {"messages": [...], "add_generation_prompt": true}.
struct TokenizeRequest {
  std::string prompt;
  std::vector<Message> messages;  // used when non-empty
  bool add_generation_prompt = true;
};
TokenizeRequest parse_tokenize_request(const std::string& body);
// POST /detokenize: {"tokens": [ids]}; ids checked against the vocabulary.
std::vector<int> parse_detokenize_request(const std::string& body, int vocab_size);

// True when `s` is well-formed UTF-8 (no overlongs, surrogates or code points > U+10FFFF).
bool is_valid_utf8(const std::string& s);

// --- Responses --------------------------------------------------------------------------

struct TokenLogprob {
  int id = 0;
  float logprob = 0;
  std::vector<std::pair<int, float>> top;  // best first
};

struct Choice {
  int index = 0;
  std::string text;
  std::string finish_reason;  // "stop" | "length"; empty while streaming
  std::vector<TokenLogprob> logprobs;
  int text_offset = 0;  // a stream chunk's place in the choice's text (completions logprobs' text_offset)
};

struct Usage {
  int prompt_tokens = 0, completion_tokens = 0, cached_tokens = 0;
  nlohmann::json to_json() const;
};

// Identifies one response: "chatcmpl-..." / "cmpl-..." id, creation time, model name.
struct ResponseMeta {
  ApiKind kind = ApiKind::Chat;
  std::string id, model;
  std::int64_t created = 0;
  bool with_logprobs = false;
};
ResponseMeta new_response_meta(ApiKind kind, const std::string& model);

// The whole (non-streaming) response object.
nlohmann::json response_json(const ResponseMeta& meta, const std::vector<Choice>& choices, const Usage& usage,
                             const Tokenizer* tok);
// One stream chunk for one choice: `role_chunk` is the chat stream's first chunk of each
// choice (delta carries the role); `usage_field` adds "usage": null (include_usage is on).
nlohmann::json chunk_json(const ResponseMeta& meta, const Choice& delta, bool role_chunk, bool usage_field,
                          const Tokenizer* tok);
// The final usage-only chunk of a stream with include_usage.
nlohmann::json usage_chunk_json(const ResponseMeta& meta, const Usage& usage);

// Serialises for the wire: invalid UTF-8 (a token that is half a character) is replaced
// with U+FFFD instead of throwing.
std::string dump(const nlohmann::json& j);

// The bytes a token stands for (sentencepiece's "▁" as a space, <0xAB> byte pieces as the
// byte), as logprobs report them.
std::string token_bytes(const Tokenizer& tok, int id);

}  // namespace llmctl::serve
