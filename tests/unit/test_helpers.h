#pragma once
// Small helpers shared by the unit tests.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "llmctl/model/config.h"
#include "llmctl/tokenizer/tokenizer.h"
#include "llmctl/tokenizer/trainer.h"
#include "llmctl/util/fs.h"

struct TempDir {
  std::string path;
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "llmctl-test-XXXXXX").string();
    path = mkdtemp(tmpl.data()) ? tmpl : throw std::runtime_error("mkdtemp failed");
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

// For the env-gated timing tests: the best of 20 timed runs of fn() after one warm-up, in ms.
template <typename Fn>
double best_ms(Fn&& fn) {
  fn();
  double best = 1e30;
  for (int i = 0; i < 20; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    best = std::min(best, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

inline std::string source_dir() {
  const char* s = std::getenv("LLMCTL_SOURCE_DIR");
  return s ? s : ".";
}

// Expects `fn` to throw llmctl::Error whose message contains `needle`.
#define EXPECT_ERROR_MENTIONS(stmt, needle)                                          \
  do {                                                                               \
    try {                                                                            \
      stmt;                                                                          \
      ADD_FAILURE() << "expected llmctl::Error mentioning '" << (needle) << "'";    \
    } catch (const llmctl::Error& e) {                                               \
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what(); \
    }                                                                                \
  } while (0)

// A small Llama-family config; `type` picks the family's switches (qwen2: q/k/v bias,
// qwen3: q/k norm). GQA with 2 kv heads when heads allow.
inline llmctl::ModelConfig small_config(std::int64_t vocab, std::int64_t hidden, std::int64_t heads,
                                        std::int64_t head_dim, const std::string& type = "llama") {
  llmctl::ModelConfig c;
  c.model_type = type;
  c.vocab_size = vocab;
  c.hidden_size = hidden;
  c.intermediate_size = hidden * 3 / 2;
  c.num_hidden_layers = 2;
  c.num_attention_heads = heads;
  c.num_key_value_heads = heads % 2 == 0 ? 2 : 1;
  c.head_dim = head_dim;
  c.max_position_embeddings = 64;
  c.rope_theta = 10000.0;
  c.qk_norm = type == "qwen3";
  c.attention_bias = type == "qwen2";
  return c;
}

// Trains a tokenizer on the shipped held-out corpus into `out_dir` (quiet).
inline void train_demo_tokenizer(const std::string& out_dir, int vocab, const std::string& type = "bpe") {
  llmctl::TokenizerTrainOptions opt;
  opt.inputs = {source_dir() + "/dataset/demo/heldout.jsonl"};
  opt.out_dir = out_dir;
  opt.vocab_size = vocab;
  opt.model_type = type;
  opt.progress = false;
  llmctl::train_tokenizer(opt);
}

// One tokenizer (vocab 1200) trained once per test binary on the shipped corpus, shared
// by every suite that needs real text (training it takes seconds).
inline const llmctl::Tokenizer& demo_tokenizer() {
  static TempDir dir;
  static llmctl::Tokenizer tok = [] {
    train_demo_tokenizer(dir.path + "/tok", 1200);
    return llmctl::Tokenizer::load(dir.path + "/tok");
  }();
  return tok;
}
