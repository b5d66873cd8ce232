#pragma once
// w4a16 CUDA kernels on AWQ's "gemm" storage (quant/awq.h): qweight int32 [k, n/8],
// qzeros int32 [k/group, n/8], scales fp16 [k/group, n]; W[c][r] = (q[r][c] - z) * s.
// Plain pointers and no torch headers; src/kernels/linear.cpp does the torch side.
#include <cstdint>
#include <cuda_runtime.h>

#include "rmsnorm.cuh"  // DType

namespace llmctl::kernels::cuda {

// y[m, n] = x[m, k] W^T (+ bias[n], fp32, if not null), x and y contiguous in `dtype`. The
// weights are dequantized in registers, never written out: for few rows (decode).
cudaError_t awq_gemv(const void* x, const std::int32_t* qweight, const std::int32_t* qzeros, const void* scales,
                     const float* bias, void* y, std::int64_t m, std::int64_t n, std::int64_t k, int group,
                     DType dtype, cudaStream_t stream);

// W^T [k, n] (contiguous, `dtype`) dequantized, for a cuBLAS GEMM over many rows (prefill).
cudaError_t awq_dequantize(const std::int32_t* qweight, const std::int32_t* qzeros, const void* scales,
                           std::int64_t n, std::int64_t k, int group, void* w_t, DType dtype, cudaStream_t stream);

}  // namespace llmctl::kernels::cuda
