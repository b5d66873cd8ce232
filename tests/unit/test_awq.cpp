// AWQ int4: AutoAWQ gemm packing, the group quantizer, quantization_config, AWQ model
// directories (load, malformed), and the search's scale folding.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "llmctl/io/model_dir.h"
#include "llmctl/io/safetensors.h"
#include "llmctl/model/config.h"
#include "llmctl/quant/awq.h"
#include "llmctl/quant/awq_search.h"
#include "llmctl/util/error.h"
#include "llmctl/util/fs.h"
#include "test_helpers.h"

using namespace llmctl;
namespace fs = std::filesystem;

namespace {

std::uint32_t word(const torch::Tensor& packed, std::int64_t r, std::int64_t c) {
  return static_cast<std::uint32_t>(packed[r][c].item<std::int32_t>());
}

ModelConfig awq_test_config(bool mha = false, const std::string& type = "llama") {
  auto c = small_config(64, 64, 4, 16, type);  // q_dim 64, kv_dim 32, ffn 96
  if (mha) c.num_key_value_heads = c.num_attention_heads;
  return c;
}

// A random model saved as an AWQ directory (RTN, group 32) with a config.json.
std::string write_awq_dir(const std::string& root, const ModelConfig& cfg, int group = 32) {
  torch::manual_seed(1);
  CausalLM m(cfg);
  AwqOptions opt;
  opt.search = false;
  opt.group_size = group;
  opt.progress = false;
  auto res = awq_quantize_model(m, {}, opt);
  QuantizationConfig q;
  q.method = "awq";
  q.group_size = group;
  const std::string dir = root + "/awq";
  save_awq_model(m, res.linears, q, dir);
  return dir;
}

// Rewrites DIR/model.safetensors after `edit` changes its tensors.
void edit_tensors(const std::string& dir, const std::function<void(std::map<std::string, torch::Tensor>&)>& edit) {
  std::map<std::string, torch::Tensor> t;
  for (auto& [k, v] : load_safetensors_dir(dir)) t[k] = v.clone();
  edit(t);
  NamedTensors out(t.begin(), t.end());
  save_safetensors(dir + "/model.safetensors", out, {{"format", "pt"}});
}

void edit_config(const std::string& dir, const std::function<void(nlohmann::json&)>& edit) {
  auto j = nlohmann::json::parse(read_file(dir + "/config.json"));
  edit(j);
  write_file_atomic(dir + "/config.json", j.dump(2));
}

}  // namespace

TEST(AwqPack, PublishedCheckValues) {
  auto q = torch::tensor({0, 1, 2, 3, 4, 5, 6, 7, 15, 14, 13, 12, 11, 10, 9, 8}, torch::kInt32).view({1, 16});
  auto p = awq_pack(q);
  ASSERT_EQ(p.sizes(), (std::vector<std::int64_t>{1, 2}));
  EXPECT_EQ(p.scalar_type(), torch::kInt32);
  EXPECT_EQ(word(p, 0, 0), 0x75316420u);
  EXPECT_EQ(word(p, 0, 1), 0x8ACE9BDFu);
  EXPECT_TRUE(torch::equal(awq_unpack(p), q));
}

TEST(AwqPack, NibbleOrder) {
  // A single 1 in column c lands in the nibble i with kAwqOrder[i] == c.
  for (int c = 0; c < 8; ++c) {
    auto q = torch::zeros({1, 8}, torch::kInt32);
    q[0][c] = 1;
    int i = 0;
    while (kAwqOrder[i] != c) ++i;
    EXPECT_EQ(word(awq_pack(q), 0, 0), 1u << (4 * i)) << c;
  }
}

TEST(AwqPack, RoundTrip) {
  torch::manual_seed(0);
  auto q = torch::randint(0, 16, {37, 64}, torch::kInt64);
  auto p = awq_pack(q);
  ASSERT_EQ(p.sizes(), (std::vector<std::int64_t>{37, 8}));
  EXPECT_TRUE(torch::equal(awq_unpack(p), q.to(torch::kInt32)));
}

TEST(AwqPack, RejectsOddInputs) {
  EXPECT_ERROR_MENTIONS(awq_pack(torch::zeros({2, 12}, torch::kInt32)), "multiple of 8");
  EXPECT_ERROR_MENTIONS(awq_pack(torch::full({1, 8}, 16, torch::kInt32)), "0..15");
  EXPECT_ERROR_MENTIONS(awq_pack(torch::full({1, 8}, -1, torch::kInt32)), "0..15");
  EXPECT_ERROR_MENTIONS(awq_pack(torch::zeros({1, 8})), "integer");
  EXPECT_ERROR_MENTIONS(awq_pack(torch::zeros({8}, torch::kInt32)), "2-D");
  EXPECT_ERROR_MENTIONS(awq_unpack(torch::zeros({1, 8}, torch::kInt64)), "int32");
}

