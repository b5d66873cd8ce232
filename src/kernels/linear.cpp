#include "llmctl/kernels/linear.h"

#include <ATen/Parallel.h>

#include "cpu/gemv_cpu.h"

namespace llmctl::kernels {

namespace {

bool gemv_applies(const torch::Tensor& x, const torch::Tensor& w) {
  const auto t = w.scalar_type();
  return x.device().is_cpu() && w.device().is_cpu() && (t == torch::kFloat32 || t == torch::kBFloat16) &&
         x.scalar_type() == t && w.dim() == 2 && w.is_contiguous() && x.size(-1) == w.size(1) && x.numel() > 0 &&
         x.numel() / x.size(-1) <= kGemvMaxRows;
}

torch::Tensor gemm_padded(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  auto x2 = x.reshape({-1, x.size(-1)});
  const auto rows = x2.size(0), pad = (4 - rows % 4) % 4;
  if (pad) x2 = torch::cat({x2, x2.new_zeros({pad, x2.size(1)})});
  auto y = b.defined() ? at::linear(x2, w, b) : at::linear(x2, w);
  if (pad) y = y.narrow(0, 0, rows);
  auto sizes = x.sizes().vec();
  sizes.back() = w.size(0);
  return y.view(sizes);
}

}  // namespace

torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b, bool decode) {
  if (!decode || !gemv_applies(x, w)) return gemm_padded(x, w, b);
  const auto K = w.size(1), N = w.size(0), M = x.numel() / K;
  auto xf = x.reshape({M, K}).to(torch::kFloat32).contiguous();
  auto y = torch::empty({M, N}, xf.options());
  const float* xp = xf.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  // Split the output rows over the threads in multiples of 4 (the kernel's row block).
  const std::int64_t blocks = (N + 3) / 4;
  at::parallel_for(0, blocks, 16, [&](std::int64_t lo, std::int64_t hi) {
    const auto n0 = lo * 4, n1 = std::min(N, hi * 4);
    if (w.scalar_type() == torch::kFloat32)
      cpu::gemv_rows(xp, M, K, w.data_ptr<float>(), n0, n1, yp, N);
    else
      cpu::gemv_rows(xp, M, K, w.data_ptr<c10::BFloat16>(), n0, n1, yp, N);
  });
  if (b.defined()) y.add_(b.to(torch::kFloat32));
  auto sizes = x.sizes().vec();
  sizes.back() = N;
  return y.to(x.scalar_type()).view(sizes);
}

}  // namespace llmctl::kernels
