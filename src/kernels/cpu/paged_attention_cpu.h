#pragma once
// One work item of paged attention on the CPU (see kernels/paged_attention.h): a run of
// consecutive query tokens of one sequence against that sequence's cached keys/values,
// for the query heads of one kv head. The caller splits a batch into items and runs
// them on its threads; each thread passes its own scratch buffer.
#include <cstdint>
#include <vector>

#include <c10/util/BFloat16.h>

namespace llmctl::kernels::cpu {

struct PagedAttentionShape {
  std::int64_t heads, kv_heads, head_dim;  // q is [tokens, heads, head_dim]
  std::int64_t block_size;                 // caches are [blocks, kv_heads, block_size, head_dim]
  float scale;
};

struct PagedAttentionItem {
  std::int64_t row_begin, row_end;  // token rows of q / out
  std::int64_t first_pos;           // cache position of token row_begin; row r sits at first_pos + r - row_begin
  std::int64_t kv_head;
  const std::int32_t* block_table;  // the sequence's blocks, in position order
};

// K or V of one layer as the kernel reads it; row r = (block * kv_heads + kv_head) *
// block_size + slot holds head_dim values ...
template <typename T>
struct DenseRows {
  const T* data;  // ... at data + r * head_dim
};
// ... or, quantised (kernels::KvCache), head_dim * Bits / 8 bytes of codes at
// codes + r * head_dim * Bits / 8 and x = code * params[2r] + params[2r + 1].
template <int Bits>
struct QuantRows {
  const std::uint8_t* codes;
  const float* params;
};

// out rows [row_begin, row_end) x the group's heads = causal softmax(q k^T * scale) v over
// cache positions 0 .. first_pos + (row_end - row_begin) - 1. `next` (may be null): the item
// the calling thread runs after this one; a decode item prefetches its first K blocks.
// T: float or c10::BFloat16; Rows: DenseRows<T>, QuantRows<8> or QuantRows<4>.
template <typename T, typename Rows>
void paged_attention_item(const T* q, const Rows& k_cache, const Rows& v_cache, T* out,
                          const PagedAttentionShape& shape, const PagedAttentionItem& item,
                          const PagedAttentionItem* next, std::vector<float>& scratch);

}  // namespace llmctl::kernels::cpu
