#pragma once
// Causal self-attention for training on bf16 CPU tensors, forward and backward, built on
// AVX-512 BF16 dot products (vdpbf16ps: pairs of bf16 multiplied and summed into fp32).
//
// Layout is the projections' own, [B, T, heads, D] contiguous, so no head transposes are
// needed around it; GQA maps query head h to kv head h / (H / KV) without repeating K/V.
// Work goes in blocks of 64 query rows against all the keys they may see: the block's
// scores [64 x keys] stay in fp32 in a per-thread buffer (L2-sized for T up to a few
// thousand), softmax is exact per row, and the forward keeps the rows' log-sum-exp so the
// backward recomputes the probabilities instead of storing them. Probabilities and score
// gradients are rounded to bf16 only as operands of the next product (as LibTorch's own
// flash kernel does); every product accumulates in fp32.
#include <c10/util/BFloat16.h>

#include <cstdint>

namespace llmctl::kernels::cpu {

struct AttentionShape {
  std::int64_t batch, time, heads, kv_heads, head_dim;
  float scale;  // applied to q.k (usually 1/sqrt(head_dim))
};

// True when this CPU has AVX-512 BF16 but not AMX (where LibTorch's kernel is faster) and
// the shape is one the kernels handle (head size a multiple of 16 up to 256, time up to
// 16384). Callers take LibTorch's attention otherwise.
bool flash_attention_bf16_usable(std::int64_t head_dim, std::int64_t time);

// out = softmax(scale q k^T + causal mask) v; lse [B, H, T] = each row's log-sum-exp of the
// scaled, masked scores (what the backward needs).
void flash_attention_bf16_forward(const AttentionShape& s, const c10::BFloat16* q, const c10::BFloat16* k,
                                  const c10::BFloat16* v, c10::BFloat16* out, float* lse);

// Gradients of the forward above given d(out); dq is [B, T, H, D], dk/dv [B, T, KV, D]
// (summed over the query heads that share each kv head).
void flash_attention_bf16_backward(const AttentionShape& s, const c10::BFloat16* q, const c10::BFloat16* k,
                                   const c10::BFloat16* v, const c10::BFloat16* out, const c10::BFloat16* dout,
                                   const float* lse, c10::BFloat16* dq, c10::BFloat16* dk, c10::BFloat16* dv);

}  // namespace llmctl::kernels::cpu
