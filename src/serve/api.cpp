#include "llmctl/serve/api.h"

#include <chrono>
#include <cmath>
#include <random>
#include <set>

#include "llmctl/tokenizer/tokenizer.h"
#include "llmctl/util/error.h"

namespace llmctl::serve {

using json = nlohmann::json;

ApiError::ApiError(int status_, const std::string& message, std::string type_, std::string param_, std::string code_)
    : std::runtime_error(message), status(status_), type(std::move(type_)), param(std::move(param_)),
      code(std::move(code_)) {}

json ApiError::body() const {
  return {{"error",
           {{"message", what()},
            {"type", type},
            {"param", param.empty() ? json(nullptr) : json(param)},
            {"code", code.empty() ? json(nullptr) : json(code)}}}};
}

namespace {

ApiError bad(const std::string& param, const std::string& message) { return ApiError(400, message, "invalid_request_error", param); }

// Field readers: a JSON null counts as absent (as OpenAI treats it); a value of the wrong
// type or out of range is a 400 that names the field.
const json* field(const json& o, const char* key) {
  auto it = o.find(key);
  return (it == o.end() || it->is_null()) ? nullptr : &*it;
}

bool read_bool(const json& o, const char* key, bool def) {
  const json* v = field(o, key);
  if (!v) return def;
  if (!v->is_boolean()) throw bad(key, std::string("'") + key + "' must be a boolean");
  return v->get<bool>();
}

double read_number(const json& o, const char* key, double def, double lo, double hi, bool lo_open = false) {
  const json* v = field(o, key);
  if (!v) return def;
  if (!v->is_number()) throw bad(key, std::string("'") + key + "' must be a number");
  const double x = v->get<double>();
  if (!std::isfinite(x) || x < lo || x > hi || (lo_open && x == lo))
    throw bad(key, std::string("'") + key + "' must be in " + (lo_open ? "(" : "[") + std::to_string(lo) + ", " +
                       std::to_string(hi) + "], got " + v->dump());
  return x;
}

std::int64_t read_int(const json& o, const char* key, std::int64_t def, std::int64_t lo, std::int64_t hi) {
  const json* v = field(o, key);
  if (!v) return def;
  if (!v->is_number_integer()) throw bad(key, std::string("'") + key + "' must be an integer");
  // Unsigned values beyond int64 would wrap: they are above any limit asked for here.
  if (v->is_number_unsigned() && v->get<std::uint64_t>() > static_cast<std::uint64_t>(hi))
    throw bad(key, std::string("'") + key + "' must be at most " + std::to_string(hi));
  const std::int64_t x = v->get<std::int64_t>();
  if (x < lo || x > hi)
    throw bad(key, std::string("'") + key + "' must be in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                       "], got " + std::to_string(x));
  return x;
}

std::string read_string(const json& o, const char* key, const std::string& def) {
  const json* v = field(o, key);
  if (!v) return def;
  if (!v->is_string()) throw bad(key, std::string("'") + key + "' must be a string");
  return v->get<std::string>();
}

// Fields that change what the answer means: refused rather than silently ignored when set.
void refuse_unsupported(const json& o) {
  auto set = [&](const char* key) { return field(o, key) != nullptr; };
  auto refuse = [](const char* key, const std::string& why) { throw bad(key, std::string("'") + key + "' " + why); };
  if (const json* t = field(o, "tools"); t && !(t->is_array() && t->empty())) refuse("tools", "is not supported");
  if (const json* t = field(o, "tool_choice"); t && !(t->is_string() && (*t == "none" || *t == "auto")))
    refuse("tool_choice", "is not supported");
  if (set("functions")) refuse("functions", "is not supported");
  if (set("function_call")) refuse("function_call", "is not supported");
  if (const json* r = field(o, "response_format"); r && !(r->is_object() && r->value("type", "") == "text"))
    refuse("response_format", "is not supported (only {\"type\": \"text\"})");
  if (const json* b = field(o, "logit_bias"); b && !(b->is_object() && b->empty())) refuse("logit_bias", "is not supported");
  if (read_int(o, "best_of", 1, 1, 1 << 20) != 1) refuse("best_of", "is not supported (use n)");
  if (read_bool(o, "echo", false)) refuse("echo", "is not supported");
  if (!read_string(o, "suffix", "").empty()) refuse("suffix", "is not supported");
  if (set("audio")) refuse("audio", "is not supported");
  if (const json* m = field(o, "modalities"); m && *m != json::array({"text"})) refuse("modalities", "must be [\"text\"]");
}

// "stop": a string or a list of non-empty strings.
std::vector<std::string> read_stop(const json& o) {
  const json* v = field(o, "stop");
  if (!v) return {};
  std::vector<std::string> out;
  if (v->is_string()) {
    out.push_back(v->get<std::string>());
  } else if (v->is_array()) {
    if (v->size() > 16) throw bad("stop", "'stop' has more than 16 strings");
    for (const auto& s : *v) {
      if (!s.is_string()) throw bad("stop", "'stop' must be a string or a list of strings");
      out.push_back(s.get<std::string>());
    }
  } else {
    throw bad("stop", "'stop' must be a string or a list of strings");
  }
  for (const auto& s : out)
    if (s.empty()) throw bad("stop", "'stop' strings must not be empty");
  return out;
}

std::string message_content(const json& m, std::size_t i) {
  const std::string param = "messages[" + std::to_string(i) + "].content";
  const json* c = field(m, "content");
  if (!c) return "";
  if (c->is_string()) return c->get<std::string>();
  if (!c->is_array()) throw bad(param, "'" + param + "' must be a string or a list of text parts");
  std::string text;
  for (const auto& part : *c) {
    if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string())
      throw bad(param, "'" + param + "': only parts of type \"text\" are supported");
    text += part["text"].get<std::string>();
  }
  return text;
}

std::vector<Message> read_messages(const json& o) {
  const json* v = field(o, "messages");
  if (!v) throw bad("messages", "'messages' is required");
  if (!v->is_array()) throw bad("messages", "'messages' must be a list");
  if (v->empty()) throw bad("messages", "'messages' must not be empty");
  std::vector<Message> out;
  for (std::size_t i = 0; i < v->size(); ++i) {
    const json& m = (*v)[i];
    const std::string where = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) throw bad(where, "'" + where + "' must be an object");
    const json* role = field(m, "role");
    if (!role || !role->is_string()) throw bad(where + ".role", "'" + where + ".role' is required (a string)");
    std::string r = role->get<std::string>();
    if (r == "developer") r = "system";
    if (r != "system" && r != "user" && r != "assistant")
      throw bad(where + ".role", "'" + where + ".role' must be system, user or assistant, got \"" + r + "\"");
    if (const json* tc = field(m, "tool_calls"); tc && !(tc->is_array() && tc->empty()))
      throw bad(where + ".tool_calls", "tool calls are not supported");
    if (r != "assistant" && !field(m, "content"))
      throw bad(where + ".content", "'" + where + ".content' is required");
    out.push_back({r, message_content(m, i)});
  }
  return out;
}

