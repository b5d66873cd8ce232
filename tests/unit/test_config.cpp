#include <gtest/gtest.h>

#include "llmctl/model/config.h"
#include "llmctl/model/transformer.h"
#include "llmctl/util/error.h"
#include "test_helpers.h"

using namespace llmctl;

// minimind's published parameter counts (README: 25.83M, 104.03M, 63.91M).
TEST(Presets, ParameterCountsMatchMinimind) {
  EXPECT_EQ(preset_config("minimind2-small").num_parameters(), 25'829'888);
  EXPECT_EQ(preset_config("minimind2").num_parameters(), 104'030'976);
  EXPECT_EQ(preset_config("minimind3").num_parameters(), 63'912'192);
  EXPECT_NEAR(preset_config("minimind2-small").num_parameters() / 1e6, 25.83, 0.005);
  EXPECT_NEAR(preset_config("minimind2").num_parameters() / 1e6, 104.03, 0.005);
  EXPECT_NEAR(preset_config("minimind3").num_parameters() / 1e6, 63.91, 0.005);
}

TEST(Presets, InstantiatedModelsHaveThePresetCounts) {
  for (const auto& name : {"nano", "minimind2-small", "minimind3"}) {
    auto cfg = preset_config(name);
    CausalLM m(cfg);
    EXPECT_EQ(count_parameters(m), cfg.num_parameters()) << name;
  }
  EXPECT_EQ(minimind_ffn_size(512), 1408);
  EXPECT_EQ(minimind_ffn_size(768), 2048);
}

TEST(Presets, UnknownNameListsKnownOnes) { EXPECT_ERROR_MENTIONS(preset_config("huge"), "minimind2-small"); }

TEST(ModelConfig, ParsesHfFamilies) {
  auto qwen2 = ModelConfig::from_json(nlohmann::json::parse(R"({"model_type": "qwen2", "vocab_size": 100,
      "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
      "intermediate_size": 128, "eos_token_id": [5, 6], "tie_word_embeddings": false})"));
  EXPECT_TRUE(qwen2.attention_bias);
  EXPECT_FALSE(qwen2.o_proj_bias);
  EXPECT_EQ(qwen2.head_dim, 16);
  EXPECT_EQ(qwen2.eos_token_ids, (std::vector<std::int64_t>{5, 6}));
  auto qwen3 = ModelConfig::from_json(nlohmann::json::parse(R"({"model_type": "qwen3", "vocab_size": 100,
      "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "head_dim": 32,
      "rope_parameters": {"rope_theta": 5000.0}})"));
  EXPECT_TRUE(qwen3.qk_norm);
  EXPECT_EQ(qwen3.q_dim(), 128);
  EXPECT_DOUBLE_EQ(qwen3.rope_theta, 5000.0);
  // Round trip through HF json keeps every shape.
  auto back = ModelConfig::from_json(qwen3.to_json());
  EXPECT_EQ(back.num_parameters(), qwen3.num_parameters());
  EXPECT_EQ(back.to_json(), qwen3.to_json());
}

TEST(ModelConfig, ErrorsNameTheField) {
  auto base = nlohmann::json::parse(R"({"model_type": "llama", "vocab_size": 100, "hidden_size": 64,
      "num_hidden_layers": 2, "num_attention_heads": 4})");
  auto j = base;
  j.erase("hidden_size");
  EXPECT_ERROR_MENTIONS(ModelConfig::from_json(j), "hidden_size");
  j = base;
  j["num_key_value_heads"] = 3;
  EXPECT_ERROR_MENTIONS(ModelConfig::from_json(j), "num_key_value_heads");
  j = base;
  j["vocab_size"] = "many";
  EXPECT_ERROR_MENTIONS(ModelConfig::from_json(j), "vocab_size");
  j = base;
  j["model_type"] = "gpt2";
  EXPECT_ERROR_MENTIONS(ModelConfig::from_json(j), "gpt2");
  j = base;
  j["eos_token_id"] = {2, "x"};
  EXPECT_ERROR_MENTIONS(ModelConfig::from_json(j), "eos_token_id");
  j = base;
  j["hidden_size"] = 1ll << 40;
  EXPECT_ERROR_MENTIONS(ModelConfig::from_json(j), "hidden_size");
  j = base;
  j["num_hidden_layers"] = 0;
  EXPECT_ERROR_MENTIONS(ModelConfig::from_json(j), "num_hidden_layers");
}

TEST(ModelConfig, GenerationConfigAlwaysHasEos) {
  auto cfg = preset_config("nano");
  EXPECT_EQ(cfg.generation_json()["eos_token_id"], 2);
  EXPECT_EQ(cfg.to_json()["architectures"][0], "LlamaForCausalLM");
}
