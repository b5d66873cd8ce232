#pragma once
// RMSNorm forward, HF semantics: statistics in fp32, normalised value cast back to the
// input dtype, then multiplied by the weight. CUDA tensors go to a fused kernel (one read
// of x, one write of y) when no gradient is needed; everything else takes the reference
// path built from torch ops, which autograd differentiates.
#include <torch/torch.h>

namespace llmctl::kernels {

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);

// The torch-ops path; also the oracle the fused kernels are tested against.
torch::Tensor rms_norm_reference(const torch::Tensor& x, const torch::Tensor& weight, double eps);

// True when this binary was built with the CUDA kernels (a GPU may still be absent).
bool built_with_cuda();

}  // namespace llmctl::kernels
