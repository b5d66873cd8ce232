#pragma once
// Attention of a mixed batch of query tokens (prefill chunks and decode steps of several
// sequences, flattened) over a paged KV cache, as the engine runs it.
//
// KV cache layout, per layer and per K / V:  [num_blocks, kv_heads, block_size, head_dim].
// A block holds `block_size` consecutive positions of one sequence; within a block each kv
// head's keys are contiguous, so one (sequence, kv head) walks contiguous memory. The
// layout leaves room for quantised caches (int8/int4 plus per-(token, head) scale and zero
// tensors of shape [num_blocks, kv_heads, block_size]) without changing the engine.
//
// Sequence s owns query rows query_start[s] .. query_start[s+1]-1 of q. Its cache holds
// context_lens[s] positions (the new tokens included, already written with
// write_kv_cache); the n_s = query_start[s+1]-query_start[s] new tokens sit at positions
// context_lens[s]-n_s .. context_lens[s]-1 and attend causally: query at position p sees
// cache positions 0..p. Position j of sequence s lives in block block_tables[s][j / block_size],
// row j % block_size.
#include <torch/torch.h>

namespace llmctl::kernels {

// q: [N, heads, head_dim] (fp32 or bf16, contiguous); k_cache / v_cache: the layer's caches
// in q's dtype; query_start: int32 [S+1]; context_lens: int32 [S]; block_tables: int32
// [S, max_blocks_per_seq] (unused entries arbitrary). GQA: query head h reads kv head
// h / (heads / kv_heads), without materialising repeated K/V. Returns [N, heads, head_dim]
// in q's dtype. Softmax and accumulation in fp32. Multi-threaded over sequences x kv heads
// (and query chunks of long prefills).
// head_dim must be even and at most 256; the caches contiguous. The int32 metadata may sit
// on any device (it is read on the host). Every shape, dtype, device and index (query
// ranges, context lengths, used block ids) is checked first: bad input throws
// llmctl::Error. fp32 / bf16 on the CPU run the hand-written kernel; anything else (CUDA,
// fp16) runs paged_attention_reference (the kernel records no autograd history).
torch::Tensor paged_attention(const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
                              const torch::Tensor& query_start, const torch::Tensor& context_lens,
                              const torch::Tensor& block_tables, double scale);

// The same result from torch ops (gathers each sequence's K/V densely and runs causal
// softmax attention): the oracle the kernel is tested against.
torch::Tensor paged_attention_reference(const torch::Tensor& q, const torch::Tensor& k_cache,
                                        const torch::Tensor& v_cache, const torch::Tensor& query_start,
                                        const torch::Tensor& context_lens, const torch::Tensor& block_tables,
                                        double scale);

// Stores the new tokens' keys and values: k, v: [N, kv_heads, head_dim]; slot_mapping:
// int64 [N], slot = block * block_size + row, each inside the (contiguous) caches. Casts
// to the cache dtype. Bad shapes, dtypes or slots throw llmctl::Error.
void write_kv_cache(const torch::Tensor& k, const torch::Tensor& v, torch::Tensor& k_cache, torch::Tensor& v_cache,
                    const torch::Tensor& slot_mapping);

}  // namespace llmctl::kernels
