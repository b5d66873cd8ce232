#include "llmctl/kernels/linear.h"

#include <ATen/Parallel.h>
#include <sys/mman.h>

#include <cstdlib>

#include "cpu/gemm_cpu.h"

namespace llmctl::kernels {

torch::Tensor empty_huge_pages(at::IntArrayRef sizes, torch::ScalarType dtype) {
  constexpr std::size_t kHuge = 2u << 20;
  std::size_t bytes = c10::elementSize(dtype);
  for (auto s : sizes) bytes *= static_cast<std::size_t>(s);
  void* p = nullptr;
  if (bytes < kHuge / 2 || posix_memalign(&p, kHuge, (bytes + kHuge - 1) / kHuge * kHuge) != 0)
    return torch::empty(sizes, torch::TensorOptions().dtype(dtype));
#ifdef MADV_HUGEPAGE
  madvise(p, (bytes + kHuge - 1) / kHuge * kHuge, MADV_HUGEPAGE);
#endif
  return torch::from_blob(p, sizes, [](void* q) { std::free(q); }, torch::TensorOptions().dtype(dtype));
}

PackedLinear::PackedLinear(const torch::Tensor& w, const torch::Tensor& b) : n_(w.size(0)), k_(w.size(1)) {
  TORCH_CHECK(w.dim() == 2, "PackedLinear: weight must be [out, in]");
  auto wc = w.detach().contiguous();
  bias_ = b.defined() ? b.detach().to(torch::kFloat32).contiguous() : b;
  const auto t = wc.scalar_type();
  const bool packable = wc.device().is_cpu() && (t == torch::kFloat32 || t == torch::kBFloat16);
  if (!packable || t == torch::kBFloat16) dense_ = wc;
  if (!packable) return;
  const auto panels = (n_ + cpu::kPanel - 1) / cpu::kPanel;
  packed_ = empty_huge_pages({panels, k_, cpu::kPanel}, t);
  if (t == torch::kFloat32)
    cpu::pack_weight(wc.data_ptr<float>(), n_, k_, packed_.data_ptr<float>());
  else
    cpu::pack_weight(wc.data_ptr<c10::BFloat16>(), n_, k_, packed_.data_ptr<c10::BFloat16>());
}

bool PackedLinear::uses_packed(std::int64_t rows) const {
  return packed_.defined() && (!dense_.defined() || rows <= kPackedMaxRows);
}

torch::Tensor PackedLinear::operator()(const torch::Tensor& x) const {
  TORCH_CHECK(x.size(-1) == k_, "PackedLinear: input has ", x.size(-1), " features, weight expects ", k_);
  const auto rows = x.numel() / k_;
  if (!uses_packed(rows)) {
    auto b = bias_.defined() ? bias_.to(dense_.scalar_type()) : bias_;
    return b.defined() ? at::linear(x, dense_, b) : at::linear(x, dense_);
  }
  auto xf = x.reshape({rows, k_}).to(torch::kFloat32).contiguous();
  auto y = torch::empty({rows, n_}, xf.options());
  const float* xp = xf.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const auto panels = packed_.size(0);
  // Threads split the panels (output columns): each weight is read by one thread only.
  at::parallel_for(0, panels, 1, [&](std::int64_t p0, std::int64_t p1) {
    if (packed_.scalar_type() == torch::kFloat32)
      cpu::gemm_packed(xp, rows, k_, packed_.data_ptr<float>(), n_, p0, p1, yp, n_);
    else
      cpu::gemm_packed(xp, rows, k_, packed_.data_ptr<c10::BFloat16>(), n_, p0, p1, yp, n_);
  });
  if (bias_.defined()) y.add_(bias_);
  auto sizes = x.sizes().vec();
  sizes.back() = n_;
  return y.to(x.scalar_type()).view(sizes);
}

}  // namespace llmctl::kernels
