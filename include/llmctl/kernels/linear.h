#pragma once
// y = x W^T + b for inference on weights packed once at load time (kernels/cpu/gemm_cpu.h):
//  - fp32 on the CPU: the hand-written packed GEMM for every batch size. A decode step
//    streams each weight once (the BLAS path reaches about half the memory bandwidth at one
//    row and repacks the whole matrix on every call), and a row's result never depends on
//    the rows batched with it, so prefix-cache hits and decode steps reproduce a cold
//    prefill bit for bit;
//  - bf16 on the CPU, where it has AVX-512 BF16 (and no AMX): one row (batch-1 decode, a
//    memory-bound GEMV) on the packed GEMM, 2 to kBf16DotMaxRows rows on the same panels
//    with BF16 dot products (twice the FMA rate, none of oneDNN's per-call overhead), more
//    (long prefills) on oneDNN's bf16 GEMM, for which the unpacked weight is kept. Without
//    AVX-512 BF16: the packed GEMM up to kPackedMaxRows rows, oneDNN above;
//  - AWQ int4 weights (quant/awq.h): on the CPU the int4 GEMM (kernels/cpu/int4_gemm_cpu.h:
//    weights repacked once, activations quantized to int8 per group on the fly), on CUDA the
//    w4a16 kernels (a dequantize-in-register GEMV for up to kAwqCudaGemvMaxRows rows,
//    dequantize + cuBLAS above);
//  - other devices: at::linear.
#include <torch/torch.h>

#include "llmctl/quant/awq.h"

namespace llmctl::kernels {

inline constexpr std::int64_t kPackedMaxRows = 16;
inline constexpr std::int64_t kBf16DotMaxRows = 256;
inline constexpr std::int64_t kAwqCudaGemvMaxRows = 8;

// An uninitialised CPU tensor whose memory the kernel is asked to back with 2 MiB pages
// (madvise; Linux's default THP mode only honours requests). Decode streams all weights and
// the whole KV cache every step: with 4 KiB pages the TLB misses cost up to a third of the
// memory bandwidth. Small tensors get ordinary memory.
torch::Tensor empty_huge_pages(at::IntArrayRef sizes, torch::ScalarType dtype);

// The CPU int4 kernel's instruction set: "vnni" (AVX-512 VNNI), "avx2", "scalar"; "auto"
// restores the best this CPU has. For tests and benchmarks; false (nothing changed) for a
// set this CPU lacks or an unknown name.
bool force_int4_isa(const std::string& name);
std::string int4_isa();  // the one in use

class PackedLinear {
 public:
  PackedLinear() = default;
  // w: [N, K]; b: [N] or undefined. Takes w's dtype and device.
  PackedLinear(const torch::Tensor& w, const torch::Tensor& b);
  // AWQ int4 weights, run on the device of w.qweight; b: [N] or undefined. The output
  // takes the input's dtype (fp32 or bf16 on the CPU; fp32, fp16 or bf16 on CUDA). A
  // group size the CPU kernel cannot take (not a multiple of 128) falls back to the
  // dequantized fp32 weight.
  PackedLinear(const AwqTensor& w, const torch::Tensor& b);
  // x: [..., K] in the weight's dtype -> [..., N].
  torch::Tensor operator()(const torch::Tensor& x) const;

  std::int64_t in_features() const { return k_; }
  std::int64_t out_features() const { return n_; }

 private:
  bool uses_packed(std::int64_t rows) const;
  bool uses_bf16_dot(std::int64_t rows) const;
  torch::Tensor finish(const torch::Tensor& x, torch::Tensor& y) const;
  torch::Tensor int4_cpu(const torch::Tensor& x) const;
  torch::Tensor awq_cuda(const torch::Tensor& x) const;
  torch::Tensor packed_, dense_, bias_;
  // CPU int4: repacked nibbles [N, K/128, 64] uint8, scale and scale * zero [N, K/128] fp32.
  torch::Tensor int4_q_, int4_scale_, int4_scale_zero_;
  AwqTensor awq_;  // CUDA: the AWQ tensors as stored
  std::int64_t n_ = 0, k_ = 0;
};

}  // namespace llmctl::kernels
