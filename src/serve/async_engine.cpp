#include "llmctl/serve/async_engine.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "llmctl/util/error.h"
#include "llmctl/util/log.h"

namespace llmctl::serve {

using std::chrono::steady_clock;

std::vector<SeqEvent> RequestHandle::wait(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lk(m_);
  cv_.wait_for(lk, timeout, [&] { return !events_.empty(); });
  std::vector<SeqEvent> out(std::make_move_iterator(events_.begin()), std::make_move_iterator(events_.end()));
  events_.clear();
  return out;
}

bool RequestHandle::all_finished() const {
  std::lock_guard<std::mutex> lk(m_);
  return num_finished_ == static_cast<int>(seqs_.size());
}

AsyncEngine::AsyncEngine(std::unique_ptr<Engine> engine, const AsyncEngineConfig& cfg)
    : engine_(std::move(engine)), cfg_(cfg) {
  if (cfg_.max_queue < 0) throw Error("--max-queue must not be negative");
  if (!(cfg_.request_timeout_s > 0)) throw Error("--request-timeout must be positive");
  // Rows of requests that asked for logprobs are copied before the sampler changes them.
  engine_->set_logits_observer([this](std::int64_t id, const float* logits, int vocab) {
    auto it = active_.find(id);
    if (it != active_.end() && it->second.handle->logprobs_ >= 0) step_logits_[id].assign(logits, logits + vocab);
  });
  free_blocks_ = engine_->num_free_blocks();
}

void AsyncEngine::start() { thread_ = std::thread([this] { loop(); }); }

void AsyncEngine::run() { loop(); }

void AsyncEngine::stop() {
  {
    std::lock_guard<std::mutex> lk(m_);
    stop_ = true;
  }
  cv_.notify_all();
}

AsyncEngine::~AsyncEngine() {
  const auto st = engine_->stats();
  log::info(cat("engine: ", st.steps, " steps in ", st.step_s, " s (", st.model_s, " s in the model), ", st.preemptions,
                " preemptions"));
  stop();
  if (thread_.joinable()) thread_.join();
}

int AsyncEngine::capacity() const { return engine_->config().max_num_seqs + cfg_.max_queue; }

int AsyncEngine::in_flight() const {
  std::lock_guard<std::mutex> lk(m_);
  return in_flight_;
}

std::shared_ptr<RequestHandle> AsyncEngine::submit(const std::vector<std::vector<int>>& prompts,
                                                   const std::vector<SamplingParams>& params, int logprobs) {
  if (prompts.empty() || prompts.size() != params.size()) throw Error("submit: one SamplingParams per prompt");
  auto h = std::make_shared<RequestHandle>();
  for (std::size_t i = 0; i < prompts.size(); ++i) h->seqs_.push_back({prompts[i], params[i]});
  h->logprobs_ = logprobs;
  h->deadline_ = steady_clock::now() + std::chrono::duration_cast<steady_clock::duration>(
                                           std::chrono::duration<double>(cfg_.request_timeout_s));
  const int n = static_cast<int>(prompts.size());
  {
    std::lock_guard<std::mutex> lk(m_);
    if (draining_) throw Overloaded("the server is shutting down", true);
    if (in_flight_ + n > capacity())
      throw Overloaded("the server is busy (" + std::to_string(in_flight_) + " sequences in flight, at most " +
                           std::to_string(capacity()) + "); retry later",
                       false);
    in_flight_ += n;
    incoming_.push_back(h);
  }
  cv_.notify_all();
  return h;
}

void AsyncEngine::cancel(const std::shared_ptr<RequestHandle>& h) {
  {
    std::lock_guard<std::mutex> hl(h->m_);
    if (h->cancel_requested_ || h->num_finished_ == static_cast<int>(h->seqs_.size())) return;
    h->cancel_requested_ = true;
  }
  {
    std::lock_guard<std::mutex> lk(m_);
    cancels_.push_back(h);
  }
  cv_.notify_all();
}

void AsyncEngine::begin_drain() {
  std::lock_guard<std::mutex> lk(m_);
  draining_ = true;
}

bool AsyncEngine::wait_idle(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lk(m_);
  return idle_cv_.wait_for(lk, timeout, [&] { return in_flight_ == 0; });
}

void AsyncEngine::cancel_all() {
  {
    std::lock_guard<std::mutex> lk(m_);
    cancel_all_ = true;
  }
  cv_.notify_all();
}

MetricsSnapshot AsyncEngine::metrics() const {
  std::lock_guard<std::mutex> lk(m_);
  MetricsSnapshot s;
  s.m = metrics_;
  s.running = running_;
  s.waiting = waiting_ + static_cast<int>(incoming_.size());
  s.blocks_total = engine_->config().num_blocks;
  s.blocks_used = s.blocks_total - free_blocks_;
  s.prefix_query_tokens = stats_.prefix_query_tokens;
  s.prefix_hit_tokens = stats_.prefix_hit_tokens;
  s.preemptions = stats_.preemptions;
  return s;
}

// --- the loop thread ----------------------------------------------------------------------

void AsyncEngine::loop() {
  while (true) {
    std::deque<std::shared_ptr<RequestHandle>> incoming, cancels;
    bool cancel_everything = false;
    {
      std::unique_lock<std::mutex> lk(m_);
      cv_.wait(lk, [&] { return stop_ || cancel_all_ || !incoming_.empty() || !cancels_.empty() || !active_.empty(); });
      if (stop_) break;
      incoming.swap(incoming_);
      cancels.swap(cancels_);
      std::swap(cancel_everything, cancel_all_);
    }
    for (auto& h : incoming) add(h);
    for (auto& h : cancels) cancel_now(h, "cancelled");
    if (cancel_everything)
      for (auto& h : active_handles()) cancel_now(h, "cancelled");
    expire_deadlines();
    if (!active_.empty()) run_step();
    publish();
  }
  // Stopping: whatever is left ends now, so no HTTP thread waits forever.
  auto all = active_handles();
  {
    std::lock_guard<std::mutex> lk(m_);
    for (auto& h : incoming_) all.push_back(h);
    incoming_.clear();
  }
  for (auto& h : all) cancel_now(h, "cancelled");
}

std::vector<std::shared_ptr<RequestHandle>> AsyncEngine::active_handles() const {
  std::vector<std::shared_ptr<RequestHandle>> out;
  for (const auto& [id, a] : active_)
    if (out.empty() || out.back() != a.handle) out.push_back(a.handle);
  return out;
}

void AsyncEngine::add(const std::shared_ptr<RequestHandle>& h) {
  bool cancelled;
  {
    std::lock_guard<std::mutex> hl(h->m_);
    cancelled = h->cancel_requested_;
  }
  if (cancelled) {
    cancel_now(h, "cancelled");
    return;
  }
  for (int i = 0; i < h->size(); ++i) {
    auto& s = h->seqs_[i];
    try {
      s.engine_id = engine_->add_request(s.prompt, s.params);
      active_[s.engine_id] = {h, i};
    } catch (const std::exception& e) {
      finish_seq(h, i, {}, "error", e.what());
    }
  }
}

// Ends every unfinished sequence of the request: those in the engine are cancelled there
// (freeing their blocks), those never added just end.
void AsyncEngine::cancel_now(const std::shared_ptr<RequestHandle>& h, const std::string& reason) {
  for (int i = 0; i < h->size(); ++i) {
    auto& s = h->seqs_[i];
    if (s.finished) continue;  // written by this thread only: no lock needed to read it
    if (active_.erase(s.engine_id)) {
      step_logits_.erase(s.engine_id);
      finish_seq(h, i, engine_->cancel(s.engine_id), reason);
    } else {
      finish_seq(h, i, {}, reason);
    }
  }
}

void AsyncEngine::expire_deadlines() {
  const auto now = steady_clock::now();
  for (auto& h : active_handles())
    if (now > h->deadline_) cancel_now(h, "timeout");
}

namespace {

// Log-probabilities of the model's own distribution (before penalties and filters), as
// OpenAI reports them: the sampled token's and the k most likely.
TokenLogprob logprob_of(const std::vector<float>& row, int token, int k) {
  const float mx = *std::max_element(row.begin(), row.end());
  double sum = 0;
  for (float x : row) sum += std::exp(static_cast<double>(x - mx));
  const float lse = mx + static_cast<float>(std::log(sum));
  TokenLogprob t;
  t.id = token;
  t.logprob = row[static_cast<std::size_t>(token)] - lse;
  if (k > 0) {
    std::vector<int> idx(row.size());
    std::iota(idx.begin(), idx.end(), 0);
    k = std::min<int>(k, static_cast<int>(row.size()));
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int a, int b) { return row[a] > row[b]; });
    for (int i = 0; i < k; ++i) t.top.emplace_back(idx[i], row[static_cast<std::size_t>(idx[i])] - lse);
  }
  return t;
}

}  // namespace

