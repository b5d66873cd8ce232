#pragma once
// The engine behind a server: one thread owns the Engine and runs its step loop; HTTP
// threads submit requests and read their results through a RequestHandle. Admission is
// bounded (running + queued sequences), every request has a deadline, and a handle that is
// cancelled (client gone) frees its sequences and KV blocks on the loop's next turn.
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "llmctl/engine/engine.h"
#include "llmctl/serve/api.h"
#include "llmctl/serve/metrics.h"

namespace llmctl::serve {

// What happened to one sequence of a request since the last read.
struct SeqEvent {
  int index = 0;                       // which sequence (choice) of the request
  std::string text;                    // text delta
  std::vector<int> token_ids;          // tokens sampled
  std::vector<TokenLogprob> logprobs;  // one per token, when asked for
  bool finished = false;
  std::string finish_reason;           // "stop" | "length" | "cancelled" | "timeout" | "error"
  std::string error;                   // finish_reason "error": why
  int prompt_tokens = 0, cached_tokens = 0, completion_tokens = 0;  // when finished
};

class AsyncEngine;

// One HTTP request's sequences (n choices, or several prompts), as the HTTP thread sees them.
class RequestHandle {
 public:
  // Waits up to `timeout` for something new; returns it (empty on timeout).
  std::vector<SeqEvent> wait(std::chrono::milliseconds timeout);
  bool all_finished() const;
  int size() const { return static_cast<int>(seqs_.size()); }

 private:
  friend class AsyncEngine;
  struct Seq {
    std::vector<int> prompt;
    SamplingParams params;
    std::int64_t engine_id = 0;  // 0: not yet in the engine
    bool finished = false;
  };
  mutable std::mutex m_;
  std::condition_variable cv_;
  std::deque<SeqEvent> events_;
  std::vector<Seq> seqs_;
  int logprobs_ = -1;
  int num_finished_ = 0;
  bool cancel_requested_ = false;
  std::chrono::steady_clock::time_point deadline_;
};

// Thrown by submit when the queue is full (429) or the server is shutting down (503).
struct Overloaded : std::runtime_error {
  bool draining;
  Overloaded(const std::string& msg, bool draining_) : std::runtime_error(msg), draining(draining_) {}
};

struct AsyncEngineConfig {
  int max_queue = 64;               // sequences waiting beyond what runs in one batch
  double request_timeout_s = 600;   // a request still running after this is ended
  int stream_interval = 1;          // events per wake-up of a request's reader
};

class AsyncEngine {
 public:
  AsyncEngine(std::unique_ptr<Engine> engine, const AsyncEngineConfig& cfg);
  ~AsyncEngine();  // stops the loop (what is left is cancelled) and joins its thread

  // The step loop runs either on a thread of its own (start) or on the caller's (run,
  // until stop). `llmctl serve` gives it the main thread: the one that loaded the model
  // owns the OpenMP team, and a second team from another thread makes libgomp throttle
  // its spin-waits (more threads than cores), which slows every parallel region.
  void start();
  void run();
  void stop();

  // Queues one sequence per prompt, all or none; throws Overloaded.
  std::shared_ptr<RequestHandle> submit(const std::vector<std::vector<int>>& prompts,
                                        const std::vector<SamplingParams>& params, int logprobs);
  // Ends every sequence of the request (client gone); safe to call more than once.
  void cancel(const std::shared_ptr<RequestHandle>& h);

  // Shutdown: refuse new requests; wait for those in flight; cancel whatever is left.
  void begin_drain();
  bool wait_idle(std::chrono::milliseconds timeout);
  void cancel_all();

  int capacity() const;  // most sequences in flight at once
  const AsyncEngineConfig& config() const { return cfg_; }
  int in_flight() const;
  const Engine& engine() const { return *engine_; }  // immutable parts only (config, tokenizer)
  MetricsSnapshot metrics() const;

 private:
  // All below run on the loop thread.
  void loop();
  void add(const std::shared_ptr<RequestHandle>& h);
  std::vector<std::shared_ptr<RequestHandle>> active_handles() const;  // each request once
  void cancel_now(const std::shared_ptr<RequestHandle>& h, const std::string& reason);
  void expire_deadlines();
  void run_step();
  void publish();  // engine gauges for metrics()
  // The final event of a sequence; counts it in the metrics.
  SeqEvent finished_event(int index, const RequestOutput& out, const std::string& reason, const std::string& error);
  void finish_seq(const std::shared_ptr<RequestHandle>& h, int index, const RequestOutput& out,
                  const std::string& reason, const std::string& error = "");
  void deliver(RequestHandle& h, SeqEvent ev);

  std::unique_ptr<Engine> engine_;
  AsyncEngineConfig cfg_;

  mutable std::mutex m_;  // guards the fields below, down to metrics_
  std::condition_variable cv_;       // wakes the loop
  std::condition_variable idle_cv_;  // wakes wait_idle
  std::deque<std::shared_ptr<RequestHandle>> incoming_, cancels_;
  int in_flight_ = 0;  // sequences submitted and not finished
  bool draining_ = false, stop_ = false, cancel_all_ = false;
  Metrics metrics_;
  int running_ = 0, waiting_ = 0, free_blocks_ = 0;
  EngineStats stats_;

  // Loop thread only.
  struct Active {
    std::shared_ptr<RequestHandle> handle;
    int index;
  };
  std::map<std::int64_t, Active> active_;
  std::map<std::int64_t, std::vector<float>> step_logits_;  // rows of requests that want logprobs

  std::thread thread_;
};

}  // namespace llmctl::serve
