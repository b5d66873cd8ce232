#pragma once
// Host-side glue shared by the torch wrappers of the CUDA kernels (included only from .cpp
// files built with LLMCTL_HAVE_CUDA).
#include <c10/cuda/CUDAStream.h>
#include <torch/torch.h>

#include "rmsnorm.cuh"  // DType

namespace llmctl::kernels::cuda {

// The kernels' element type for an fp32 / fp16 / bf16 tensor.
inline DType dtype_of(const torch::Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kFloat32: return DType::F32;
    case torch::kFloat16: return DType::F16;
    case torch::kBFloat16: return DType::BF16;
    default: TORCH_CHECK(false, "CUDA kernels take fp32, fp16 or bf16, got ", t.scalar_type());
  }
}

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

inline void check_launch(cudaError_t err, const char* kernel) {
  TORCH_CHECK(err == cudaSuccess, kernel, " CUDA kernel failed: ", cudaGetErrorString(err));
}

}  // namespace llmctl::kernels::cuda