void AsyncEngine::run_step() {
  std::vector<RequestOutput> outs;
  try {
    outs = engine_->step();
  } catch (const std::exception& e) {
    // Should not happen; if it does, every request in flight fails cleanly instead of
    // hanging, and the server keeps serving new ones.
    log::error(std::string("engine step failed: ") + e.what());
    for (auto& h : active_handles()) cancel_now(h, "error");
    step_logits_.clear();
    return;
  }
  std::int64_t generated = 0;
  for (auto& o : outs) {
    auto it = active_.find(o.id);
    if (it == active_.end()) continue;
    auto h = it->second.handle;
    const int index = it->second.index;
    generated += static_cast<std::int64_t>(o.new_token_ids.size());
    std::vector<TokenLogprob> lps;
    if (h->logprobs_ >= 0) {
      auto row = step_logits_.find(o.id);
      if (row != step_logits_.end())
        for (int tok : o.new_token_ids) lps.push_back(logprob_of(row->second, tok, h->logprobs_));
    }
    if (o.finished) {
      active_.erase(it);
      auto ev = finished_event(index, o, o.finish_reason, "");
      ev.token_ids = o.new_token_ids;
      ev.logprobs = std::move(lps);
      deliver(*h, std::move(ev));
    } else {
      SeqEvent ev;
      ev.index = index;
      ev.text = std::move(o.text);
      ev.token_ids = std::move(o.new_token_ids);
      ev.logprobs = std::move(lps);
      deliver(*h, std::move(ev));
    }
  }
  step_logits_.clear();
  std::lock_guard<std::mutex> lk(m_);
  metrics_.generation_tokens += generated;
}

