#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>

#include "llmctl/io/model_dir.h"
#include "llmctl/io/safetensors.h"
#include "llmctl/util/error.h"
#include "llmctl/util/fs.h"
#include "test_helpers.h"

using namespace llmctl;

namespace {

// A raw safetensors file from a header string and a data blob.
void write_raw(const std::string& path, const std::string& header, const std::string& data, std::uint64_t n = 0) {
  if (n == 0) n = header.size();
  std::string bytes(8, '\0');
  std::memcpy(bytes.data(), &n, 8);
  write_file_atomic(path, bytes + header + data);
}

ModelConfig tiny() { return small_config(40, 16, 2, 8); }

}  // namespace

TEST(Safetensors, RoundTripsEveryDtype) {
  TempDir dir;
  torch::manual_seed(0);
  NamedTensors ts = {
      {"f32", torch::randn({3, 5})},
      {"f16", torch::randn({7}).to(torch::kFloat16)},
      {"bf16", torch::randn({2, 2, 3}).to(torch::kBFloat16)},
      {"f64", torch::randn({4}).to(torch::kFloat64)},
      {"i64", torch::randint(-1000, 1000, {6}, torch::kInt64)},
      {"i32", torch::randint(-1000, 1000, {6}, torch::kInt32)},
      {"i16", torch::randint(-1000, 1000, {6}, torch::kInt16)},
      {"i8", torch::randint(-100, 100, {6}, torch::kInt8)},
      {"u8", torch::randint(0, 255, {6}, torch::kUInt8)},
      {"bool", torch::randint(0, 2, {5}, torch::kInt64).to(torch::kBool)},
      {"scalar", torch::tensor(3.5f)},
      {"empty", torch::zeros({0, 4})},
      {"strided", torch::randn({4, 6}).t()},  // non-contiguous input is saved contiguous
  };
  std::string path = dir.path + "/t.safetensors";
  save_safetensors(path, ts, {{"format", "pt"}});
  SafetensorsFile f(path);
  EXPECT_EQ(f.entries().size(), ts.size());
  EXPECT_EQ(f.metadata().at("format"), "pt");
  for (const auto& [name, t] : ts) {
    auto got = f.tensor(name);
    EXPECT_EQ(got.scalar_type(), t.scalar_type()) << name;
    EXPECT_EQ(got.sizes(), t.sizes()) << name;
    EXPECT_TRUE(torch::equal(got, t)) << name;
  }
  // The data section starts 8-byte aligned.
  std::uint64_t n = 0;
  std::memcpy(&n, read_file(path).data(), 8);
  EXPECT_EQ(n % 8, 0u);
}

TEST(Safetensors, MalformedFilesGiveErrorsNamingTheProblem) {
  TempDir dir;
  std::string p = dir.path + "/bad.safetensors";
  write_file_atomic(p, "abc");
  EXPECT_ERROR_MENTIONS(SafetensorsFile{p}, "not a safetensors file");
  write_raw(p, "{}", "", 1000);
  EXPECT_ERROR_MENTIONS(SafetensorsFile{p}, "exceeds the file size");
  write_raw(p, "{not json", "");
  EXPECT_ERROR_MENTIONS(SafetensorsFile{p}, "not a JSON object");
  write_raw(p, R"({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}})", std::string(12, '\0'));
  EXPECT_ERROR_MENTIONS(SafetensorsFile{p}, "'w'");
  write_raw(p, R"({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}})", std::string(10, '\0'));
  EXPECT_ERROR_MENTIONS(SafetensorsFile{p}, "truncated");
  write_raw(p, R"({"w": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 1]}})", std::string(1, '\0'));
  EXPECT_ERROR_MENTIONS(SafetensorsFile{p}, "unsupported dtype");
  write_raw(p, R"({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", std::string(8, '\0'));
  EXPECT_ERROR_MENTIONS(SafetensorsFile{p}, "shape");
  write_raw(p,
            R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
            std::string(12, '\0'));
  EXPECT_ERROR_MENTIONS(SafetensorsFile{p}, "overlap");
  write_raw(p, R"({"w": {"dtype": "F32", "shape": [1]}})", std::string(4, '\0'));
  EXPECT_ERROR_MENTIONS(SafetensorsFile{p}, "data_offsets");
}

TEST(Safetensors, TruncatedRealFileIsDetected) {
  TempDir dir;
  std::string p = dir.path + "/m.safetensors";
  save_safetensors(p, {{"model.embed_tokens.weight", torch::randn({64, 32})}});
  auto bytes = read_file(p);
  write_file_atomic(p, bytes.substr(0, bytes.size() / 2));
  EXPECT_ERROR_MENTIONS(SafetensorsFile{p}, "model.embed_tokens.weight");
}

