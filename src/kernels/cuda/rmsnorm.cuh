#pragma once
// Launcher for the fused RMSNorm CUDA kernel. Plain pointers and no torch headers, so
// nvcc compiles this unit quickly; src/kernels/rmsnorm.cpp does the torch-side checks.
#include <cstdint>
#include <cuda_runtime.h>

namespace llmctl::kernels::cuda {

enum class DType { F32, F16, BF16 };

// y[r, :] = w * cast(x[r, :] * rsqrt(mean(x[r, :]^2) + eps)) for r < rows.
// x and y are contiguous [rows, cols]; w is [cols]; all of `dtype`.
cudaError_t rms_norm_forward(const void* x, const void* w, void* y, std::int64_t rows,
                             std::int64_t cols, float eps, DType dtype, cudaStream_t stream);

}  // namespace llmctl::kernels::cuda
