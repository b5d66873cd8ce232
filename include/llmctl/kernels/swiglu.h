#pragma once
// The gated MLP activation silu(gate) * up. fp32 and bf16 CPU tensors of the same shape
// and dtype take a fused kernel (one pass forward, one pass backward, computed in fp32)
// with its own backward; everything else takes the torch-ops reference.
#include <torch/torch.h>

namespace llmctl::kernels {

torch::Tensor swiglu(const torch::Tensor& gate, const torch::Tensor& up);

// The torch-ops path; also the oracle the fused kernel is tested against.
// Inference on one packed projection [..., 2F] = [gate | up] (the engine's fused
// gate_up GEMM): silu(gate) * up -> [..., F], without splitting into two copies.
torch::Tensor swiglu_packed(const torch::Tensor& gate_up);

torch::Tensor swiglu_reference(const torch::Tensor& gate, const torch::Tensor& up);

}  // namespace llmctl::kernels
