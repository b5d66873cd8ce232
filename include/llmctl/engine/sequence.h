#pragma once
// One request as the engine tracks it: its tokens (prompt, then what was generated), how
// many of them already have K/V in the cache, the cache blocks that hold them, and its
// sampling state. No torch here: the scheduler and block manager are plain C++.
#include <chrono>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "llmctl/engine/sampling.h"

namespace llmctl {

using Clock = std::chrono::steady_clock;

enum class SeqStatus { Waiting, Running, Finished };

struct Sequence {
  std::int64_t id = 0;
  std::vector<int> tokens;       // prompt + generated
  int num_prompt_tokens = 0;
  int num_computed_tokens = 0;   // leading tokens whose K/V is in the cache
  int num_cached_prompt_tokens = 0;  // of the prompt, found in the prefix cache
  std::vector<int> block_table;  // cache blocks holding tokens[0..], block_size each
  int num_hashed_blocks = 0;     // leading blocks registered in the prefix cache
  SeqStatus status = SeqStatus::Waiting;
  std::string finish_reason;     // "stop" | "length" | "cancelled"
  int num_preemptions = 0;

  SamplingParams params;
  TokenHistory history;
  std::mt19937_64 rng;

  Clock::time_point arrival, first_token;

  int num_generated() const { return static_cast<int>(tokens.size()) - num_prompt_tokens; }
  int num_uncomputed() const { return static_cast<int>(tokens.size()) - num_computed_tokens; }
  std::vector<int> output_tokens() const { return {tokens.begin() + num_prompt_tokens, tokens.end()}; }
};

}  // namespace llmctl
