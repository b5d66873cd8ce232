#pragma once
// y = x W^T + b for inference on weights packed once at load time (kernels/cpu/gemm_cpu.h):
//  - fp32 on the CPU: the hand-written packed GEMM for every batch size. A decode step
//    streams each weight once (the BLAS path reaches about half the memory bandwidth at one
//    row and repacks the whole matrix on every call), and a row's result never depends on
//    the rows batched with it, so prefix-cache hits and decode steps reproduce a cold
//    prefill bit for bit;
//  - bf16 on the CPU: the packed GEMM up to kPackedMaxRows rows (decode batches), oneDNN's
//    bf16 GEMM above (prefill, where it is faster); the unpacked weight is kept for that;
//  - other devices: at::linear.
#include <torch/torch.h>

namespace llmctl::kernels {

inline constexpr std::int64_t kPackedMaxRows = 16;

// An uninitialised CPU tensor whose memory the kernel is asked to back with 2 MiB pages
// (madvise; Linux's default THP mode only honours requests). Decode streams all weights and
// the whole KV cache every step: with 4 KiB pages the TLB misses cost up to a third of the
// memory bandwidth. Small tensors get ordinary memory.
torch::Tensor empty_huge_pages(at::IntArrayRef sizes, torch::ScalarType dtype);

class PackedLinear {
 public:
  PackedLinear() = default;
  // w: [N, K]; b: [N] or undefined. Takes w's dtype and device.
  PackedLinear(const torch::Tensor& w, const torch::Tensor& b);
  // x: [..., K] in the weight's dtype -> [..., N].
  torch::Tensor operator()(const torch::Tensor& x) const;

 private:
  bool uses_packed(std::int64_t rows) const;
  torch::Tensor packed_, dense_, bias_;
  std::int64_t n_ = 0, k_ = 0;
};

}  // namespace llmctl::kernels
