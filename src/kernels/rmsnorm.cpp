#include "llmctl/kernels/rmsnorm.h"

#include <ATen/Parallel.h>

#include "cpu/rmsnorm_cpu.h"
#include "llmctl/build_config.h"

#if LLMCTL_HAVE_CUDA
#include <c10/cuda/CUDAGuard.h>

#include "cuda/rmsnorm.cuh"
#include "cuda/torch_side.h"
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
  cuda::check_launch(cuda::rms_norm_forward(xc.data_ptr(), wc.data_ptr(), y.data_ptr(), rows, cols,
                                            static_cast<float>(eps), cuda::dtype_of(xc), cuda::current_stream()),
                     "rms_norm");
  return y;
}

}  // namespace
#endif

namespace {

// CPU rows of `dtype` (x and w alike) that the row kernels take.
bool cpu_rows_apply(const torch::Tensor& x, const torch::Tensor& w, torch::ScalarType dtype) {
  return x.device().is_cpu() && w.device().is_cpu() && x.scalar_type() == dtype && w.scalar_type() == dtype &&
         w.dim() == 1 && x.dim() >= 1 && x.size(-1) == w.size(0) && x.numel() > 0;
}

// fp32 on the CPU (the residual stream in training, bf16 autocast included, and f32
// inference): one pass for the statistics and one for the output, and a backward of two
// passes, where the torch-ops path runs about ten elementwise kernels each way.
bool fused_cpu_applies(const torch::Tensor& x, const torch::Tensor& w) {
  return cpu_rows_apply(x, w, torch::kFloat32);
}

// bf16 inference (no gradient wanted): the engine's bf16 path, where the torch-ops
// reference runs ~10 elementwise kernels with conversions.
bool fused_cpu_bf16_applies(const torch::Tensor& x, const torch::Tensor& w) {
  if (torch::GradMode::is_enabled() && (x.requires_grad() || w.requires_grad())) return false;
  return cpu_rows_apply(x, w, torch::kBFloat16);
}

constexpr std::int64_t kRowsPerTask = 16;

torch::Tensor rms_norm_cpu_bf16(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  auto xc = x.contiguous();
  auto wc = weight.contiguous();
  auto y = torch::empty_like(xc);
  const auto cols = xc.size(-1), rows = xc.numel() / cols;
  const auto* xp = xc.data_ptr<c10::BFloat16>();
  const auto* wp = wc.data_ptr<c10::BFloat16>();
  auto* yp = y.data_ptr<c10::BFloat16>();
  at::parallel_for(0, rows, kRowsPerTask, [&](std::int64_t b, std::int64_t e) {
    cpu::rms_norm_forward_rows(xp + b * cols, wp, yp + b * cols, e - b, cols, static_cast<float>(eps));
  });
  return y;
}

class RMSNormCpu : public torch::autograd::Function<RMSNormCpu> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& weight, double eps) {
    auto xc = x.contiguous();
    auto wc = weight.contiguous();
    const auto cols = xc.size(-1), rows = xc.numel() / cols;
    auto y = torch::empty_like(xc);
    auto rstd = torch::empty({rows}, xc.options());
    const float *xp = xc.data_ptr<float>(), *wp = wc.data_ptr<float>();
    float *yp = y.data_ptr<float>(), *rp = rstd.data_ptr<float>();
    at::parallel_for(0, rows, kRowsPerTask, [&](std::int64_t b, std::int64_t e) {
      cpu::rms_norm_forward_rows(xp + b * cols, wp, yp + b * cols, rp + b, e - b, cols, static_cast<float>(eps));
    });
    ctx->save_for_backward({xc, wc, rstd});
    return y;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &w = saved[1], &rstd = saved[2];
    auto g = grads[0].to(torch::kFloat32).contiguous();
    const auto cols = x.size(-1), rows = x.numel() / cols;
    auto dx = torch::empty_like(x);
    // One weight-gradient accumulator row per thread, summed at the end (no atomics).
    auto dw_parts = torch::zeros({at::get_num_threads(), cols}, x.options());
    const float *gp = g.data_ptr<float>(), *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>(),
                *rp = rstd.data_ptr<float>();
    float *dxp = dx.data_ptr<float>(), *dwp = dw_parts.data_ptr<float>();
    at::parallel_for(0, rows, kRowsPerTask, [&](std::int64_t b, std::int64_t e) {
      cpu::rms_norm_backward_rows(gp + b * cols, xp + b * cols, wp, rp + b, dxp + b * cols,
                                  dwp + at::get_thread_num() * cols, e - b, cols);
    });
    return {dx, dw_parts.sum(0), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
#if LLMCTL_HAVE_CUDA
  if (fused_cuda_applies(x, weight)) return rms_norm_cuda(x, weight, eps);
#endif
  if (fused_cpu_applies(x, weight)) return RMSNormCpu::apply(x, weight, eps);
  if (fused_cpu_bf16_applies(x, weight)) return rms_norm_cpu_bf16(x, weight, eps);
  return rms_norm_reference(x, weight, eps);
}

}  // namespace llmctl::kernels
