#pragma once
// RMSNorm, HF semantics: statistics in fp32, normalised value cast back to the input
// dtype, then multiplied by the weight. Dispatch:
//   CUDA tensors, no gradient needed  -> fused CUDA forward (one read of x, one write of y)
//   fp32 CPU tensors                  -> fused CPU forward and backward (autograd function)
//   anything else                     -> the reference path built from torch ops
#include <torch/torch.h>

namespace llmctl::kernels {

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);

// The torch-ops path; also the oracle the fused kernels are tested against.
torch::Tensor rms_norm_reference(const torch::Tensor& x, const torch::Tensor& weight, double eps);

// True when this binary was built with the CUDA kernels (a GPU may still be absent).
bool built_with_cuda();

}  // namespace llmctl::kernels
