#pragma once
// AWQ int4 weights in AutoAWQ's "gemm" storage (w4a16, asymmetric, group-wise), the format
// AutoAWQ, vLLM and transformers read. For a linear y = x W^T with W [N out, K in]:
//   qweight int32 [K, N/8]    nibble i of word (k, j) holds column 8j + kAwqOrder[i]
//   qzeros  int32 [K/g, N/8]  the zero points, packed the same way
//   scales  fp16  [K/g, N]
//   W[n][k] = (q[k][n] - z[k/g][n]) * s[k/g][n]
// Check values: columns 0..7 = 0..7 pack to 0x75316420; columns 0..7 = 15..8 to 0x8ACE9BDF.
#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

namespace llmctl {

// Which column each nibble of a packed word holds (nibble i = bits 4i..4i+3).
inline constexpr int kAwqOrder[8] = {0, 2, 4, 6, 1, 3, 5, 7};

struct AwqTensor {
  torch::Tensor qweight;  // int32 [K, N/8]
  torch::Tensor qzeros;   // int32 [K/g, N/8]
  torch::Tensor scales;   // fp16  [K/g, N]
  int group_size = 128;
  std::int64_t in_features() const { return qweight.size(0); }
  std::int64_t out_features() const { return scales.size(1); }
};

// q: integer tensor [rows, cols] with values 0..15, cols % 8 == 0 -> int32 [rows, cols/8].
torch::Tensor awq_pack(const torch::Tensor& q);
// The inverse: int32 [rows, cols/8] -> int32 [rows, cols] with values 0..15.
torch::Tensor awq_unpack(const torch::Tensor& packed);

// W [N, K] (any float dtype) -> AWQ tensors, round-to-nearest-even per group of
// `group_size` input channels (K % group_size == 0, N % 8 == 0).
AwqTensor awq_quantize(const torch::Tensor& w, int group_size);
// awq_dequantize(awq_quantize(w, g)) without packing: fp32 [N, K] on w's device (for searches).
torch::Tensor awq_fake_quantize(const torch::Tensor& w, int group_size);
// The fp32 weight [N, K] the tensors stand for.
torch::Tensor awq_dequantize(const AwqTensor& t);
// Linears sharing K and group size side by side along N (q|k|v, gate|up).
AwqTensor awq_concat_out(const std::vector<AwqTensor>& parts);

// The quantized linears of an AWQ model directory, by HF module name
// ("model.layers.0.self_attn.q_proj"), shapes checked against each other.
using AwqLinears = std::map<std::string, AwqTensor>;

// Throws llmctl::Error naming `what` unless the tensors are a consistent AWQ linear:
// qweight int32 [K, N/8], qzeros int32 [K/g, N/8], scales fp16 [K/g, N], K % g == 0.
void awq_check(const AwqTensor& t, const std::string& what = "AWQ tensor");

}  // namespace llmctl
