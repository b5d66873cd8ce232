#pragma once
// Training samples from minimind data, tokenized once into a binary cache.
//
//   pretrain: every document becomes [bos] text [eos]; the documents are concatenated and
//             packed into windows of seq_len + 1 tokens (input = w[:-1], target = w[1:]),
//             so no compute is spent on padding. Every target is trained on.
//   sft:      every conversation is rendered with ChatML and truncated on the right to
//             seq_len + 1 tokens; only the assistant's content and its <|im_end|> are
//             trained on (mask = 1), everything else is context (mask = 0).
//
// The cache (tokens + mask + sample offsets) is keyed by the data files (path, size,
// mtime), the tokenizer model bytes, the mode and seq_len, so later runs reuse it.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "llmctl/tokenizer/tokenizer.h"

namespace llmctl {

enum class SampleMode { Pretrain, Sft };

struct TokenizedData {
  std::vector<std::int32_t> tokens;
  std::vector<std::uint8_t> mask;      // 1 where the token is a training target
  std::vector<std::uint64_t> begin;    // sample i = tokens[begin[i], begin[i] + length[i])
  std::vector<std::uint32_t> length;   // (pretrain windows overlap by one token)
  std::uint64_t documents = 0, malformed = 0, truncated = 0;
  std::size_t size() const { return begin.size(); }
};

// Renders one conversation in the tokenizer's chat format (ChatML unless its chat_template
// is Llama 2 / Llama 3) as ids plus the loss mask (assistant content and the token that
// ends the turn, <|im_end|> in ChatML, are 1), truncated to max_tokens.
void render_sft_sample(const Tokenizer& tok, const std::vector<Message>& conv, std::size_t max_tokens,
                       std::vector<std::int32_t>& ids, std::vector<std::uint8_t>& mask);

// The ids that prompt a reply to `conv`: its messages encoded exactly as render_sft_sample
// encodes them (so inference sees training's token boundaries), then the assistant's
// header ("<|im_start|>assistant\n" in ChatML).
std::vector<int> render_generation_prompt(const Tokenizer& tok, const std::vector<Message>& conv);

// Tokenizes `files` (threads: 0 = all cores) or loads the matching cache from cache_dir.
TokenizedData load_or_tokenize(const std::vector<std::string>& files, const Tokenizer& tok, SampleMode mode,
                               std::int64_t seq_len, const std::string& cache_dir, int threads, bool progress);

// Seeded, resumable order over samples: epoch e visits a permutation drawn from
// (seed, e); position p in it is the p-th sample of that epoch.
std::vector<std::uint64_t> epoch_order(std::uint64_t n_samples, std::uint64_t seed, std::uint64_t epoch);

}  // namespace llmctl
