// The OpenAI wire format without a socket: request validation (status, param), the
// context-length check, UTF-8 validation, response / chunk objects, and Prometheus text.
#include <gtest/gtest.h>

#include "llmctl/serve/api.h"
#include "llmctl/serve/metrics.h"

using namespace llmctl;
using namespace llmctl::serve;
using json = nlohmann::json;

namespace {

ServedModel test_model() {
  ServedModel m;
  m.name = "tiny";
  m.max_model_len = 128;
  m.vocab_size = 100;
  m.max_n = 4;
  return m;
}

// The ApiError a body raises (status and param), or fails the test.
ApiError error_of(ApiKind kind, const std::string& body) {
  try {
    parse_request(kind, body, test_model());
  } catch (const ApiError& e) {
    return e;
  }
  ADD_FAILURE() << "accepted: " << body;
  return ApiError(0, "");
}

}  // namespace

TEST(ServeApi, ParsesEveryChatField) {
  const auto r = parse_request(ApiKind::Chat, R"({
      "model": "tiny", "messages": [{"role": "developer", "content": "be brief"},
                                    {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]},
                                    {"role": "assistant", "content": null}],
      "max_completion_tokens": 7, "temperature": 0.5, "top_p": 0.9, "top_k": 5, "min_p": 0.1, "n": 2, "seed": -1,
      "stop": "END", "presence_penalty": 0.5, "frequency_penalty": -0.5, "repetition_penalty": 1.2,
      "logprobs": true, "top_logprobs": 3, "user": "u", "stream": true, "stream_options": {"include_usage": true},
      "metadata": {"ignored": "yes"}})",
                               test_model());
  ASSERT_EQ(r.messages.size(), 3u);
  EXPECT_EQ(r.messages[0].role, "system");
  EXPECT_EQ(r.messages[1].content, "hi there");
  EXPECT_EQ(r.messages[2].content, "");
  EXPECT_EQ(r.params.max_new_tokens, 7);
  EXPECT_FLOAT_EQ(r.params.temperature, 0.5f);
  EXPECT_EQ(r.params.top_k, 5);
  EXPECT_EQ(r.params.seed.value(), static_cast<std::uint64_t>(-1));
  EXPECT_EQ(r.params.stop, std::vector<std::string>{"END"});
  EXPECT_FLOAT_EQ(r.params.repetition_penalty, 1.2f);
  EXPECT_EQ(r.n, 2);
  EXPECT_EQ(r.logprobs, 3);
  EXPECT_TRUE(r.stream && r.include_usage);
  EXPECT_EQ(r.user, "u");
}

TEST(ServeApi, DefaultsFollowOpenAI) {
  const auto chat = parse_request(ApiKind::Chat, R"({"messages": [{"role": "user", "content": "x"}]})", test_model());
  EXPECT_EQ(chat.params.max_new_tokens, -1);  // fill the context
  EXPECT_FLOAT_EQ(chat.params.temperature, 1.0f);
  EXPECT_EQ(chat.logprobs, -1);
  const auto comp = parse_request(ApiKind::Completion, R"({"prompt": [[1, 2], [3]], "logprobs": 0})", test_model());
  EXPECT_EQ(comp.params.max_new_tokens, 16);
  EXPECT_EQ(comp.prompt_ids.size(), 2u);
  EXPECT_EQ(comp.logprobs, 0);
}

TEST(ServeApi, RejectsBadRequestsNamingTheField) {
  struct Case {
    ApiKind kind;
    const char* body;
    int status;
    const char* param;
  };
  const Case cases[] = {
      {ApiKind::Chat, "{", 400, ""},
      {ApiKind::Chat, "42", 400, ""},
      {ApiKind::Chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"\xff\"}]}", 400, ""},
      {ApiKind::Chat, R"({"model": "big", "messages": []})", 404, "model"},
      {ApiKind::Chat, R"({"messages": []})", 400, "messages"},
      {ApiKind::Chat, R"({"messages": [{"content": "x"}]})", 400, "messages[0].role"},
      {ApiKind::Chat, R"({"messages": [{"role": "user"}]})", 400, "messages[0].content"},
      {ApiKind::Chat, R"({"messages": [{"role": "tool", "content": "x"}]})", 400, "messages[0].role"},
      {ApiKind::Chat, R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0})", 400, "max_tokens"},
      {ApiKind::Chat, R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": 128})", 400, "max_tokens"},
      {ApiKind::Chat, R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": 1.5})", 400, "max_tokens"},
      {ApiKind::Chat, R"({"messages": [{"role": "user", "content": "x"}], "n": 5})", 400, "n"},
      {ApiKind::Chat, R"({"messages": [{"role": "user", "content": "x"}], "temperature": true})", 400, "temperature"},
      {ApiKind::Chat, R"({"messages": [{"role": "user", "content": "x"}], "top_p": 1.5})", 400, "top_p"},
      {ApiKind::Chat, R"({"messages": [{"role": "user", "content": "x"}], "stop": [1]})", 400, "stop"},
      {ApiKind::Chat, R"({"messages": [{"role": "user", "content": "x"}], "best_of": 3})", 400, "best_of"},
      {ApiKind::Chat, R"({"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"})", 400, "tool_choice"},
      {ApiKind::Completion, R"({"prompt": [1, "a"]})", 400, "prompt"},
      {ApiKind::Completion, R"({"prompt": [100]})", 400, "prompt"},
      {ApiKind::Completion, R"({"prompt": ["a", "b", "c"], "n": 2})", 400, "n"},
      {ApiKind::Completion, R"({"prompt": "a", "logprobs": 21})", 400, "logprobs"},
      {ApiKind::Completion, R"({"prompt": "a", "stop_token_ids": [100]})", 400, "stop_token_ids"},
  };
  for (const auto& c : cases) {
    const auto e = error_of(c.kind, c.body);
    EXPECT_EQ(e.status, c.status) << c.body << " -> " << e.what();
    EXPECT_EQ(e.param, c.param) << c.body << " -> " << e.what();
    const auto b = e.body();
    EXPECT_TRUE(b["error"].contains("message") && b["error"].contains("type") && b["error"].contains("code"));
  }
}

