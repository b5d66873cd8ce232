#pragma once
// The KV cache's bookkeeping: which fixed-size blocks of the preallocated pool belong to
// which sequence. Blocks are reference-counted so sequences with a common prefix share
// them. Prefix caching: a full block is registered under a chained hash (the previous
// block's hash and the block's token ids), so a new request whose leading tokens match
// finds those blocks and skips their computation; a hit is confirmed against the stored
// ids, so a hash collision can never serve wrong K/V. Blocks nobody references stay
// cached until the pool needs them, evicted least recently freed first.
#include <cstdint>
#include <list>
#include <unordered_map>
#include <vector>

#include "llmctl/engine/sequence.h"

namespace llmctl {

class BlockManager {
 public:
  BlockManager(int num_blocks, int block_size, bool prefix_caching = true);

  int block_size() const { return block_size_; }
  int num_blocks() const { return static_cast<int>(blocks_.size()); }
  // Blocks that an allocation can take (free, or cached but unreferenced).
  int num_free_blocks() const { return static_cast<int>(free_.size()); }
  int blocks_for(int num_tokens) const { return (num_tokens + block_size_ - 1) / block_size_; }

  // For a sequence with no blocks yet: takes the cached blocks of its longest cached
  // prefix (whole blocks, and always leaving at least one token to compute so the model
  // produces logits), sets num_computed_tokens to the tokens they cover, returns it.
  int acquire_prefix(Sequence& seq);
  // Makes the block table cover num_computed_tokens + num_new tokens. False (and nothing
  // changed) when the pool lacks the blocks.
  bool allocate_slots(Sequence& seq, int num_new);
  // Registers the sequence's newly completed blocks (all of whose tokens are computed) in
  // the prefix cache.
  void cache_full_blocks(Sequence& seq);
  // Drops the sequence's references; its blocks stay cached for later prefix hits.
  void release(Sequence& seq);

  struct Stats {
    std::int64_t prefix_queries = 0, prefix_query_tokens = 0, prefix_hit_tokens = 0, evictions = 0;
  };
  const Stats& stats() const { return stats_; }
  // Consistency check for tests: every block is either referenced or in the free list
  // exactly once, and the hash table only points at blocks that carry that hash.
  bool check_invariants() const;

 private:
  struct Block {
    int ref_count = 0;
    bool hashed = false;
    std::uint64_t hash = 0;
    std::vector<int> tokens;  // the ids a hashed block was registered with
    std::list<int>::iterator free_pos;
    bool in_free = false;
  };
  int take_free_block();          // pops the least recently freed block, unregistering it
  void unfree(int id);            // a cached free block got a hit: out of the free list
  static std::uint64_t chain_hash(std::uint64_t prev, const int* ids, int n);

  int block_size_;
  bool prefix_caching_;
  std::vector<Block> blocks_;
  std::list<int> free_;  // front = evicted first
  std::unordered_map<std::uint64_t, int> cached_;  // hash -> block id
  Stats stats_;
};

}  // namespace llmctl
