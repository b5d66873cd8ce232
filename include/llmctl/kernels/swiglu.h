#pragma once
// The gated MLP activation silu(gate) * up. fp32 and bf16 CPU tensors of the same shape
// and dtype take a fused kernel (one pass forward, one pass backward, computed in fp32)
// with its own backward; everything else takes the torch-ops reference.
#include <torch/torch.h>

namespace llmctl::kernels {

torch::Tensor swiglu(const torch::Tensor& gate, const torch::Tensor& up);

// The torch-ops path; also the oracle the fused kernel is tested against.
torch::Tensor swiglu_reference(const torch::Tensor& gate, const torch::Tensor& up);

}  // namespace llmctl::kernels
