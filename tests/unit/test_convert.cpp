// The HF-compatibility pieces of `convert` that need no reference library: chat template
// recognition, generation_config defaults, rope_scaling, and config fields of other families.
// (Numerical parity with transformers is in tests/python/test_convert_hf.py.)
#include <gtest/gtest.h>

#include <cmath>

#include "llmctl/model/config.h"
#include "llmctl/model/transformer.h"
#include "llmctl/tokenizer/chat_format.h"
#include "llmctl/tokenizer/tokenizer.h"
#include "llmctl/util/error.h"
#include "test_helpers.h"

using namespace llmctl;

namespace {

ModelConfig parse(const std::string& extra) {
  return ModelConfig::from_json(nlohmann::json::parse(R"({"model_type": "llama", "vocab_size": 100,
      "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4)" + extra + "}"));
}

const std::vector<Message> kConv = {{"system", "Be brief."}, {"user", " Hi "}};

}  // namespace

TEST(ChatTemplate, RecognisesFamilies) {
  EXPECT_EQ(chat_format_of_template(kChatMLTemplate), ChatFormat::ChatML);
  EXPECT_EQ(chat_format_of_template("{{ '<|start_header_id|>' + role }}"), ChatFormat::Llama3);
  EXPECT_EQ(chat_format_of_template("{{ '[INST] ' + content }}"), ChatFormat::Llama2);
  EXPECT_EQ(chat_format_of_template(""), ChatFormat::ChatML);
  EXPECT_TRUE(ChatTemplate::from_template("").recognised);
  EXPECT_FALSE(ChatTemplate::from_template("{{ '<start_of_turn>' + role }}").recognised);  // Gemma: unknown
}

TEST(ChatTemplate, Llama3RendersHeadersTrimmedContentAndOneBos) {
  const auto t = ChatTemplate::from_template("<|start_header_id|>");
  EXPECT_EQ(t.render(kConv, true),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
  // A later turn of the same conversation: no second BOS.
  EXPECT_EQ(t.render({{"user", "More"}}, true, false).rfind("<|start_header_id|>user", 0), 0u);
  EXPECT_EQ(std::string(t.info().end_token), "<|eot_id|>");
}

TEST(ChatTemplate, DefaultSystemPromptIsALiteralSystemTurn) {
  const std::string qwen25 =
      "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + "
      "'<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a "
      "helpful assistant.<|im_end|>\\n' }}{%- endif %}";
  const auto t = ChatTemplate::from_template(qwen25);
  EXPECT_EQ(t.default_system, "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
  EXPECT_EQ(t.render({{"user", "Hi"}}, true),
            "<|im_start|>system\n" + t.default_system + "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\n");
  // A conversation with its own system turn keeps it; a later turn gets none.
  EXPECT_EQ(t.render(kConv, false).find("Qwen"), std::string::npos);
  EXPECT_EQ(t.render({{"user", "Hi"}}, false, false), "<|im_start|>user\nHi<|im_end|>\n");
  EXPECT_EQ(default_system_prompt(kChatMLTemplate), "");  // message content is not a literal
}

TEST(GenerationDefaults, ReadsSamplingKeysAndRejectsBadOnes) {
  auto g = GenerationDefaults::from_json(
      nlohmann::json::parse(R"({"do_sample": true, "temperature": 0.6, "top_p": 0.95, "top_k": 20,
                               "repetition_penalty": 1.05})"),
      "g.json");
  EXPECT_DOUBLE_EQ(g.temperature, 0.6);
  EXPECT_DOUBLE_EQ(g.top_p, 0.95);
  EXPECT_EQ(g.top_k, 20);
  EXPECT_DOUBLE_EQ(g.repetition_penalty, 1.05);
  auto greedy = GenerationDefaults::from_json(nlohmann::json::parse(R"({"do_sample": false, "temperature": 0.9})"), "g");
  EXPECT_EQ(greedy.effective_temperature(), 0.0);
  auto bare = GenerationDefaults::from_json(nlohmann::json::object(), "g");  // vLLM's defaults
  EXPECT_DOUBLE_EQ(bare.temperature, 1.0);
  EXPECT_DOUBLE_EQ(bare.top_p, 1.0);
  EXPECT_ERROR_MENTIONS(GenerationDefaults::from_json(nlohmann::json::parse(R"({"top_p": 0})"), "g.json"), "top_p");
  EXPECT_ERROR_MENTIONS(GenerationDefaults::from_json(nlohmann::json::parse(R"({"temperature": "hot"})"), "g.json"),
                        "temperature");
}

TEST(ModelConfig, RopeScalingTypes) {
  EXPECT_TRUE(parse("").rope_scaling.type.empty());
  auto l3 = parse(R"(, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})");
  EXPECT_EQ(l3.rope_scaling.type, "llama3");
  EXPECT_EQ(l3.to_json()["rope_scaling"]["original_max_position_embeddings"], 8192);
  // transformers v5 writes rope_parameters instead.
  auto v5 = parse(R"(, "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})");
  EXPECT_EQ(v5.rope_scaling.type, "linear");
  EXPECT_EQ(parse(R"(, "rope_parameters": {"rope_type": "default", "rope_theta": 5.0})").rope_scaling.type, "");
  EXPECT_ERROR_MENTIONS(parse(R"(, "rope_scaling": {"rope_type": "yarn", "factor": 4.0})"), "yarn");
  EXPECT_ERROR_MENTIONS(parse(R"(, "rope_scaling": {"rope_type": "linear", "factor": 0})"), "factor");
}

TEST(ModelConfig, RopeScalingChangesFrequenciesAsDefined) {
  const auto pos = torch::tensor({1}, torch::kInt64);
  const std::int64_t d = 16;
  auto [cos0, sin0] = rope_cos_sin(pos, d, 10000.0);
  RopeScaling linear{"linear", 4.0};
  auto [cos1, sin1] = rope_cos_sin(pos, d, 10000.0, linear);
  // Linear: angle(pos 1) / 4 for every frequency.
  EXPECT_TRUE(torch::allclose(torch::asin(sin1), torch::asin(sin0) / 4, 1e-5, 1e-6));
  RopeScaling l3{"llama3", 8.0, 1.0, 4.0, 64};
  auto [cos2, sin2] = rope_cos_sin(pos, d, 10000.0, l3);
  // llama3: the highest frequency (wavelength 2*pi < 64/4) is kept, the lowest (wavelength
  // far above 64) is divided by the factor.
  const auto a0 = torch::atan2(sin0, cos0), a2 = torch::atan2(sin2, cos2);
  EXPECT_NEAR(a2[0][0].item<double>(), a0[0][0].item<double>(), 1e-7);
  EXPECT_NEAR(a2[0][d / 2 - 1].item<double>(), a0[0][d / 2 - 1].item<double>() / 8, 1e-9);
}

TEST(ModelConfig, MistralSlidingWindowBoundsTheContext) {
  EXPECT_EQ(parse(R"(, "max_position_embeddings": 32768, "sliding_window": 4096)").max_position_embeddings, 4096);
  EXPECT_EQ(parse(R"(, "max_position_embeddings": 32768, "sliding_window": null)").max_position_embeddings, 32768);
  EXPECT_EQ(parse(R"(, "max_position_embeddings": 2048, "sliding_window": 4096)").max_position_embeddings, 2048);
  EXPECT_EQ(parse(R"(, "max_position_embeddings": 32768, "sliding_window": 4096, "use_sliding_window": false)")
                .max_position_embeddings,
            32768);
}
