#include "llmctl/kernels/rmsnorm.h"
#include "llmctl/build_config.h"

#if LLMCTL_HAVE_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/rmsnorm.cuh"
#endif

namespace llmctl::kernels {

bool built_with_cuda() {
#if LLMCTL_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

torch::Tensor rms_norm_reference(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  auto xf = x.to(torch::kFloat32);
  auto normed = xf * torch::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * normed.to(x.scalar_type());
}

#if LLMCTL_HAVE_CUDA
namespace {

bool fused_cuda_applies(const torch::Tensor& x, const torch::Tensor& w) {
  if (!x.is_cuda() || !w.is_cuda() || x.scalar_type() != w.scalar_type()) return false;
  if (torch::GradMode::is_enabled() && (x.requires_grad() || w.requires_grad())) return false;
  auto t = x.scalar_type();
  return (t == torch::kFloat32 || t == torch::kFloat16 || t == torch::kBFloat16) && w.dim() == 1 &&
         x.size(-1) == w.size(0);
}

torch::Tensor rms_norm_cuda(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  c10::cuda::CUDAGuard guard(x.device());
  auto xc = x.contiguous();
  auto wc = weight.contiguous();
  auto y = torch::empty_like(xc);
  const auto cols = xc.size(-1);
  const auto rows = cols == 0 ? 0 : xc.numel() / cols;
  cuda::DType dt = x.scalar_type() == torch::kFloat32   ? cuda::DType::F32
                   : x.scalar_type() == torch::kFloat16 ? cuda::DType::F16
                                                        : cuda::DType::BF16;
  auto err = cuda::rms_norm_forward(xc.data_ptr(), wc.data_ptr(), y.data_ptr(), rows, cols,
                                    static_cast<float>(eps), dt,
                                    c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == cudaSuccess, "rms_norm CUDA kernel failed: ", cudaGetErrorString(err));
  return y;
}

}  // namespace
#endif

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
#if LLMCTL_HAVE_CUDA
  if (fused_cuda_applies(x, weight)) return rms_norm_cuda(x, weight, eps);
#endif
  return rms_norm_reference(x, weight, eps);
}

}  // namespace llmctl::kernels
