#pragma once
// y = x w^T + b for inference. Decode-sized inputs (a few rows) on the CPU are
// memory-bound: they take a hand-written GEMV that streams the weights once at close to
// memory bandwidth, where the BLAS path reaches about half of it at one row. Larger
// inputs (prefill, big batches) go to at::linear (oneDNN / MKL GEMM).
#include <torch/torch.h>

namespace llmctl::kernels {

// x: [..., K]; w: [N, K]; b: [N] or undefined. fp32 or bf16.
torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b = {});

// Rows up to which the GEMV path is used.
inline constexpr std::int64_t kGemvMaxRows = 4;

}  // namespace llmctl::kernels
