#pragma once
// Model evaluation: perplexity over a corpus and per-token scores of one text. This is
// how later stages (quantize, convert) prove they preserve the model.
#include <torch/torch.h>

#include <string>
#include <vector>

#include "llmctl/engine/engine.h"
#include "llmctl/model/transformer.h"
#include "llmctl/tokenizer/tokenizer.h"

namespace llmctl {

struct PerplexityOptions {
  std::int64_t seq_len = 512;     // window length (tokens)
  std::int64_t batch_size = 8;    // windows per forward pass
  std::int64_t max_tokens = 0;    // stop after this many tokens (0: all)
  bool progress = true;
};

struct PerplexityResult {
  double nll_sum = 0;            // sum of -log p over predicted tokens
  std::int64_t predicted = 0;    // tokens scored
  std::int64_t windows = 0;
  std::int64_t documents = 0;
  std::int64_t malformed = 0;
  double seconds = 0;
  double mean_nll() const { return predicted ? nll_sum / predicted : 0; }
  double perplexity() const;
};

// Documents are tokenized as [bos] + text + [eos] (minimind's pretrain layout),
// concatenated into one stream and cut into non-overlapping windows of seq_len tokens;
// within each window every token after the first is predicted. The stream is read and
// scored incrementally, so files of any size work in bounded memory.
PerplexityResult perplexity(CausalLM& model, const Tokenizer& tok, const std::vector<std::string>& files,
                            const PerplexityOptions& opt);

struct TokenScores {
  std::vector<int> ids;
  std::vector<std::string> pieces;
  std::vector<double> logprobs;    // logprobs[i] = log p(ids[i] | ids[<i]); NaN for i = 0
  std::vector<int> argmax;         // argmax[i] = most likely token after ids[..i]
};

// Scores `text` (special tokens parsed; no bos added). Text longer than the model's
// context is scored in windows of max_position_embeddings.
TokenScores score_text(CausalLM& model, const Tokenizer& tok, const std::string& text);

// Scores a token sequence with one forward pass.
TokenScores score_ids(CausalLM& model, const std::vector<int>& ids);

struct ExactMatchItem {
  std::string prompt, expected, answer;
  bool correct = false;
};

struct ExactMatchResult {
  std::int64_t items = 0, correct = 0, malformed = 0;
  std::vector<ExactMatchItem> results;
  double seconds = 0;
  double score() const { return items ? static_cast<double>(correct) / items : 0; }
};

// For each {"conversations": [...]} record whose last message is the assistant's: the
// model answers the conversation before it (ChatML, greedy, up to EOS or max_new_tokens)
// and the answer must equal the reference, leading and trailing whitespace aside.
// `max_items` 0: all records. The questions run batched through the inference engine
// (which needs a tokenizer in its model directory); results keep the file order.
ExactMatchResult exact_match(Engine& engine, const std::vector<std::string>& files, std::int64_t max_items,
                             int max_new_tokens, bool progress);

}  // namespace llmctl
