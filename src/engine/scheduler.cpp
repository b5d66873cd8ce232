#include "llmctl/engine/scheduler.h"

#include <algorithm>

namespace llmctl {

Scheduler::Scheduler(const SchedulerConfig& cfg, BlockManager& blocks) : cfg_(cfg), blocks_(blocks) {}

void Scheduler::add(Sequence* seq) {
  seq->status = SeqStatus::Waiting;
  waiting_.push_back(seq);
}

void Scheduler::preempt(Sequence* seq) {
  blocks_.release(*seq);  // recomputed from scratch later (prefix cache permitting)
  seq->status = SeqStatus::Waiting;
  ++seq->num_preemptions;
  ++preemptions_;
  running_.erase(std::find(running_.begin(), running_.end(), seq));
  waiting_.push_front(seq);
}

std::vector<ScheduledSeq> Scheduler::schedule() {
  std::vector<ScheduledSeq> batch;
  int budget = cfg_.max_num_batched_tokens;
  bool preempted = false;

  for (std::size_t i = 0; i < running_.size() && budget > 0;) {
    Sequence* seq = running_[i];
    const int n = std::min(seq->num_uncomputed(), budget);
    bool scheduled = true;
    while (!blocks_.allocate_slots(*seq, n)) {
      Sequence* victim = running_.back();
      preempt(victim);
      preempted = true;
      if (victim == seq) {
        scheduled = false;
        break;
      }
    }
    if (!scheduled) break;  // seq was the newest: nothing after it remains
    batch.push_back({seq, n});
    budget -= n;
    ++i;
  }

  // New work only when nothing had to make room this step (it would be preempted again).
  while (!preempted && !waiting_.empty() && budget > 0 && static_cast<int>(running_.size()) < cfg_.max_num_seqs) {
    Sequence* seq = waiting_.front();
    blocks_.acquire_prefix(*seq);
    if (seq->num_prompt_tokens == static_cast<int>(seq->tokens.size()))
      seq->num_cached_prompt_tokens = seq->num_computed_tokens;
    const int n = std::min(seq->num_uncomputed(), budget);
    // Admitted only if the running sequences keep one free block each to grow into after it:
    // a sequence admitted into the last free blocks is preempted (its prefill wasted) as
    // soon as the others cross a block boundary.
    const int reserve = static_cast<int>(running_.size());
    if (!running_.empty() && blocks_.num_free_blocks() < blocks_.blocks_for(n) + reserve) {
      blocks_.release(*seq);
      break;
    }
    if (!blocks_.allocate_slots(*seq, n)) {
      blocks_.release(*seq);  // give back the prefix blocks until it can run
      break;
    }
    waiting_.pop_front();
    seq->status = SeqStatus::Running;
    running_.push_back(seq);
    batch.push_back({seq, n});
    budget -= n;
  }
  return batch;
}

void Scheduler::remove(Sequence* seq) {
  if (auto it = std::find(running_.begin(), running_.end(), seq); it != running_.end()) running_.erase(it);
  if (auto it = std::find(waiting_.begin(), waiting_.end(), seq); it != waiting_.end()) waiting_.erase(it);
  blocks_.release(*seq);
  seq->status = SeqStatus::Finished;
}

}  // namespace llmctl