TEST(ServeApi, ContextLengthIsCheckedWithThePrompt) {
  auto r = parse_request(ApiKind::Chat, R"({"messages": [{"role": "user", "content": "x"}]})", test_model());
  EXPECT_EQ(max_new_tokens_for(r, 28, test_model()), 100);  // fills the context
  r.params.max_new_tokens = 100;
  EXPECT_EQ(max_new_tokens_for(r, 28, test_model()), 100);
  try {
    max_new_tokens_for(r, 29, test_model());
    ADD_FAILURE() << "129 tokens accepted in a 128-token context";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.code, "context_length_exceeded");
    EXPECT_NE(std::string(e.what()).find("129"), std::string::npos) << e.what();
  }
  r.params.max_new_tokens = -1;
  EXPECT_THROW(max_new_tokens_for(r, 128, test_model()), ApiError);
}

TEST(ServeApi, Utf8Validation) {
  EXPECT_TRUE(is_valid_utf8("plain ascii"));
  EXPECT_TRUE(is_valid_utf8("\xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x98\x80"));  // 你好 😀
  EXPECT_FALSE(is_valid_utf8("\xc0\x80"));              // overlong NUL
  EXPECT_FALSE(is_valid_utf8("\xed\xa0\x80"));          // surrogate
  EXPECT_FALSE(is_valid_utf8("\xf4\x90\x80\x80"));      // above U+10FFFF
  EXPECT_FALSE(is_valid_utf8("\xe4\xbd"));              // cut short
  EXPECT_FALSE(is_valid_utf8("\x80"));                  // stray continuation
}

TEST(ServeApi, ResponseAndChunkObjects) {
  ResponseMeta meta = new_response_meta(ApiKind::Chat, "tiny");
  EXPECT_EQ(meta.id.rfind("chatcmpl-", 0), 0u);
  Usage u{10, 3, 8};
  const auto whole = response_json(meta, {Choice{0, "hi", "stop", {}}}, u, nullptr);
  EXPECT_EQ(whole["object"], "chat.completion");
  EXPECT_EQ(whole["choices"][0]["message"]["content"], "hi");
  EXPECT_EQ(whole["choices"][0]["finish_reason"], "stop");
  EXPECT_TRUE(whole["choices"][0]["logprobs"].is_null());
  EXPECT_EQ(whole["usage"]["total_tokens"], 13);
  EXPECT_EQ(whole["usage"]["prompt_tokens_details"]["cached_tokens"], 8);

  const auto first = chunk_json(meta, Choice{1, "", "", {}}, true, true, nullptr);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  EXPECT_TRUE(first["choices"][0]["finish_reason"].is_null());
  EXPECT_TRUE(first.contains("usage") && first["usage"].is_null());
  const auto last = usage_chunk_json(meta, u);
  EXPECT_TRUE(last["choices"].empty());
  EXPECT_EQ(last["usage"]["completion_tokens"], 3);

  meta = new_response_meta(ApiKind::Completion, "tiny");
  meta.with_logprobs = true;
  TokenLogprob t{7, -0.5f, {{7, -0.5f}, {9, -1.5f}}};
  const auto comp = response_json(meta, {Choice{0, "ab", "length", {t}}}, u, nullptr);
  EXPECT_EQ(comp["object"], "text_completion");
  EXPECT_EQ(comp["choices"][0]["text"], "ab");
  EXPECT_EQ(comp["choices"][0]["logprobs"]["token_logprobs"][0], -0.5);
  EXPECT_EQ(comp["choices"][0]["logprobs"]["top_logprobs"][0].size(), 2u);
  // Half a UTF-8 character (a byte token) must not break serialisation.
  EXPECT_NO_THROW(dump(json{{"token", std::string("\xe4")}}));
}

TEST(ServeMetrics, HistogramIsCumulativeAndSnapshotRenders) {
  Histogram h({0.1, 1.0});
  for (double v : {0.05, 0.1, 0.5, 2.0}) h.observe(v);
  const auto text = h.render("x_seconds", "help");
  EXPECT_NE(text.find("x_seconds_bucket{le=\"0.1\"} 2\n"), std::string::npos) << text;
  EXPECT_NE(text.find("x_seconds_bucket{le=\"1\"} 3\n"), std::string::npos) << text;
  EXPECT_NE(text.find("x_seconds_bucket{le=\"+Inf\"} 4\n"), std::string::npos) << text;
  EXPECT_NE(text.find("x_seconds_count 4\n"), std::string::npos) << text;

  MetricsSnapshot s;
  s.blocks_total = 10;
  s.blocks_used = 5;
  s.prefix_query_tokens = 4;
  s.prefix_hit_tokens = 1;
  const auto all = s.render();
  EXPECT_NE(all.find("llmctl_kv_cache_usage_ratio 0.5\n"), std::string::npos);
  EXPECT_NE(all.find("llmctl_prefix_cache_hit_rate 0.25\n"), std::string::npos);
  EXPECT_NE(all.find("# TYPE llmctl_time_to_first_token_seconds histogram"), std::string::npos);
}
