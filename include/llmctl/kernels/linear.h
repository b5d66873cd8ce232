#pragma once
// y = x w^T + b for inference, two paths:
//  - decode steps (`decode`, a few rows) on the CPU are memory-bound: a hand-written GEMV
//    streams the weights once at close to memory bandwidth, where the BLAS path reaches
//    about half of it at one row;
//  - everything else goes to at::linear (MKL / oneDNN GEMM) with the rows padded to a
//    multiple of 4. LibTorch's CPU GEMM computes a row the same way whatever other rows
//    come with it once the row count is a multiple of its 4-row tile (below 12 rows other
//    counts take a different path), so a prompt's logits after a prefix-cache hit are
//    bit-identical to a cold run's (tests/unit/test_engine.cpp checks it).
#include <torch/torch.h>

namespace llmctl::kernels {

// x: [..., K]; w: [N, K]; b: [N] or undefined. fp32 or bf16.
torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b = {}, bool decode = false);

// Rows up to which the GEMV path is used.
inline constexpr std::int64_t kGemvMaxRows = 4;

}  // namespace llmctl::kernels