// "prompt": a string, a list of strings, a list of token ids, or a list of such lists.
void read_prompt(const json& o, GenerationRequest& req, int vocab) {
  const json* v = field(o, "prompt");
  if (!v) throw bad("prompt", "'prompt' is required");
  auto ids_of = [&](const json& a) {
    std::vector<int> ids;
    for (const auto& x : a) {
      if (!x.is_number_integer()) throw bad("prompt", "'prompt' token lists must hold integers");
      const auto id = x.get<std::int64_t>();
      if (id < 0 || id >= vocab)
        throw bad("prompt", "'prompt' token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                                std::to_string(vocab) + ")");
      ids.push_back(static_cast<int>(id));
    }
    if (ids.empty()) throw bad("prompt", "'prompt' must not be empty");
    return ids;
  };
  if (v->is_string()) {
    req.prompt_texts.push_back(v->get<std::string>());
  } else if (v->is_array() && !v->empty()) {
    const json& first = v->front();
    if (first.is_string()) {
      for (const auto& s : *v) {
        if (!s.is_string()) throw bad("prompt", "'prompt' lists must not mix strings with other types");
        req.prompt_texts.push_back(s.get<std::string>());
      }
    } else if (first.is_number_integer()) {
      req.prompt_ids.push_back(ids_of(*v));
    } else if (first.is_array()) {
      for (const auto& a : *v) {
        if (!a.is_array()) throw bad("prompt", "'prompt' lists must not mix token lists with other types");
        req.prompt_ids.push_back(ids_of(a));
      }
    } else {
      throw bad("prompt", "'prompt' must be a string, a list of strings or a list of token ids");
    }
  } else {
    throw bad("prompt", v->is_array() ? "'prompt' must not be empty"
                                      : "'prompt' must be a string, a list of strings or a list of token ids");
  }
  for (const auto& t : req.prompt_texts)
    if (t.empty()) throw bad("prompt", "'prompt' must not be empty");
}