TEST(AwqQuantize, ErrorWithinHalfAStep) {
  torch::manual_seed(0);
  const int g = 32;
  auto w = torch::randn({24, 128}) * 0.05;
  w[3][7] = 0.9;  // an outlier widens its group's step
  auto t = awq_quantize(w, g);
  EXPECT_EQ(t.qweight.sizes(), (std::vector<std::int64_t>{128, 3}));
  EXPECT_EQ(t.qzeros.sizes(), (std::vector<std::int64_t>{4, 3}));
  EXPECT_EQ(t.scales.sizes(), (std::vector<std::int64_t>{4, 24}));
  EXPECT_EQ(t.scales.scalar_type(), torch::kFloat16);
  EXPECT_EQ(t.in_features(), 128);
  EXPECT_EQ(t.out_features(), 24);
  auto d = awq_dequantize(t);
  ASSERT_EQ(d.sizes(), w.sizes());
  auto step = t.scales.to(torch::kFloat32).t().repeat_interleave(g, 1);  // [N, K]
  // Half a step, plus the slack of the fp16-rounded scale over 15 steps.
  auto excess = (d - w).abs() - step * 0.5 * (1 + 16 * 1e-3);
  EXPECT_LE(excess.max().item<float>(), 1e-7f);
  // Zero points are in range, the dequantized grid holds the group's extremes.
  auto z = awq_unpack(t.qzeros);
  EXPECT_GE(z.min().item<int>(), 0);
  EXPECT_LE(z.max().item<int>(), 15);
  EXPECT_NEAR(d[3][7].item<float>(), 0.9f, step[3][7].item<float>() * 0.51f);
  // The fake quantizer is the same function.
  EXPECT_TRUE(torch::allclose(awq_fake_quantize(w, g), d, 0, 1e-7));
}

TEST(AwqQuantize, RoundsHalfToEvenWithTheFp16Scale) {
  // One group: min 0, max 15 -> scale 1, zero 0; 2.5 -> 2, 3.5 -> 4 (half to even).
  auto w = torch::zeros({8, 8});
  w[0][0] = 15;
  w[0][1] = 2.5;
  w[0][2] = 3.5;
  auto t = awq_quantize(w, 8);
  EXPECT_EQ(t.scales[0][0].item<float>(), 1.0f);
  auto q = awq_unpack(t.qweight);  // [K, N]
  EXPECT_EQ(q[0][0].item<int>(), 15);
  EXPECT_EQ(q[1][0].item<int>(), 2);
  EXPECT_EQ(q[2][0].item<int>(), 4);
  // A constant group keeps a tiny positive scale (max - min clamped to 1e-5).
  EXPECT_GT(t.scales[0][1].item<float>(), 0.0f);
}

TEST(AwqQuantize, RejectsOddInputs) {
  EXPECT_ERROR_MENTIONS(awq_quantize(torch::zeros({8, 100}), 32), "multiple of the group size");
  EXPECT_ERROR_MENTIONS(awq_quantize(torch::zeros({12, 64}), 32), "multiple of 8");
  EXPECT_ERROR_MENTIONS(awq_quantize(torch::zeros({64}), 32), "2-D");
  EXPECT_ERROR_MENTIONS(awq_quantize(torch::zeros({8, 64}, torch::kInt32), 32), "floating point");
  EXPECT_ERROR_MENTIONS(awq_quantize(torch::zeros({8, 64}), 0), "positive");
  auto w = torch::zeros({8, 64});
  w[1][1] = std::nanf("");
  EXPECT_ERROR_MENTIONS(awq_quantize(w, 32), "non-finite");
}

