#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "rmsnorm.cuh"
#include "convert.cuh"

namespace llmctl::kernels::cuda {
namespace {

constexpr int kThreads = 256;

// One block per row: each thread sums squares over a strided slice, a warp-shuffle then
// shared-memory reduction gives the row's sum, and the same threads write the output.
template <typename T>
__global__ void rms_norm_kernel(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
                                std::int64_t cols, float eps) {
  const std::int64_t row = blockIdx.x;
  const T* xr = x + row * cols;
  T* yr = y + row * cols;

  float sum = 0.f;
  for (std::int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    float v = to_f32(xr[c]);
    sum += v * v;
  }
  for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);

  __shared__ float warp_sums[kThreads / 32];
  __shared__ float rstd;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = sum;
  __syncthreads();
  if (warp == 0) {
    sum = lane < blockDim.x / 32 ? warp_sums[lane] : 0.f;
    for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    if (lane == 0) rstd = rsqrtf(sum / static_cast<float>(cols) + eps);
  }
  __syncthreads();

  for (std::int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    // Round to T before the weight multiply, exactly as HF's LlamaRMSNorm does.
    T normed = from_f32<T>(to_f32(xr[c]) * rstd);
    yr[c] = from_f32<T>(to_f32(w[c]) * to_f32(normed));
  }
}

template <typename T>
cudaError_t launch(const void* x, const void* w, void* y, std::int64_t rows, std::int64_t cols,
                   float eps, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  rms_norm_kernel<T><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
      static_cast<const T*>(x), static_cast<const T*>(w), static_cast<T*>(y), cols, eps);
  return cudaGetLastError();
}

}  // namespace

cudaError_t rms_norm_forward(const void* x, const void* w, void* y, std::int64_t rows,
                             std::int64_t cols, float eps, DType dtype, cudaStream_t stream) {
  switch (dtype) {
    case DType::F32: return launch<float>(x, w, y, rows, cols, eps, stream);
    case DType::F16: return launch<__half>(x, w, y, rows, cols, eps, stream);
    case DType::BF16: return launch<__nv_bfloat16>(x, w, y, rows, cols, eps, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace llmctl::kernels::cuda
