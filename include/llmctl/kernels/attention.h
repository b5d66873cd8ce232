#pragma once
// Causal self-attention on the projections' layout: q [B, T, H, D], k and v [B, T, KV, D]
// (H a multiple of KV: GQA maps query head h to kv head h / (H / KV)) -> [B, T, H, D],
// scaled by 1/sqrt(D). bf16 CPU tensors on a CPU with AVX-512 BF16 (and no AMX) take a
// fused kernel with its own backward (src/kernels/cpu/flash_attention_cpu.h); everything
// else takes LibTorch's scaled_dot_product_attention.
#include <torch/torch.h>

namespace llmctl::kernels {

torch::Tensor causal_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v);

// The LibTorch path; also the oracle the fused kernel is tested against.
torch::Tensor causal_attention_reference(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v);

// Whether causal_attention takes the fused kernel for these inputs.
bool causal_attention_fused(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v);

}  // namespace llmctl::kernels
