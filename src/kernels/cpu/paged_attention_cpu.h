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

// out rows [row_begin, row_end) x the group's heads = causal softmax(q k^T * scale) v over
// cache positions 0 .. first_pos + (row_end - row_begin) - 1.
void paged_attention_item(const float* q, const float* k_cache, const float* v_cache, float* out,
                          const PagedAttentionShape& shape, const PagedAttentionItem& item,
                          std::vector<float>& scratch);
void paged_attention_item(const c10::BFloat16* q, const c10::BFloat16* k_cache, const c10::BFloat16* v_cache,
                          c10::BFloat16* out, const PagedAttentionShape& shape, const PagedAttentionItem& item,
                          std::vector<float>& scratch);

}  // namespace llmctl::kernels::cpu