TEST(AwqQuantize, ConcatOut) {
  torch::manual_seed(0);
  auto a = torch::randn({16, 64}), b = torch::randn({8, 64});
  auto ta = awq_quantize(a, 32), tb = awq_quantize(b, 32);
  auto c = awq_concat_out({ta, tb});
  EXPECT_EQ(c.out_features(), 24);
  EXPECT_TRUE(torch::equal(awq_dequantize(c), torch::cat({awq_dequantize(ta), awq_dequantize(tb)}, 0)));
  EXPECT_ERROR_MENTIONS(awq_concat_out({ta, awq_quantize(torch::randn({8, 32}), 32)}), "in_features");
  EXPECT_ERROR_MENTIONS(awq_concat_out({}), "nothing");
  auto bad = ta;
  bad.scales = bad.scales.to(torch::kFloat32);
  EXPECT_ERROR_MENTIONS(awq_check(bad, "x"), "float16");
  bad = ta;
  bad.qzeros = bad.qzeros.narrow(0, 0, 1);
  EXPECT_ERROR_MENTIONS(awq_check(bad, "x"), "qzeros");
}

TEST(AwqConfig, ParsesAndWritesQuantizationConfig) {
  auto j = awq_test_config().to_json();
  EXPECT_FALSE(j.contains("quantization_config"));
  j["quantization_config"] = {{"quant_method", "awq"}, {"bits", 4},          {"group_size", 64},
                              {"zero_point", true},    {"version", "GEMM"}, {"modules_to_not_convert", nullptr}};
  auto c = ModelConfig::from_json(j);
  EXPECT_TRUE(c.quantization.enabled());
  EXPECT_EQ(c.quantization.group_size, 64);
  EXPECT_EQ(c.quantization.version, "gemm");
  auto back = c.to_json()["quantization_config"];
  EXPECT_EQ(back["quant_method"], "awq");
  EXPECT_EQ(back["bits"], 4);
  EXPECT_EQ(back["group_size"], 64);
  EXPECT_EQ(back["zero_point"], true);
  EXPECT_EQ(back["version"], "gemm");
  EXPECT_TRUE(back["modules_to_not_convert"].is_null());
  j["quantization_config"] = nullptr;
  EXPECT_FALSE(ModelConfig::from_json(j).quantization.enabled());
}

TEST(AwqConfig, UnsupportedFieldsAreNamed) {
  auto base = awq_test_config().to_json();
  auto with = [&](const char* key, nlohmann::json v) {
    auto j = base;
    j["quantization_config"] = {{"quant_method", "awq"}, {"bits", 4}, {"group_size", 128}, {"zero_point", true}, {"version", "gemm"}};
    j["quantization_config"][key] = v;
    return j;
  };
  EXPECT_ERROR_MENTIONS(ModelConfig::from_json(with("bits", 8)), "quantization_config.bits");
  EXPECT_ERROR_MENTIONS(ModelConfig::from_json(with("version", "gemv")), "quantization_config.version");
  EXPECT_ERROR_MENTIONS(ModelConfig::from_json(with("zero_point", false)), "quantization_config.zero_point");
  EXPECT_ERROR_MENTIONS(ModelConfig::from_json(with("quant_method", "gptq")), "quantization_config.quant_method");
  EXPECT_ERROR_MENTIONS(ModelConfig::from_json(with("group_size", 0)), "quantization_config.group_size");
  EXPECT_ERROR_MENTIONS(ModelConfig::from_json(with("bits", "four")), "quantization_config.bits");
  auto j = base;
  j["quantization_config"] = "awq";
  EXPECT_ERROR_MENTIONS(ModelConfig::from_json(j), "quantization_config");
}

TEST(AwqModelDir, LoadsDequantizedAndPacked) {
  TempDir tmp;
  const auto cfg = awq_test_config(false, "qwen2");  // q/k/v biases stay fp16 next to the packed tensors
  const auto dir = write_awq_dir(tmp.path, cfg);
  auto lc = load_model_config(dir);
  EXPECT_TRUE(lc.quantization.enabled());
  EXPECT_EQ(lc.torch_dtype, "float16");
  auto tensors = load_safetensors_dir(dir);
  EXPECT_FALSE(tensors.count("model.layers.0.self_attn.q_proj.weight"));
  EXPECT_EQ(tensors.at("model.layers.0.self_attn.q_proj.qweight").scalar_type(), torch::kInt32);
  EXPECT_EQ(tensors.at("model.layers.0.self_attn.q_proj.bias").scalar_type(), torch::kFloat16);
  EXPECT_EQ(tensors.at("model.embed_tokens.weight").scalar_type(), torch::kFloat16);
  EXPECT_EQ(tensors.at("model.norm.weight").scalar_type(), torch::kFloat16);

  auto lin = load_awq_linears(dir);
  EXPECT_EQ(lin.size(), 7u * cfg.num_hidden_layers);
  const auto& down = lin.at("model.layers.1.mlp.down_proj");
  EXPECT_EQ(down.in_features(), cfg.intermediate_size);
  EXPECT_EQ(down.out_features(), cfg.hidden_size);
  EXPECT_EQ(down.group_size, 32);

  auto m = load_model(dir);
  EXPECT_FALSE(m->config().quantization.enabled());
  auto* L = m->model->layers[1]->as<DecoderLayerImpl>();
  EXPECT_TRUE(torch::equal(L->mlp->down_proj->weight, awq_dequantize(down)));
  auto out = m->forward(torch::tensor({{1, 2, 3, 4}}, torch::kInt64));
  EXPECT_TRUE(torch::isfinite(out).all().item<bool>());
  // A quantized model is saved back as a plain fp model.
  save_model(m, tmp.path + "/fp");
  EXPECT_FALSE(load_model_config(tmp.path + "/fp").quantization.enabled());
}