json parse_object(const std::string& body) {
  if (!is_valid_utf8(body)) throw bad("", "the request body is not valid UTF-8");
  json o;
  try {
    o = json::parse(body);
  } catch (const json::parse_error& e) {
    throw ApiError(400, std::string("the request body is not valid JSON: ") + e.what(), "invalid_request_error", "",
                   "invalid_json");
  }
  if (!o.is_object()) throw bad("", "the request body must be a JSON object");
  return o;
}

}  // namespace

bool is_valid_utf8(const std::string& s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const std::size_t n = s.size();
  for (std::size_t i = 0; i < n;) {
    const unsigned c = p[i];
    int len;
    std::uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > n) return false;
    for (int k = 1; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    static const std::uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

GenerationRequest parse_request(ApiKind kind, const std::string& body, const ServedModel& model) {
  const json o = parse_object(body);

  GenerationRequest req;
  req.kind = kind;
  const std::string name = read_string(o, "model", model.name);
  if (name != model.name)
    throw ApiError(404, "The model '" + name + "' does not exist; this server serves '" + model.name + "'",
                   "invalid_request_error", "model", "model_not_found");
  refuse_unsupported(o);
  if (kind == ApiKind::Chat)
    req.messages = read_messages(o);
  else
    read_prompt(o, req, model.vocab_size);

  SamplingParams& p = req.params;
  const GenerationDefaults& d = model.defaults;
  p.temperature = static_cast<float>(read_number(o, "temperature", d.effective_temperature(), 0.0, 2.0));
  p.top_p = static_cast<float>(read_number(o, "top_p", d.top_p, 0.0, 1.0, true));
  const auto top_k = read_int(o, "top_k", d.top_k, -1, 1 << 30);
  p.top_k = top_k < 0 ? 0 : static_cast<int>(top_k);
  p.min_p = static_cast<float>(read_number(o, "min_p", d.min_p, 0.0, 1.0));
  p.presence_penalty = static_cast<float>(read_number(o, "presence_penalty", 0.0, -2.0, 2.0));
  p.frequency_penalty = static_cast<float>(read_number(o, "frequency_penalty", 0.0, -2.0, 2.0));
  p.repetition_penalty =
      static_cast<float>(read_number(o, "repetition_penalty", d.repetition_penalty, 0.0, 10.0, true));
  if (const json* s = field(o, "seed")) {
    if (!s->is_number_integer()) throw bad("seed", "'seed' must be an integer");
    p.seed = s->is_number_unsigned() ? s->get<std::uint64_t>() : static_cast<std::uint64_t>(s->get<std::int64_t>());
  }
  p.stop = read_stop(o);
  if (const json* ids = field(o, "stop_token_ids")) {
    if (!ids->is_array()) throw bad("stop_token_ids", "'stop_token_ids' must be a list of token ids");
    for (const auto& x : *ids) {
      if (!x.is_number_integer() || x.get<std::int64_t>() < 0 || x.get<std::int64_t>() >= model.vocab_size)
        throw bad("stop_token_ids", "'stop_token_ids' must hold token ids in [0, vocab)");
      p.stop_token_ids.push_back(x.get<int>());
    }
  }
  p.ignore_eos = read_bool(o, "ignore_eos", false);

  // max_completion_tokens is the newer name; either may be given. Absent: chat fills the
  // context, completions default to 16 tokens (as OpenAI's legacy endpoint does).
  const std::int64_t limit = model.max_model_len;
  const char* mt_key = field(o, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  const json* mt = field(o, mt_key);
  if (mt && mt->is_number_integer() && !mt->is_number_unsigned() && mt->get<std::int64_t>() <= 0)
    throw bad(mt_key, std::string("'") + mt_key + "' must be at least 1");
  if (mt && mt->is_number_unsigned() && mt->get<std::uint64_t>() >= static_cast<std::uint64_t>(limit))
    throw bad(mt_key, std::string("'") + mt_key + "' is larger than the model's context of " + std::to_string(limit) +
                          " tokens");
  p.max_new_tokens = static_cast<int>(read_int(o, mt_key, kind == ApiKind::Chat ? -1 : 16, 1, limit - 1));

  req.n = static_cast<int>(read_int(o, "n", 1, 1, model.max_n));
  const std::size_t prompts = kind == ApiKind::Chat ? 1 : req.prompt_texts.size() + req.prompt_ids.size();
  if (prompts * static_cast<std::size_t>(req.n) > static_cast<std::size_t>(model.max_n))
    throw bad("n", "prompts x n must be at most " + std::to_string(model.max_n));

  req.stream = read_bool(o, "stream", false);
  if (const json* so = field(o, "stream_options")) {
    if (!req.stream) throw bad("stream_options", "'stream_options' is only allowed when 'stream' is true");
    if (!so->is_object()) throw bad("stream_options", "'stream_options' must be an object");
    req.include_usage = read_bool(*so, "include_usage", false);
  }

  if (kind == ApiKind::Chat) {
    const bool lp = read_bool(o, "logprobs", false);
    const auto top = read_int(o, "top_logprobs", 0, 0, model.max_logprobs);
    if (field(o, "top_logprobs") && !lp) throw bad("top_logprobs", "'top_logprobs' needs 'logprobs': true");
    req.logprobs = lp ? static_cast<int>(top) : -1;
  } else {
    req.logprobs = static_cast<int>(read_int(o, "logprobs", -1, 0, model.max_logprobs));
  }
  req.user = read_string(o, "user", "");
  try {
    SamplingParams check = p;
    check.max_new_tokens = std::max(1, p.max_new_tokens);
    check.validate();
  } catch (const Error& e) {
    throw bad("", e.what());
  }
  return req;
}

int max_new_tokens_for(const GenerationRequest& req, int prompt_tokens, const ServedModel& model) {
  const int limit = model.max_model_len;
  const char* param = req.kind == ApiKind::Chat ? "messages" : "prompt";
  if (prompt_tokens <= 0) throw bad(param, "the prompt is empty");
  const int asked = std::max(req.params.max_new_tokens, 0);
  if (prompt_tokens >= limit || prompt_tokens + asked > limit)
    throw ApiError(400,
                   "This model's maximum context length is " + std::to_string(limit) + " tokens. However, you requested " +
                       std::to_string(prompt_tokens + asked) + " tokens (" + std::to_string(prompt_tokens) +
                       " in the prompt, " + std::to_string(asked) + " in the completion).",
                   "invalid_request_error", param, "context_length_exceeded");
  return asked > 0 ? asked : limit - prompt_tokens;
}

TokenizeRequest parse_tokenize_request(const std::string& body) {
  const json o = parse_object(body);
  TokenizeRequest r;
  if (field(o, "messages")) {
    r.messages = read_messages(o);
    r.add_generation_prompt = read_bool(o, "add_generation_prompt", true);
  } else if (field(o, "prompt")) {
    r.prompt = read_string(o, "prompt", "");
  } else {
    throw bad("prompt", "give 'prompt' (a string) or 'messages'");
  }
  return r;
}

std::vector<int> parse_detokenize_request(const std::string& body, int vocab_size) {
  const json o = parse_object(body);
  const json* t = field(o, "tokens");
  if (!t || !t->is_array()) throw bad("tokens", "'tokens' must be a list of token ids");
  std::vector<int> ids;
  for (const auto& x : *t) {
    if (!x.is_number_integer() || x.get<std::int64_t>() < 0 || x.get<std::int64_t>() >= vocab_size)
      throw bad("tokens", "'tokens' must hold token ids in [0, " + std::to_string(vocab_size) + ")");
    ids.push_back(x.get<int>());
  }
  return ids;
}

// --- Responses --------------------------------------------------------------------------

json Usage::to_json() const {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", cached_tokens}}}};
}

ResponseMeta new_response_meta(ApiKind kind, const std::string& model) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  char hex[25];
  std::snprintf(hex, sizeof hex, "%016llx%08llx", static_cast<unsigned long long>(rng()),
                static_cast<unsigned long long>(rng() & 0xffffffffULL));
  ResponseMeta m;
  m.kind = kind;
  m.id = std::string(kind == ApiKind::Chat ? "chatcmpl-" : "cmpl-") + hex;
  m.model = model;
  m.created = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  return m;
}

std::string token_bytes(const Tokenizer& tok, int id) { return tok.token_bytes(id); }

namespace {

json bytes_json(const std::string& s) {
  json a = json::array();
  for (unsigned char c : s) a.push_back(static_cast<int>(c));
  return a;
}

json logprobs_json(const ResponseMeta& meta, const std::vector<TokenLogprob>& lps, const Tokenizer* tok, int text_offset) {
  auto text_of = [&](int id) { return tok ? token_bytes(*tok, id) : std::to_string(id); };
  if (meta.kind == ApiKind::Chat) {
    json content = json::array();
    for (const auto& t : lps) {
      json top = json::array();
      for (const auto& [id, lp] : t.top) {
        const auto s = text_of(id);
        top.push_back({{"token", s}, {"logprob", lp}, {"bytes", bytes_json(s)}});
      }
      const auto s = text_of(t.id);
      content.push_back({{"token", s}, {"logprob", t.logprob}, {"bytes", bytes_json(s)}, {"top_logprobs", top}});
    }
    return {{"content", content}};
  }
  json tokens = json::array(), token_logprobs = json::array(), top_logprobs = json::array(), offsets = json::array();
  int offset = text_offset;
  for (const auto& t : lps) {
    const auto s = text_of(t.id);
    tokens.push_back(s);
    token_logprobs.push_back(t.logprob);
    json top = json::object();
    for (const auto& [id, lp] : t.top) top[text_of(id)] = lp;
    top_logprobs.push_back(top);
    offsets.push_back(offset);
    offset += static_cast<int>(s.size());
  }
  return {{"tokens", tokens}, {"token_logprobs", token_logprobs}, {"top_logprobs", top_logprobs}, {"text_offset", offsets}};
}

json finish_json(const std::string& reason) { return reason.empty() ? json(nullptr) : json(reason); }

json object_header(const ResponseMeta& meta, const char* object) {
  return {{"id", meta.id}, {"object", object}, {"created", meta.created}, {"model", meta.model}};
}

}  // namespace

json response_json(const ResponseMeta& meta, const std::vector<Choice>& choices, const Usage& usage, const Tokenizer* tok) {
  const bool chat = meta.kind == ApiKind::Chat;
  json out = object_header(meta, chat ? "chat.completion" : "text_completion");
  json cs = json::array();
  for (const auto& c : choices) {
    json lp = meta.with_logprobs ? logprobs_json(meta, c.logprobs, tok, 0) : json(nullptr);
    if (chat)
      cs.push_back({{"index", c.index},
                    {"message", {{"role", "assistant"}, {"content", c.text}}},
                    {"logprobs", lp},
                    {"finish_reason", finish_json(c.finish_reason)}});
    else
      cs.push_back({{"index", c.index}, {"text", c.text}, {"logprobs", lp}, {"finish_reason", finish_json(c.finish_reason)}});
  }
  out["choices"] = cs;
  out["usage"] = usage.to_json();
  return out;
}

json chunk_json(const ResponseMeta& meta, const Choice& delta, bool role_chunk, bool usage_field, const Tokenizer* tok) {
  const bool chat = meta.kind == ApiKind::Chat;
  json out = object_header(meta, chat ? "chat.completion.chunk" : "text_completion");
  json lp = meta.with_logprobs && !delta.logprobs.empty() ? logprobs_json(meta, delta.logprobs, tok, delta.text_offset) : json(nullptr);
  json choice;
  if (chat) {
    json d = json::object();
    if (role_chunk) d = {{"role", "assistant"}, {"content", ""}};
    if (!delta.text.empty()) d["content"] = delta.text;
    choice = {{"index", delta.index}, {"delta", d}, {"logprobs", lp}, {"finish_reason", finish_json(delta.finish_reason)}};
  } else {
    choice = {{"index", delta.index}, {"text", delta.text}, {"logprobs", lp}, {"finish_reason", finish_json(delta.finish_reason)}};
  }
  out["choices"] = json::array({choice});
  if (usage_field) out["usage"] = nullptr;
  return out;
}

json usage_chunk_json(const ResponseMeta& meta, const Usage& usage) {
  json out = object_header(meta, meta.kind == ApiKind::Chat ? "chat.completion.chunk" : "text_completion");
  out["choices"] = json::array();
  out["usage"] = usage.to_json();
  return out;
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

}  // namespace llmctl::serve
