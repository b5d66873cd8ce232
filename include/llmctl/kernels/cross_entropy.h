#pragma once
// Summed token cross-entropy over the vocabulary: sum_i (logsumexp(logits[i]) -
// logits[i][target[i]]), computed in fp32 whatever the logits' dtype. On the CPU with
// fp32 or bf16 logits a fused kernel reads the logits once forward and writes their
// gradient once backward (softmax - one-hot, in the logits' dtype), where the torch-ops
// path materialises an fp32 copy, its log-softmax and their gradients.
#include <torch/torch.h>

namespace llmctl::kernels {

// logits: [N, V]; target: [N] int64, every id in [0, V). Returns a 0-dim fp32 tensor.
torch::Tensor cross_entropy_sum(const torch::Tensor& logits, const torch::Tensor& target);

// The torch-ops path; also the oracle the fused kernel is tested against.
torch::Tensor cross_entropy_sum_reference(const torch::Tensor& logits, const torch::Tensor& target);

}  // namespace llmctl::kernels
