#pragma once
// Attention of a mixed batch of query tokens (prefill chunks and decode steps of several
// sequences, flattened) over a paged KV cache, as the engine runs it.
//
// KV cache layout, per layer and per K / V:  [num_blocks, kv_heads, block_size, head_dim].
// A block holds `block_size` consecutive positions of one sequence; within a block each kv
// head's keys are contiguous, so one (sequence, kv head) walks contiguous memory. The
// same layout holds quantised caches (KvCache below: int8 / int4 codes plus a per-(token,
// head) scale and zero beside each row).
//
// Sequence s owns query rows query_start[s] .. query_start[s+1]-1 of q. Its cache holds
// context_lens[s] positions (the new tokens included, already written with
// write_kv_cache); the n_s = query_start[s+1]-query_start[s] new tokens sit at positions
// context_lens[s]-n_s .. context_lens[s]-1 and attend causally: query at position p sees
// cache positions 0..p. Position j of sequence s lives in block block_tables[s][j / block_size],
// row j % block_size.
#include <torch/torch.h>

#include <string>
#include <utility>

namespace llmctl::kernels {

// One layer's K or V cache.
//  bits == 0: `data` holds the values in q's dtype, [num_blocks, kv_heads, block_size, head_dim];
//             `params` is undefined.
//  bits == 8 / 4: quantised per token and kv head, asymmetric. `data` is uint8 codes
//             [num_blocks, kv_heads, block_size, head_dim * bits / 8] (int4: element 2i in the
//             low nibble of byte i, element 2i+1 in the high nibble); `params` is fp32
//             [num_blocks, kv_heads, block_size, 2] = (scale, zero) of each row, with
//             zero = min(row), scale = (max(row) - min(row)) / (2^bits - 1),
//             code = round_half_even((x - zero) / scale) in [0, 2^bits - 1], and
//             x ~= code * scale + zero (error at most scale / 2 per element, plus fp32 rounding).
struct KvCache {
  torch::Tensor data, params;
  int bits = 0;
  bool quantized() const { return bits != 0; }
};

// "auto" (or "" / the model dtype: unquantised) -> 0, "int8" -> 8, "int4" -> 4; else throws llmctl::Error.
int kv_cache_bits(const std::string& kv_dtype);
// An uninitialised cache (zeros off the CPU). dtype: the values' dtype when bits == 0.
KvCache empty_kv_cache(std::int64_t num_blocks, std::int64_t kv_heads, std::int64_t block_size,
                       std::int64_t head_dim, torch::ScalarType dtype, int bits, const torch::Device& device);
// Bytes of one block of one KvCache (K or V of one layer): values, or codes plus (scale, zero).
std::int64_t kv_cache_block_bytes(std::int64_t kv_heads, std::int64_t block_size, std::int64_t head_dim,
                                  torch::ScalarType dtype, int bits);
// The quantisation above from torch ops, over the last dim of x ([..., head_dim], head_dim
// even): (codes uint8 [..., head_dim * bits / 8], params fp32 [..., 2]).
std::pair<torch::Tensor, torch::Tensor> quantize_kv(const torch::Tensor& x, int bits);
// codes, params as above -> fp32 [..., head_dim].
torch::Tensor dequantize_kv(const torch::Tensor& codes, const torch::Tensor& params, int bits);
// A cache's values as fp32 [num_blocks, kv_heads, block_size, head_dim] (dequantised if need be).
torch::Tensor kv_cache_values(const KvCache& cache);

// q: [N, heads, head_dim] (fp32 or bf16, contiguous); k_cache / v_cache: the layer's caches
// in q's dtype; query_start: int32 [S+1]; context_lens: int32 [S]; block_tables: int32
// [S, max_blocks_per_seq] (unused entries arbitrary). GQA: query head h reads kv head
// h / (heads / kv_heads), without materialising repeated K/V. Returns [N, heads, head_dim]
// in q's dtype. Softmax and accumulation in fp32. Multi-threaded over sequences x kv heads
// (and query chunks of long prefills).
// head_dim must be even and at most 256; the caches contiguous. The int32 metadata may sit
// on any device (it is read on the host, so keep it there: a device copy costs a sync per
// call). Every shape, dtype, device and index (query ranges, context lengths, used block
// ids) is checked first: bad input throws llmctl::Error. fp32 / bf16 on the CPU and
// fp32 / fp16 / bf16 on CUDA run the hand-written kernels (kernels/cpu/paged_attention_cpu.cpp,
// kernels/cuda/paged_attention.cu); anything else (fp16 on the CPU, other devices) runs
// paged_attention_reference. The kernels record no autograd history.
torch::Tensor paged_attention(const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
                              const torch::Tensor& query_start, const torch::Tensor& context_lens,
                              const torch::Tensor& block_tables, double scale);
// The same over KvCaches: unquantised ones as above; quantised ones are dequantised row by
// row inside the kernels, by the reference path elsewhere. `packed_on_device`: optional,
// pack_attention_metadata of the same three tensors already on q's device, which the CUDA
// kernel then reads instead of copying them over itself (the engine packs them once per
// step rather than once per layer).
torch::Tensor paged_attention(const torch::Tensor& q, const KvCache& k_cache, const KvCache& v_cache,
                              const torch::Tensor& query_start, const torch::Tensor& context_lens,
                              const torch::Tensor& block_tables, double scale,
                              const torch::Tensor& packed_on_device = {});
// query_start | context_lens | block_tables as one contiguous int32 array on `device`: the
// layout the CUDA kernel reads.
torch::Tensor pack_attention_metadata(const torch::Tensor& query_start, const torch::Tensor& context_lens,
                                      const torch::Tensor& block_tables, const torch::Device& device);

// The same result from torch ops (gathers each sequence's K/V densely and runs causal
// softmax attention): the oracle the kernel is tested against.
torch::Tensor paged_attention_reference(const torch::Tensor& q, const torch::Tensor& k_cache,
                                        const torch::Tensor& v_cache, const torch::Tensor& query_start,
                                        const torch::Tensor& context_lens, const torch::Tensor& block_tables,
                                        double scale);
torch::Tensor paged_attention_reference(const torch::Tensor& q, const KvCache& k_cache, const KvCache& v_cache,
                                        const torch::Tensor& query_start, const torch::Tensor& context_lens,
                                        const torch::Tensor& block_tables, double scale);

// Stores the new tokens' keys and values: k, v: [N, kv_heads, head_dim]; slot_mapping:
// int64 [N], slot = block * block_size + row, each inside the (contiguous) caches. Casts
// to the cache dtype. Bad shapes, dtypes or slots throw llmctl::Error.
void write_kv_cache(const torch::Tensor& k, const torch::Tensor& v, torch::Tensor& k_cache, torch::Tensor& v_cache,
                    const torch::Tensor& slot_mapping);
// The same into KvCaches; quantised ones store each (token, kv head) row's codes and
// (scale, zero) (a row loop on the CPU, one kernel per cache on CUDA, quantize_kv +
// index_put_ elsewhere).
// `slots_on_device`: optional, slot_mapping already on the caches' device (checked against
// the host copy's size), used there instead of copying it over again.
void write_kv_cache(const torch::Tensor& k, const torch::Tensor& v, KvCache& k_cache, KvCache& v_cache,
                    const torch::Tensor& slot_mapping, const torch::Tensor& slots_on_device = {});

}  // namespace llmctl::kernels
