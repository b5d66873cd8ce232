#pragma once
// The inference engine every serving path shares (chat, serve, bench, the agent): requests
// in, tokens and text deltas out, one step at a time. Each step the scheduler picks a
// batch (continuous batching, chunked prefill), the model runner computes it over the
// paged KV cache, and the sampler extends the sequences that reached their end.
// Not thread-safe: one thread drives add / step / cancel (servers wrap it in a loop).
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "llmctl/engine/sampling.h"
#include "llmctl/model/config.h"
#include "llmctl/tokenizer/chat_format.h"

namespace llmctl {

class Tokenizer;
class TextStream;
class BlockManager;
class Scheduler;
class ModelRunner;
struct Sequence;

struct EngineConfig {
  std::string device = "cpu";
  std::string dtype = "f32";     // model weights, activations and KV cache
  std::string kv_dtype = "auto"; // KV cache: "auto" (= dtype) | "int8" | "int4" (per token and head, asymmetric)
  int block_size = 16;           // tokens per KV block
  int num_blocks = 0;            // KV pool size; 0: from kv_cache_gb
  double kv_cache_gb = 1.0;
  int max_num_seqs = 64;
  int max_num_batched_tokens = 2048;
  int max_model_len = 0;         // 0: the model's max_position_embeddings, capped at 8192
  bool prefix_caching = true;
};

struct RequestOutput {
  std::int64_t id = 0;
  std::vector<int> new_token_ids;  // tokens sampled this step (0 or 1)
  std::string text;                // text delta (may be empty, even with a new token)
  bool finished = false;
  std::string finish_reason;       // when finished: "stop" | "length" | "cancelled"
  // Filled when finished:
  std::vector<int> prompt_token_ids, output_token_ids;
  int num_cached_prompt_tokens = 0;  // prompt tokens served from the prefix cache
  double ttft_s = 0, total_s = 0;    // arrival -> first token, arrival -> finish
};

struct EngineStats {
  std::int64_t steps = 0, preemptions = 0;
  std::int64_t prefix_queries = 0, prefix_query_tokens = 0, prefix_hit_tokens = 0;
  double model_s = 0, step_s = 0;  // time in the model's layers / in whole steps (the rest is overhead)
};

class Engine {
 public:
  Engine(const std::string& model_dir, const EngineConfig& cfg);
  ~Engine();

  // Queues a request; throws llmctl::Error when it can never run (empty, longer than the
  // model length or the whole cache). max_new_tokens is clipped to the model length.
  std::int64_t add_request(const std::vector<int>& prompt, const SamplingParams& params);
  // Runs one batch and reports what happened to each request touched.
  std::vector<RequestOutput> step();
  // Ends a request now and frees its blocks; returns its final output (empty id 0 if unknown).
  RequestOutput cancel(std::int64_t id);
  bool has_unfinished() const;
  int num_unfinished() const { return static_cast<int>(seqs_.size()); }
  int num_running() const;  // in the running batch (holding KV blocks)
  int num_waiting() const;  // queued or preempted

  // Convenience: runs the given prompts to completion together; results in input order.
  std::vector<RequestOutput> generate(const std::vector<std::vector<int>>& prompts, const SamplingParams& params);

  bool has_tokenizer() const { return tokenizer_ != nullptr; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const Tokenizer* tokenizer_ptr() const { return tokenizer_.get(); }
  const ModelConfig& model_config() const { return model_cfg_; }
  // How conversations become prompts for this model (from its tokenizer's chat_template).
  const ChatTemplate& chat_template() const { return chat_template_; }
  const EngineConfig& config() const { return cfg_; }
  EngineStats stats() const;
  int num_free_blocks() const;
  int num_blocks() const;
  // Faults in the whole KV pool now (ModelRunner::touch_kv_cache): benchmarks call it before
  // timing, so they measure a warmed-up engine.
  void touch_kv_cache();
  bool check_block_invariants() const;
  // Called with each request's logits row (fp32, before penalties and sampling) right
  // before a token is sampled from it: tests compare runs, servers derive logprobs.
  using LogitsObserver = std::function<void(std::int64_t id, const float* logits, int vocab)>;
  void set_logits_observer(LogitsObserver fn) { observer_ = std::move(fn); }

 private:
  struct Request;
  RequestOutput finish(Request& r, const std::string& reason);

  EngineConfig cfg_;
  ModelConfig model_cfg_;
  ChatTemplate chat_template_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<ModelRunner> runner_;
  std::unique_ptr<BlockManager> blocks_;
  std::unique_ptr<Scheduler> scheduler_;
  std::map<std::int64_t, std::unique_ptr<Request>> seqs_;
  std::vector<int> eos_ids_;
  std::int64_t next_id_ = 1;
  EngineStats stats_;
  LogitsObserver observer_;
};

}  // namespace llmctl
