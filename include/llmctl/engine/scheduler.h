#pragma once
// Continuous batching: every step picks which sequences run and how many of their tokens,
// under a token budget (chunked prefill) and a cap on running sequences. Running sequences
// go first, oldest first (decodes take one token, unfinished prefills continue with a
// chunk); then waiting requests are admitted while budget and blocks last. When the cache
// runs out of blocks, the newest running sequence is preempted: its blocks are released
// and it goes back to the front of the queue to be recomputed later (its finished blocks
// usually come back from the prefix cache). The oldest sequence can always progress, so
// there is no deadlock as long as one request fits in the cache (checked on admission).
#include <deque>
#include <vector>

#include "llmctl/engine/block_manager.h"

namespace llmctl {

struct SchedulerConfig {
  int max_num_seqs = 64;
  int max_num_batched_tokens = 2048;
};

struct ScheduledSeq {
  Sequence* seq;
  int num_new;  // tokens computed this step: seq->tokens[num_computed .. num_computed + num_new)
};

class Scheduler {
 public:
  Scheduler(const SchedulerConfig& cfg, BlockManager& blocks);

  void add(Sequence* seq);
  std::vector<ScheduledSeq> schedule();
  // Takes a sequence out (finished or cancelled) and releases its blocks.
  void remove(Sequence* seq);

  int num_waiting() const { return static_cast<int>(waiting_.size()); }
  int num_running() const { return static_cast<int>(running_.size()); }
  std::int64_t num_preemptions() const { return preemptions_; }

 private:
  void preempt(Sequence* seq);

  SchedulerConfig cfg_;
  BlockManager& blocks_;
  std::deque<Sequence*> waiting_;
  std::vector<Sequence*> running_;  // admission order
  std::int64_t preemptions_ = 0;
};

}  // namespace llmctl
