#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "awq_gemm.cuh"
#include "convert.cuh"

namespace llmctl::kernels::cuda {
namespace {

// Column c (0..7) of a packed word sits at bits 4 * kNibble[c] (AWQ's order 0,2,4,6,1,3,5,7).
__device__ __forceinline__ float nibble(std::uint32_t word, int c) {
  constexpr unsigned kShift = 0x73625140u;  // kNibble = {0,4,1,5,2,6,3,7}, one hex digit each
  return static_cast<float>((word >> (4 * ((kShift >> (4 * c)) & 15u))) & 15u);
}

constexpr int kWords = 32;    // packed words (8 output columns each) per block, one per lane
constexpr int kSplits = 8;    // warps splitting k (by groups) within a block
constexpr int kRows = 8;      // input rows per block

// Thread (lane, warp): output columns 8 * word .. + 7 for up to kRows rows, over the groups
// warp, warp + kSplits, ...; each group's zero and scales are read once, each weight word
// once (a warp reads 32 consecutive words), dequantized in registers. The warps' partial
// sums meet in shared memory.
template <typename T>
__global__ void __launch_bounds__(kWords * kSplits)
    awq_gemv_kernel(const T* __restrict__ x, const std::uint32_t* __restrict__ qweight,
                    const std::uint32_t* __restrict__ qzeros, const __half* __restrict__ scales,
                    const float* __restrict__ bias, T* __restrict__ y, int m, int n, int k, int group) {
  const int words = n / 8;
  const int word = blockIdx.x * kWords + threadIdx.x;
  const int r0 = blockIdx.y * kRows;
  const int rows = min(kRows, m - r0);
  float acc[kRows][8];
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int c = 0; c < 8; ++c) acc[r][c] = 0.f;
  if (word < words) {
    for (int g = threadIdx.y; g < k / group; g += kSplits) {
      const std::uint32_t zw = qzeros[static_cast<std::int64_t>(g) * words + word];
      float s[8], zs[8];
#pragma unroll
      for (int c = 0; c < 8; ++c) {
        s[c] = __half2float(scales[static_cast<std::int64_t>(g) * n + 8 * word + c]);
        zs[c] = nibble(zw, c) * s[c];
      }
      for (int kk = g * group; kk < (g + 1) * group; ++kk) {
        const std::uint32_t qw = qweight[static_cast<std::int64_t>(kk) * words + word];
        float w[8];
#pragma unroll
        for (int c = 0; c < 8; ++c) w[c] = fmaf(nibble(qw, c), s[c], -zs[c]);
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          if (r < rows) {
            const float xv = to_f32(x[static_cast<std::int64_t>(r0 + r) * k + kk]);
#pragma unroll
            for (int c = 0; c < 8; ++c) acc[r][c] = fmaf(xv, w[c], acc[r][c]);
          }
        }
      }
    }
  }
  __shared__ float part[kSplits][kWords][9];  // padded against bank conflicts
  for (int r = 0; r < rows; ++r) {
#pragma unroll
    for (int c = 0; c < 8; ++c) part[threadIdx.y][threadIdx.x][c] = acc[r][c];
    __syncthreads();
    if (word < words) {
      const int c = threadIdx.y;  // each warp finishes one of the 8 columns
      float sum = 0.f;
#pragma unroll
      for (int t = 0; t < kSplits; ++t) sum += part[t][threadIdx.x][c];
      const int col = 8 * word + c;
      if (bias) sum += bias[col];
      y[static_cast<std::int64_t>(r0 + r) * n + col] = from_f32<T>(sum);
    }
    __syncthreads();
  }
}

// One thread per packed word: its 8 columns of row kk of W^T.
template <typename T>
__global__ void awq_dequantize_kernel(const std::uint32_t* __restrict__ qweight,
                                      const std::uint32_t* __restrict__ qzeros, const __half* __restrict__ scales,
                                      T* __restrict__ w_t, int n, int k, int group) {
  const int words = n / 8;
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<std::int64_t>(k) * words) return;
  const int kk = static_cast<int>(i / words), word = static_cast<int>(i % words), g = kk / group;
  const std::uint32_t qw = qweight[i], zw = qzeros[static_cast<std::int64_t>(g) * words + word];
#pragma unroll
  for (int c = 0; c < 8; ++c) {
    const float s = __half2float(scales[static_cast<std::int64_t>(g) * n + 8 * word + c]);
    w_t[static_cast<std::int64_t>(kk) * n + 8 * word + c] = from_f32<T>((nibble(qw, c) - nibble(zw, c)) * s);
  }
}

template <typename T>
cudaError_t gemv(const void* x, const std::int32_t* qweight, const std::int32_t* qzeros, const void* scales,
                 const float* bias, void* y, std::int64_t m, std::int64_t n, std::int64_t k, int group,
                 cudaStream_t stream) {
  if (m == 0 || n == 0) return cudaSuccess;
  const dim3 block(kWords, kSplits);
  const dim3 grid(static_cast<unsigned>((n / 8 + kWords - 1) / kWords), static_cast<unsigned>((m + kRows - 1) / kRows));
  awq_gemv_kernel<T><<<grid, block, 0, stream>>>(
      static_cast<const T*>(x), reinterpret_cast<const std::uint32_t*>(qweight),
      reinterpret_cast<const std::uint32_t*>(qzeros), static_cast<const __half*>(scales), bias, static_cast<T*>(y),
      static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), group);
  return cudaGetLastError();
}

template <typename T>
cudaError_t dequantize(const std::int32_t* qweight, const std::int32_t* qzeros, const void* scales, std::int64_t n,
                       std::int64_t k, int group, void* w_t, cudaStream_t stream) {
  const std::int64_t total = k * (n / 8);
  if (total == 0) return cudaSuccess;
  constexpr int kThreads = 256;
  awq_dequantize_kernel<T><<<static_cast<unsigned>((total + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
      reinterpret_cast<const std::uint32_t*>(qweight), reinterpret_cast<const std::uint32_t*>(qzeros),
      static_cast<const __half*>(scales), static_cast<T*>(w_t), static_cast<int>(n), static_cast<int>(k), group);
  return cudaGetLastError();
}

}  // namespace

cudaError_t awq_gemv(const void* x, const std::int32_t* qweight, const std::int32_t* qzeros, const void* scales,
                     const float* bias, void* y, std::int64_t m, std::int64_t n, std::int64_t k, int group,
                     DType dtype, cudaStream_t stream) {
  switch (dtype) {
    case DType::F32: return gemv<float>(x, qweight, qzeros, scales, bias, y, m, n, k, group, stream);
    case DType::F16: return gemv<__half>(x, qweight, qzeros, scales, bias, y, m, n, k, group, stream);
    case DType::BF16: return gemv<__nv_bfloat16>(x, qweight, qzeros, scales, bias, y, m, n, k, group, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t awq_dequantize(const std::int32_t* qweight, const std::int32_t* qzeros, const void* scales,
                           std::int64_t n, std::int64_t k, int group, void* w_t, DType dtype, cudaStream_t stream) {
  switch (dtype) {
    case DType::F32: return dequantize<float>(qweight, qzeros, scales, n, k, group, w_t, stream);
    case DType::F16: return dequantize<__half>(qweight, qzeros, scales, n, k, group, w_t, stream);
    case DType::BF16: return dequantize<__nv_bfloat16>(qweight, qzeros, scales, n, k, group, w_t, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace llmctl::kernels::cuda