SeqEvent AsyncEngine::finished_event(int index, const RequestOutput& out, const std::string& reason,
                                     const std::string& error) {
  SeqEvent ev;
  ev.index = index;
  ev.text = out.text;
  ev.finished = true;
  ev.finish_reason = reason;
  ev.error = error;
  ev.prompt_tokens = static_cast<int>(out.prompt_token_ids.size());
  ev.cached_tokens = out.num_cached_prompt_tokens;
  ev.completion_tokens = static_cast<int>(out.output_token_ids.size());
  std::lock_guard<std::mutex> lk(m_);
  ++metrics_.finished[reason];
  metrics_.prompt_tokens += ev.prompt_tokens;
  if (ev.completion_tokens > 0) {
    metrics_.ttft.observe(out.ttft_s);
    metrics_.e2e.observe(out.total_s);
  }
  if (ev.completion_tokens > 1) metrics_.tpot.observe((out.total_s - out.ttft_s) / (ev.completion_tokens - 1));
  return ev;
}

void AsyncEngine::finish_seq(const std::shared_ptr<RequestHandle>& h, int index, const RequestOutput& out,
                             const std::string& reason, const std::string& error) {
  deliver(*h, finished_event(index, out, reason, error));
}

void AsyncEngine::deliver(RequestHandle& h, SeqEvent ev) {
  const bool finished = ev.finished;
  bool wake;
  {
    std::lock_guard<std::mutex> hl(h.m_);
    if (finished) {
      h.seqs_[static_cast<std::size_t>(ev.index)].finished = true;
      ++h.num_finished_;
    }
    h.events_.push_back(std::move(ev));
    // Waking the reader for every token costs context switches that stall the model's
    // threads on a small machine; --stream-interval N wakes it every N events (and at the end).
    wake = finished || static_cast<int>(h.events_.size()) >= cfg_.stream_interval;
  }
  if (wake) h.cv_.notify_all();
  if (finished) {
    std::lock_guard<std::mutex> lk(m_);
    --in_flight_;
    if (in_flight_ == 0) idle_cv_.notify_all();
  }
}

void AsyncEngine::publish() {
  const int running = engine_->num_running(), waiting = engine_->num_waiting(), free_blocks = engine_->num_free_blocks();
  const auto stats = engine_->stats();
  std::lock_guard<std::mutex> lk(m_);
  running_ = running;
  waiting_ = waiting;
  free_blocks_ = free_blocks;
  stats_ = stats;
}

}  // namespace llmctl::serve
