#pragma once
// Paged attention for CUDA tensors, on the cache layout of llmctl/kernels/paged_attention.h.
// Plain pointers and no torch headers; src/kernels/paged_attention.cpp checks the
// arguments and does the torch side.
#include <cstdint>
#include <cuda_runtime.h>

#include "rmsnorm.cuh"  // DType

namespace llmctl::kernels::cuda {

// One layer's K or V cache: bits 0 = values in q's dtype [num_blocks, kv_heads, block_size,
// head_dim]; bits 8 / 4 = uint8 codes [..., head_dim * bits / 8] plus fp32 (scale, zero)
// per row in `params` [num_blocks, kv_heads, block_size, 2].
struct PagedKv {
  const void* data;
  const float* params;
  int bits;
};

struct PagedShape {
  int heads, kv_heads, head_dim, block_size;  // head_dim even, at most 256
  int num_seqs, max_blocks;                   // block_tables is [num_seqs, max_blocks]
  float scale;                                // softmax scale, 1 / sqrt(head_dim) for llmctl models
};

// out[t, h, :] for each of the `tokens` query rows of q ([tokens, heads, head_dim], `dtype`,
// contiguous, as out): causal softmax attention of query row t of sequence s (rows
// query_start[s] .. query_start[s+1]-1, at positions ending at context_lens[s]-1) over the
// cached positions 0..its own, in fp32. query_start, context_lens and block_tables are
// int32 device arrays that the caller has checked.
cudaError_t paged_attention(const void* q, void* out, std::int64_t tokens, PagedKv k, PagedKv v,
                            const std::int32_t* query_start, const std::int32_t* context_lens,
                            const std::int32_t* block_tables, PagedShape shape, DType dtype, cudaStream_t stream);

// Stores `tokens` rows x[t, h, :] (fp32, contiguous [tokens, kv_heads, head_dim]) into a
// quantised cache (bits 8 / 4) at slot_mapping[t] (int64 device array, slot = block *
// block_size + row, checked by the caller): codes and (scale, zero) of each (token, kv head)
// row, the scheme of kernels::quantize_kv. One launch for all rows.
cudaError_t write_quantized_kv(const float* x, const std::int64_t* slot_mapping, std::int64_t tokens, int kv_heads,
                               int head_dim, int block_size, int bits, std::uint8_t* codes, float* params,
                               cudaStream_t stream);

}  // namespace llmctl::kernels::cuda