TEST(AwqModelDir, MalformedDirectoriesAreNamed) {
  TempDir tmp;
  const auto cfg = awq_test_config();
  const std::string q = "model.layers.0.self_attn.q_proj";
  {
    const auto dir = write_awq_dir(tmp.path + "/a", cfg);
    edit_tensors(dir, [&](auto& t) { t.erase(q + ".qzeros"); });
    EXPECT_ERROR_MENTIONS(load_awq_linears(dir), q + ".qzeros");
    EXPECT_ERROR_MENTIONS(load_model(dir), "model.safetensors");
  }
  {
    const auto dir = write_awq_dir(tmp.path + "/b", cfg);
    edit_tensors(dir, [&](auto& t) { t[q + ".scales"] = t[q + ".scales"].narrow(0, 0, 1).clone(); });
    EXPECT_ERROR_MENTIONS(load_awq_linears(dir), q + ".scales");
    EXPECT_ERROR_MENTIONS(load_model(dir), "shape");
  }
  {
    const auto dir = write_awq_dir(tmp.path + "/c", cfg);
    edit_tensors(dir, [&](auto& t) { t[q + ".qweight"] = t[q + ".qweight"].narrow(1, 0, 4).clone(); });
    EXPECT_ERROR_MENTIONS(load_awq_linears(dir), q + ".qweight");
  }
  {
    const auto dir = write_awq_dir(tmp.path + "/d", cfg);
    edit_tensors(dir, [&](auto& t) { t[q + ".scales"] = t[q + ".scales"].to(torch::kFloat32); });
    EXPECT_ERROR_MENTIONS(load_awq_linears(dir), "dtype F32");
  }
  {
    const auto dir = write_awq_dir(tmp.path + "/e", cfg);
    edit_config(dir, [](auto& j) { j["quantization_config"]["bits"] = 8; });
    EXPECT_ERROR_MENTIONS(load_model(dir), "quantization_config.bits");
    EXPECT_ERROR_MENTIONS(load_awq_linears(dir), "config.json");
  }
  {
    const auto dir = write_awq_dir(tmp.path + "/f", cfg);
    edit_config(dir, [](auto& j) { j["quantization_config"]["version"] = "gemv"; });
    EXPECT_ERROR_MENTIONS(load_model(dir), "gemv");
  }
  {
    // The group size in config.json disagrees with the tensors.
    const auto dir = write_awq_dir(tmp.path + "/g", cfg);
    edit_config(dir, [](auto& j) { j["quantization_config"]["group_size"] = 16; });
    EXPECT_ERROR_MENTIONS(load_awq_linears(dir), "group size 16");
  }
  {
    // AWQ tensors without a quantization_config.
    const auto dir = write_awq_dir(tmp.path + "/h", cfg);
    edit_config(dir, [](auto& j) { j.erase("quantization_config"); });
    EXPECT_ERROR_MENTIONS(load_model(dir), "quantization_config");
    EXPECT_ERROR_MENTIONS(load_awq_linears(dir), "not an AWQ model");
  }
}

TEST(AwqSearch, GroupSizeMustDivideEveryLinear) {
  auto cfg = preset_config("nano");  // ffn 704 = 5.5 x 128
  EXPECT_ERROR_MENTIONS(awq_check_model(cfg, 128), "--group-size 64");
  awq_check_model(cfg, 64);
  awq_check_model(cfg, 32);
}

