#include "llmctl/engine/engine.h"

#include <algorithm>
#include <random>

#include "llmctl/convert/gguf_convert.h"
#include "llmctl/engine/block_manager.h"
#include "llmctl/engine/model_runner.h"
#include "llmctl/kernels/paged_attention.h"
#include "llmctl/engine/scheduler.h"
#include "llmctl/engine/text_stream.h"
#include "llmctl/io/model_dir.h"
#include "llmctl/tokenizer/tokenizer.h"
#include "llmctl/util/error.h"
#include "llmctl/util/log.h"
#include "llmctl/util/memory.h"

namespace llmctl {

struct Engine::Request {
  Sequence seq;
  std::unique_ptr<TextStream> text;  // absent for model dirs without a tokenizer
};

namespace {

double seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

}  // namespace

Engine::Engine(const std::string& model_dir, const EngineConfig& cfg) : cfg_(cfg) {
  keep_freed_memory_for_reuse();
  if (cfg_.block_size < 1 || cfg_.block_size > 1024) throw Error("--block-size must be in [1, 1024]");
  if (cfg_.max_num_seqs < 1) throw Error("--max-num-seqs must be at least 1");
  if (cfg_.max_num_batched_tokens < 1) throw Error("--max-num-batched-tokens must be at least 1");
  const torch::Device device(cfg_.device);
  const auto dtype = parse_dtype(cfg_.dtype);
  model_cfg_ = load_model_config(model_dir);
  if (cfg_.max_model_len <= 0)
    cfg_.max_model_len = static_cast<int>(std::min<std::int64_t>(model_cfg_.max_position_embeddings, 8192));
  if (is_gguf_file(model_dir) || Tokenizer::exists_in(model_dir)) {
    tokenizer_ = std::make_unique<Tokenizer>(load_tokenizer(model_dir));
    chat_template_ = ChatTemplate::from_template(tokenizer_->chat_template());
    if (!chat_template_.recognised)
      log::warn(model_dir + ": its chat_template is not a family llmctl knows (ChatML, Llama 2, Llama 3); "
                "conversations are rendered as ChatML");
  }
  for (auto id : model_cfg_.eos_token_ids) eos_ids_.push_back(static_cast<int>(id));
  if (tokenizer_ && tokenizer_->eos_id() >= 0 &&
      std::find(eos_ids_.begin(), eos_ids_.end(), tokenizer_->eos_id()) == eos_ids_.end())
    eos_ids_.push_back(tokenizer_->eos_id());

  const int kv_bits = kernels::kv_cache_bits(cfg_.kv_dtype);
  const auto block_bytes = ModelRunner::block_bytes(model_cfg_, cfg_.block_size, dtype, kv_bits);
  int num_blocks = cfg_.num_blocks;
  if (num_blocks <= 0) {
    if (!(cfg_.kv_cache_gb > 0)) throw Error("--kv-cache-gb must be positive (or give --num-blocks)");
    num_blocks = static_cast<int>(std::min<double>(cfg_.kv_cache_gb * (1ull << 30) / block_bytes, 1 << 24));
  }
  const int blocks_per_seq = (cfg_.max_model_len + cfg_.block_size - 1) / cfg_.block_size;
  if (num_blocks < 1) throw Error("the KV cache is too small for one block; raise --kv-cache-gb or --num-blocks");
  cfg_.num_blocks = num_blocks;
  if (num_blocks < blocks_per_seq) cfg_.max_model_len = num_blocks * cfg_.block_size;  // one request fits

  {
    auto model = load_model(model_dir, device, torch::kFloat32);
    // AWQ directories: the projections run on the int4 weights (the model holds them
    // dequantized, for everything else).
    AwqLinears awq;
    if (model_cfg_.quantization.enabled()) awq = load_awq_linears(model_dir);
    runner_ = std::make_unique<ModelRunner>(model, dtype, num_blocks, cfg_.block_size, cfg_.max_model_len,
                                            awq.empty() ? nullptr : &awq, kv_bits);
  }
  blocks_ = std::make_unique<BlockManager>(num_blocks, cfg_.block_size, cfg_.prefix_caching);
  scheduler_ = std::make_unique<Scheduler>(SchedulerConfig{cfg_.max_num_seqs, cfg_.max_num_batched_tokens}, *blocks_);
}

Engine::~Engine() = default;

std::int64_t Engine::add_request(const std::vector<int>& prompt, const SamplingParams& params) {
  params.validate();
  if (prompt.empty()) throw Error("the prompt is empty");
  const int vocab = static_cast<int>(model_cfg_.vocab_size);
  for (int id : prompt)
    if (id < 0 || id >= vocab) throw Error("prompt token id " + std::to_string(id) + " is outside the vocabulary");
  if (static_cast<int>(prompt.size()) >= cfg_.max_model_len)
    throw Error("the prompt has " + std::to_string(prompt.size()) + " tokens; the engine's limit is " +
                std::to_string(cfg_.max_model_len - 1) + " (--max-model-len)");
  if (!params.stop.empty() && !tokenizer_) throw Error("stop strings need a tokenizer in the model directory");

  auto r = std::make_unique<Request>();
  Sequence& s = r->seq;
  s.id = next_id_++;
  s.tokens = prompt;
  s.num_prompt_tokens = static_cast<int>(prompt.size());
  s.params = params;
  s.params.max_new_tokens = std::min(params.max_new_tokens, cfg_.max_model_len - s.num_prompt_tokens);
  s.history.set_prompt(prompt);
  s.rng.seed(params.seed ? *params.seed : std::random_device{}());
  s.arrival = Clock::now();
  if (tokenizer_) r->text = std::make_unique<TextStream>(*tokenizer_, params.stop);
  scheduler_->add(&s);
  const auto id = s.id;
  seqs_.emplace(id, std::move(r));
  return id;
}

RequestOutput Engine::finish(Request& r, const std::string& reason) {
  Sequence& s = r.seq;
  scheduler_->remove(&s);
  s.finish_reason = reason;
  RequestOutput out;
  out.id = s.id;
  out.finished = true;
  out.finish_reason = reason;
  if (r.text) out.text = r.text->finish();
  out.prompt_token_ids.assign(s.tokens.begin(), s.tokens.begin() + s.num_prompt_tokens);
  out.output_token_ids = s.output_tokens();
  out.num_cached_prompt_tokens = s.num_cached_prompt_tokens;
  const auto now = Clock::now();
  out.ttft_s = s.num_generated() > 0 ? seconds(s.arrival, s.first_token) : 0.0;
  out.total_s = seconds(s.arrival, now);
  return out;
}

RequestOutput Engine::cancel(std::int64_t id) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return {};
  auto out = finish(*it->second, "cancelled");
  seqs_.erase(it);
  return out;
}

