#pragma once
// Rotary position embedding in HF's rotate-half layout, on the projection output layout
// [batch, time, heads, head_dim] (before the head transpose):
//   y[:half] = x[:half] * cos - x[half:] * sin,   y[half:] = x[half:] * cos + x[:half] * sin
// cos/sin: fp32 tables [time, head_dim] or [batch, time, head_dim] (rope_cos_sin), cast to
// x's dtype as HF does. fp32 and bf16 CPU tensors take a fused kernel with its own
// backward (the inverse rotation); everything else takes the torch-ops reference.
#include <torch/torch.h>

namespace llmctl::kernels {

torch::Tensor rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);

// The torch-ops path; also the oracle the fused kernel is tested against.
torch::Tensor rope_reference(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);

}  // namespace llmctl::kernels