// With the clip search off, folding the scales must leave the fp model's function unchanged
// (the scales only move between a norm / linear and the next linears).
TEST(AwqSearch, FoldingScalesPreservesTheModel) {
  for (const auto& [mha, type] : std::vector<std::pair<bool, std::string>>{{false, "llama"}, {true, "llama"}, {true, "qwen2"}, {false, "qwen3"}}) {
    torch::NoGradGuard no_grad;
    torch::manual_seed(3);
    auto cfg = awq_test_config(mha, type);
    CausalLM m(cfg);
    // Non-trivial norms and biases, so a wrong fold shows.
    for (auto& p : m->named_parameters())
      if (p.key().find("norm") != std::string::npos || p.key().find("bias") != std::string::npos)
        p.value().uniform_(0.5, 1.5);
    auto ids = torch::randint(0, cfg.vocab_size, {3, 16}, torch::kInt64);
    auto before = m->forward(ids);
    AwqOptions opt;
    opt.group_size = 32;
    opt.clip = false;
    opt.n_grid = 4;
    opt.progress = false;
    auto res = awq_quantize_model(m, ids, opt);
    EXPECT_EQ(res.linears.size(), 14u);
    EXPECT_EQ(res.calib_tokens, 48);
    ASSERT_EQ(res.layers.size(), 2u);
    EXPECT_EQ(res.layers[0]["groups"].size(), mha ? 4u : 3u) << type;  // v -> o only without GQA
    auto after = m->forward(ids);
    EXPECT_TRUE(torch::allclose(before, after, 1e-3, 1e-4)) << type << " mha " << mha << " max diff "
                                                             << (before - after).abs().max().item<float>();
    for (const auto& l : res.layers)
      for (const auto& g : l["groups"]) EXPECT_LE(g["mse"].get<double>(), g["mse_rtn"].get<double>() * 1.5) << g.dump();
  }
}

TEST(AwqSearch, ClipAndSaveRoundTrip) {
  TempDir tmp;
  torch::manual_seed(5);
  auto cfg = awq_test_config();
  CausalLM m(cfg);
  auto ids = torch::randint(0, cfg.vocab_size, {2, 32}, torch::kInt64);
  AwqOptions opt;
  opt.group_size = 32;
  opt.n_grid = 5;
  opt.progress = false;
  auto res = awq_quantize_model(m, ids, opt);
  QuantizationConfig q;
  q.method = "awq";
  q.group_size = 32;
  save_awq_model(m, res.linears, q, tmp.path + "/awq");
  auto back = load_model(tmp.path + "/awq");
  auto* L = back->model->layers[0]->as<DecoderLayerImpl>();
  EXPECT_TRUE(torch::equal(L->self_attn->v_proj->weight, awq_dequantize(res.linears.at("model.layers.0.self_attn.v_proj"))));
  // Norms carry the folded scales (saved in fp16).
  auto* S = m->model->layers[0]->as<DecoderLayerImpl>();
  EXPECT_TRUE(torch::equal(L->input_layernorm->weight, S->input_layernorm->weight.to(torch::kFloat16).to(torch::kFloat32)));
}

TEST(AwqCalibration, BlocksFromTextAndConversations) {
  TempDir tmp;
  const auto& tok = demo_tokenizer();
  write_file_atomic(tmp.path + "/c.jsonl",
                    "{\"text\": \"In the beginning God created the heaven and the earth.\"}\n"
                    "not json\n"
                    "{\"conversations\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"hello there\"}]}\n"
                    "{\"other\": 1}\n");
  auto t = awq_calibration(tok, {tmp.path + "/c.jsonl"}, 128, 8);
  ASSERT_EQ(t.dim(), 2);
  EXPECT_EQ(t.size(1), 8);
  EXPECT_GE(t.size(0), 2);
  auto one = awq_calibration(tok, {tmp.path + "/c.jsonl"}, 1, 512);  // fewer tokens than a block
  EXPECT_EQ(one.size(0), 1);
  EXPECT_LT(one.size(1), 512);
  auto builtin = awq_calibration(tok, {}, 16, 64);
  EXPECT_EQ(builtin.size(1), 64);
  EXPECT_GE(builtin.size(0), 8);
  EXPECT_ERROR_MENTIONS(awq_calibration(tok, {tmp.path + "/missing.jsonl"}, 8, 8), "missing.jsonl");
  write_file_atomic(tmp.path + "/empty.jsonl", "{\"other\": 1}\n");
  EXPECT_ERROR_MENTIONS(awq_calibration(tok, {tmp.path + "/empty.jsonl"}, 8, 8), "empty.jsonl");
  EXPECT_ERROR_MENTIONS(awq_calibration(tok, {}, 0, 8), "--calib-samples");
}