TEST(ModelDir, SaveLoadRoundTripInEveryDtype) {
  TempDir dir;
  torch::manual_seed(5);
  CausalLM m(tiny());
  auto ids = torch::randint(0, 40, {1, 6}, torch::kInt64);
  torch::NoGradGuard ng;
  auto ref = m->forward(ids);
  for (auto dt : {torch::kFloat32, torch::kFloat16, torch::kBFloat16}) {
    SaveOptions so;
    so.dtype = dt;
    save_model(m, dir.path + "/model", so);
    SafetensorsFile f(dir.path + "/model/model.safetensors");
    EXPECT_EQ(f.entry("model.norm.weight").dtype, safetensors_dtype_name(dt));
    EXPECT_FALSE(f.contains("lm_head.weight"));  // tied: omitted as in save_pretrained
    auto back = load_model(dir.path + "/model");
    double tol = dt == torch::kFloat32 ? 0 : 0.05;
    EXPECT_TRUE(torch::allclose(back->forward(ids), ref, tol, tol)) << dt;
    EXPECT_EQ(load_model_config(dir.path + "/model").torch_dtype, hf_dtype_name(dt));
  }
}

TEST(ModelDir, ShardedDirectoryLoads) {
  TempDir dir;
  torch::manual_seed(6);
  CausalLM m(tiny());
  auto tensors = model_tensors(m);
  NamedTensors a(tensors.begin(), tensors.begin() + tensors.size() / 2), b(tensors.begin() + tensors.size() / 2, tensors.end());
  save_safetensors(dir.path + "/model-00001-of-00002.safetensors", a);
  save_safetensors(dir.path + "/model-00002-of-00002.safetensors", b);
  nlohmann::json idx = {{"metadata", nlohmann::json::object()}, {"weight_map", nlohmann::json::object()}};
  for (auto& [n, t] : a) idx["weight_map"][n] = "model-00001-of-00002.safetensors";
  for (auto& [n, t] : b) idx["weight_map"][n] = "model-00002-of-00002.safetensors";
  write_file_atomic(dir.path + "/model.safetensors.index.json", idx.dump());
  write_file_atomic(dir.path + "/config.json", m->config().to_json().dump());
  auto back = load_model(dir.path);
  auto ids = torch::randint(0, 40, {1, 5}, torch::kInt64);
  torch::NoGradGuard ng;
  EXPECT_TRUE(torch::equal(back->forward(ids), m->forward(ids)));

  idx["weight_map"]["model.extra.weight"] = "model-00002-of-00002.safetensors";
  write_file_atomic(dir.path + "/model.safetensors.index.json", idx.dump());
  EXPECT_ERROR_MENTIONS(load_model(dir.path), "model.extra.weight");
  idx["weight_map"]["model.extra.weight"] = "../../etc/passwd";
  write_file_atomic(dir.path + "/model.safetensors.index.json", idx.dump());
  EXPECT_ERROR_MENTIONS(load_model(dir.path), "plain file name");
}

TEST(ModelDir, InconsistentWeightsAreNamed) {
  TempDir dir;
  CausalLM m(tiny());
  save_model(m, dir.path);
  auto tensors = model_tensors(m);
  // Wrong shape for one tensor.
  NamedTensors wrong = tensors;
  wrong[3].second = torch::zeros({3, 3});
  save_safetensors(dir.path + "/model.safetensors", wrong);
  EXPECT_ERROR_MENTIONS(load_model(dir.path), wrong[3].first);
  // Missing tensor.
  NamedTensors missing(tensors.begin() + 1, tensors.end());
  save_safetensors(dir.path + "/model.safetensors", missing);
  EXPECT_ERROR_MENTIONS(load_model(dir.path), tensors[0].first);
  // Unexpected tensor.
  NamedTensors extra = tensors;
  extra.emplace_back("model.layers.9.mlp.up_proj.weight", torch::zeros({1}));
  save_safetensors(dir.path + "/model.safetensors", extra);
  EXPECT_ERROR_MENTIONS(load_model(dir.path), "model.layers.9.mlp.up_proj.weight");
  // A tied lm_head copy is accepted.
  NamedTensors with_head = tensors;
  with_head.emplace_back("lm_head.weight", m->model->embed_tokens->weight);
  save_safetensors(dir.path + "/model.safetensors", with_head);
  EXPECT_NO_THROW(load_model(dir.path));
  EXPECT_ERROR_MENTIONS(load_model(dir.path + "/nope"), "nope");
}
