#pragma once
// Tokenizer training on sentencepiece from streamed minimind jsonl or plain text.
#include <cstdint>
#include <string>
#include <vector>

namespace llmctl {

struct TokenizerTrainOptions {
  std::vector<std::string> inputs;
  std::string out_dir;
  int vocab_size = 6400;
  std::string model_type = "bpe";  // bpe | unigram
  // Memory bound: at most this many sentences are kept (reservoir-sampled) for training.
  std::uint64_t max_sentences = 1'000'000;
  // Longer lines are cut into pieces of at most this many bytes (on UTF-8 boundaries).
  int max_sentence_bytes = 2048;
  double character_coverage = 0.9995;
  int threads = 0;  // 0: all cores
  int model_max_length = 32768;
  bool progress = true;
};

struct TokenizerTrainResult {
  std::uint64_t documents = 0, sentences = 0, malformed = 0, bytes = 0;
  int vocab_size = 0;
  double seconds = 0;
};

TokenizerTrainResult train_tokenizer(const TokenizerTrainOptions& opt);

// Writes tokenizer_config.json and special_tokens_map.json for a sentencepiece tokenizer
// with llmctl's special tokens into `dir` (atomically).
void write_tokenizer_metadata(const std::string& dir, int model_max_length);

}  // namespace llmctl
