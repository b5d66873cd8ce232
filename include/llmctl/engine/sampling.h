#pragma once
// Per-request sampling parameters and the sampler that turns one row of logits into a
// token. Order of operations (vLLM's): repetition penalty (prompt + output tokens),
// presence / frequency penalties (output tokens), temperature (0 = greedy argmax after
// the penalties), top-k, top-p, min-p, then a draw from the request's own generator.
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

namespace llmctl {

struct SamplingParams {
  float temperature = 1.0f;         // 0 = greedy
  int top_k = 0;                    // 0 = off
  float top_p = 1.0f;               // 1 = off
  float min_p = 0.0f;               // 0 = off; keeps tokens with p >= min_p * p_max
  float repetition_penalty = 1.0f;  // 1 = off; logit > 0 ? logit / r : logit * r
  float presence_penalty = 0.0f;    // logit -= presence * (count > 0)
  float frequency_penalty = 0.0f;   // logit -= frequency * count
  std::optional<std::uint64_t> seed;  // same seed -> same text
  int max_new_tokens = 256;
  std::vector<std::string> stop;    // stop strings: never part of the output
  std::vector<int> stop_token_ids;  // extra ids that finish the request (not emitted as text)
  bool ignore_eos = false;          // benchmarks: run to max_new_tokens

  // Throws llmctl::Error naming the field when a value is out of range.
  void validate() const;
};

// Which tokens a request has seen, for the penalties: prompt ids (repetition only) and
// output ids with counts (all three).
struct TokenHistory {
  std::vector<int> prompt_unique;                // sorted, unique prompt ids
  std::unordered_map<int, int> output_counts;  // id -> times generated
  void set_prompt(const std::vector<int>& prompt);
  void add_output(int id) { ++output_counts[id]; }
};

// Samples one token from `logits` (float[vocab], modified in place). `rng` is the
// request's generator (seeded from params.seed when given).
int sample_token(float* logits, int vocab, const SamplingParams& params, const TokenHistory& history,
                 std::mt19937_64& rng);

// Probability each token would be drawn with (after penalties, temperature and the top-k /
// top-p / min-p filters): the distribution sample_token draws from, for tests and logprobs.
// Greedy returns a one-hot vector.
std::vector<float> sampling_distribution(const float* logits, int vocab, const SamplingParams& params,
                                         const TokenHistory& history);

}  // namespace llmctl