bool Engine::has_unfinished() const { return !seqs_.empty(); }

std::vector<RequestOutput> Engine::step() {
  const auto t0 = Clock::now();
  auto batch = scheduler_->schedule();
  std::vector<RequestOutput> outs;
  if (batch.empty()) {
    // Cannot happen while add_request keeps every request within one cache's worth.
    if (!seqs_.empty()) throw Error("engine stalled: no request can be scheduled");
    return outs;
  }

  std::vector<bool> wants(batch.size());
  for (std::size_t i = 0; i < batch.size(); ++i)
    wants[i] = batch[i].seq->num_computed_tokens + batch[i].num_new == static_cast<int>(batch[i].seq->tokens.size());
  const auto tm = Clock::now();
  auto logits = runner_->forward(batch, wants);
  stats_.model_s += seconds(tm, Clock::now()) - runner_->last_prepare_s();

  const int vocab = static_cast<int>(logits.size(1));
  float* lp = logits.data_ptr<float>();
  std::int64_t row = 0;
  std::vector<std::int64_t> finished;
  const auto now = Clock::now();
  for (std::size_t i = 0; i < batch.size(); ++i) {
    Sequence& s = *batch[i].seq;
    s.num_computed_tokens += batch[i].num_new;
    blocks_->cache_full_blocks(s);
    if (!wants[i]) continue;
    float* row_logits = lp + row++ * vocab;
    if (observer_) observer_(s.id, row_logits, vocab);
    const int tok = sample_token(row_logits, vocab, s.params, s.history, s.rng);
    s.tokens.push_back(tok);
    s.history.add_output(tok);
    if (s.num_generated() == 1) s.first_token = now;

    Request& r = *seqs_.at(s.id);
    RequestOutput out;
    out.id = s.id;
    out.new_token_ids = {tok};
    std::string reason;
    const bool is_eos = !s.params.ignore_eos && std::find(eos_ids_.begin(), eos_ids_.end(), tok) != eos_ids_.end();
    const bool is_stop_id =
        std::find(s.params.stop_token_ids.begin(), s.params.stop_token_ids.end(), tok) != s.params.stop_token_ids.end();
    if (is_eos || is_stop_id) {
      reason = "stop";
    } else if (r.text) {
      auto d = r.text->push(tok);
      out.text = std::move(d.text);
      if (d.stopped) reason = "stop";
    }
    if (reason.empty() && s.num_generated() >= s.params.max_new_tokens) reason = "length";
    if (!reason.empty()) {
      auto fin = finish(r, reason);
      fin.new_token_ids = out.new_token_ids;
      fin.text = out.text + fin.text;
      out = std::move(fin);
      finished.push_back(s.id);
    }
    outs.push_back(std::move(out));
  }
  for (auto id : finished) seqs_.erase(id);
  ++stats_.steps;
  stats_.step_s += seconds(t0, Clock::now());
  return outs;
}

std::vector<RequestOutput> Engine::generate(const std::vector<std::vector<int>>& prompts, const SamplingParams& params) {
  std::map<std::int64_t, std::size_t> index;
  for (std::size_t i = 0; i < prompts.size(); ++i) index[add_request(prompts[i], params)] = i;
  std::vector<RequestOutput> results(prompts.size());
  std::vector<std::string> texts(prompts.size());
  std::size_t done = 0;
  while (done < prompts.size()) {
    for (auto& o : step()) {
      auto it = index.find(o.id);
      if (it == index.end()) continue;
      texts[it->second] += o.text;
      if (o.finished) {
        results[it->second] = std::move(o);
        results[it->second].text = texts[it->second];
        ++done;
      }
    }
  }
  return results;
}

EngineStats Engine::stats() const {
  EngineStats s = stats_;
  s.preemptions = scheduler_->num_preemptions();
  s.prefix_queries = blocks_->stats().prefix_queries;
  s.prefix_query_tokens = blocks_->stats().prefix_query_tokens;
  s.prefix_hit_tokens = blocks_->stats().prefix_hit_tokens;
  return s;
}

int Engine::num_running() const { return scheduler_->num_running(); }
int Engine::num_waiting() const { return scheduler_->num_waiting(); }
int Engine::num_free_blocks() const { return blocks_->num_free_blocks(); }
int Engine::num_blocks() const { return blocks_->num_blocks(); }

void Engine::touch_kv_cache() { runner_->touch_kv_cache(); }
bool Engine::check_block_invariants() const { return blocks_->check_invariants(); }

}  // namespace llmctl
