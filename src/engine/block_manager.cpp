#include "llmctl/engine/block_manager.h"

#include <algorithm>
#include <cstring>

#include "llmctl/util/error.h"

namespace llmctl {

BlockManager::BlockManager(int num_blocks, int block_size, bool prefix_caching)
    : block_size_(block_size), prefix_caching_(prefix_caching), blocks_(static_cast<std::size_t>(num_blocks)) {
  if (num_blocks <= 0 || block_size <= 0) throw Error("the KV cache needs at least one block of at least one token");
  for (int id = 0; id < num_blocks; ++id) {
    free_.push_back(id);
    blocks_[id].free_pos = std::prev(free_.end());
    blocks_[id].in_free = true;
  }
}

// splitmix64-style mixing of the previous hash and each id: cheap and well spread. A hit
// is still compared against the stored ids, so collisions cost a miss, never a wrong answer.
std::uint64_t BlockManager::chain_hash(std::uint64_t prev, const int* ids, int n) {
  auto mix = [](std::uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
  };
  std::uint64_t h = mix(prev ^ 0x5851F42D4C957F2Dull);
  for (int i = 0; i < n; ++i) h = mix(h ^ static_cast<std::uint32_t>(ids[i]));
  return h;
}

int BlockManager::take_free_block() {
  const int id = free_.front();
  free_.pop_front();
  Block& b = blocks_[id];
  b.in_free = false;
  if (b.hashed) {
    auto it = cached_.find(b.hash);
    if (it != cached_.end() && it->second == id) {
      cached_.erase(it);
      ++stats_.evictions;
    }
    b.hashed = false;
    b.tokens.clear();
  }
  b.ref_count = 1;
  return id;
}

void BlockManager::unfree(int id) {
  Block& b = blocks_[id];
  free_.erase(b.free_pos);
  b.in_free = false;
}

int BlockManager::acquire_prefix(Sequence& seq) {
  if (!prefix_caching_ || !seq.block_table.empty()) return seq.num_computed_tokens;
  ++stats_.prefix_queries;
  const int n_tokens = static_cast<int>(seq.tokens.size());
  stats_.prefix_query_tokens += n_tokens;
  const int max_blocks = (n_tokens - 1) / block_size_;  // leave >= 1 token to compute
  std::uint64_t prev = 0;
  for (int i = 0; i < max_blocks; ++i) {
    const int* ids = seq.tokens.data() + static_cast<std::size_t>(i) * block_size_;
    const std::uint64_t h = chain_hash(prev, ids, block_size_);
    auto it = cached_.find(h);
    if (it == cached_.end()) break;
    Block& b = blocks_[it->second];
    if (!std::equal(b.tokens.begin(), b.tokens.end(), ids)) break;
    if (b.in_free) unfree(it->second);
    ++b.ref_count;
    seq.block_table.push_back(it->second);
    prev = h;
  }
  seq.num_hashed_blocks = static_cast<int>(seq.block_table.size());
  seq.num_computed_tokens = seq.num_hashed_blocks * block_size_;
  stats_.prefix_hit_tokens += seq.num_computed_tokens;
  return seq.num_computed_tokens;
}

bool BlockManager::allocate_slots(Sequence& seq, int num_new) {
  const int need = blocks_for(seq.num_computed_tokens + num_new) - static_cast<int>(seq.block_table.size());
  if (need > num_free_blocks()) return false;
  for (int i = 0; i < need; ++i) seq.block_table.push_back(take_free_block());
  return true;
}

void BlockManager::cache_full_blocks(Sequence& seq) {
  if (!prefix_caching_) return;
  const int full = std::min<int>(seq.num_computed_tokens / block_size_, static_cast<int>(seq.block_table.size()));
  for (int i = seq.num_hashed_blocks; i < full; ++i) {
    const std::uint64_t prev = i > 0 ? blocks_[seq.block_table[i - 1]].hash : 0;
    const int* ids = seq.tokens.data() + static_cast<std::size_t>(i) * block_size_;
    Block& b = blocks_[seq.block_table[i]];
    b.hash = chain_hash(prev, ids, block_size_);
    b.hashed = true;
    b.tokens.assign(ids, ids + block_size_);
    cached_.emplace(b.hash, seq.block_table[i]);  // an equal block cached earlier stays the one found
  }
  seq.num_hashed_blocks = std::max(seq.num_hashed_blocks, full);
}

void BlockManager::release(Sequence& seq) {
  // Tail blocks first into the free list, so they are evicted before the shared heads.
  for (auto it = seq.block_table.rbegin(); it != seq.block_table.rend(); ++it) {
    Block& b = blocks_[*it];
    if (--b.ref_count == 0) {
      free_.push_back(*it);
      b.free_pos = std::prev(free_.end());
      b.in_free = true;
    }
  }
  seq.block_table.clear();
  seq.num_hashed_blocks = 0;
  seq.num_computed_tokens = 0;
}

bool BlockManager::check_invariants() const {
  std::vector<int> seen(blocks_.size(), 0);
  for (int id : free_) {
    if (blocks_[id].ref_count != 0 || !blocks_[id].in_free) return false;
    ++seen[id];
  }
  for (std::size_t id = 0; id < blocks_.size(); ++id) {
    const Block& b = blocks_[id];
    if (b.ref_count < 0 || (b.ref_count == 0) != (seen[id] == 1) || seen[id] > 1) return false;
  }
  for (const auto& [h, id] : cached_)
    if (!blocks_[id].hashed || blocks_[id].hash != h || blocks_[id].tokens.size() != static_cast<std::size_t>(block_size_))
      return false;
  return true;
}

}  // namespace llmctl
