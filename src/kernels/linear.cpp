#include "llmctl/kernels/linear.h"

#include <ATen/Parallel.h>
#include <sys/mman.h>

#include <cstdlib>
#include <vector>

#include "cpu/gemm_cpu.h"
#include "cpu/int4_gemm_cpu.h"
#include "llmctl/build_config.h"

#if LLMCTL_HAVE_CUDA
#include <c10/cuda/CUDAGuard.h>

#include "cuda/awq_gemm.cuh"
#include "cuda/torch_side.h"
#endif

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

bool force_int4_isa(const std::string& name) {
  using cpu::Int4Isa;
  if (name == "auto") return cpu::int4_force_isa(Int4Isa::kAuto);
  if (name == "vnni") return cpu::int4_force_isa(Int4Isa::kAvx512Vnni);
  if (name == "avx2") return cpu::int4_force_isa(Int4Isa::kAvx2);
  if (name == "scalar") return cpu::int4_force_isa(Int4Isa::kScalar);
  return false;
}

std::string int4_isa() {
  switch (cpu::int4_active_isa()) {
    case cpu::Int4Isa::kAvx512Vnni: return "vnni";
    case cpu::Int4Isa::kAvx2: return "avx2";
    default: return "scalar";
  }
}

PackedLinear::PackedLinear(const AwqTensor& w, const torch::Tensor& b)
    : n_(w.out_features()), k_(w.in_features()) {
  awq_check(w, "PackedLinear");
  const auto device = w.qweight.device();
  if (device.is_cuda()) {
    awq_ = {w.qweight.contiguous(), w.qzeros.contiguous(), w.scales.contiguous(), w.group_size};
    bias_ = b.defined() ? b.detach().to(device, torch::kFloat32).contiguous() : b;
    return;
  }
  if (!device.is_cpu() || w.group_size % cpu::kInt4Group != 0) {
    *this = PackedLinear(awq_dequantize(w).to(device), b);
    return;
  }
  const auto groups = k_ / cpu::kInt4Group;
  int4_q_ = empty_huge_pages({n_, groups, cpu::kInt4Group / 2}, torch::kUInt8);
  int4_scale_ = torch::empty({n_, groups}, torch::kFloat32);
  int4_scale_zero_ = torch::empty({n_, groups}, torch::kFloat32);
  const auto qw = w.qweight.contiguous(), qz = w.qzeros.contiguous(), sc = w.scales.contiguous();
  cpu::int4_repack_awq(qw.data_ptr<std::int32_t>(), qz.data_ptr<std::int32_t>(),
                       reinterpret_cast<const std::uint16_t*>(sc.data_ptr<at::Half>()), n_, k_, w.group_size,
                       int4_q_.data_ptr<std::uint8_t>(), int4_scale_.data_ptr<float>(),
                       int4_scale_zero_.data_ptr<float>());
  bias_ = b.defined() ? b.detach().to(torch::kFloat32).contiguous() : b;
}

bool PackedLinear::uses_packed(std::int64_t rows) const {
  return packed_.defined() && (!dense_.defined() || rows <= kPackedMaxRows || uses_bf16_dot(rows));
}

bool PackedLinear::uses_bf16_dot(std::int64_t rows) const {
  return packed_.defined() && packed_.scalar_type() == torch::kBFloat16 && rows >= 2 &&
         rows <= kBf16DotMaxRows && cpu::gemm_bf16_dot_usable();
}

torch::Tensor PackedLinear::operator()(const torch::Tensor& x) const {
  TORCH_CHECK(x.size(-1) == k_, "PackedLinear: input has ", x.size(-1), " features, weight expects ", k_);
  if (int4_q_.defined()) return int4_cpu(x);
  if (awq_.qweight.defined()) return awq_cuda(x);
  const auto rows = x.numel() / k_;
  if (!uses_packed(rows)) {
    auto b = bias_.defined() ? bias_.to(dense_.scalar_type()) : bias_;
    return b.defined() ? at::linear(x, dense_, b) : at::linear(x, dense_);
  }
  const auto panels = packed_.size(0);
  auto y = torch::empty({rows, n_}, x.options().dtype(torch::kFloat32));
  float* yp = y.data_ptr<float>();
  if (uses_bf16_dot(rows)) {
    auto xb = x.reshape({rows, k_}).to(torch::kBFloat16).contiguous();
    const auto* xp = xb.data_ptr<c10::BFloat16>();
    at::parallel_for(0, panels, 1, [&](std::int64_t p0, std::int64_t p1) {
      cpu::gemm_packed_bf16_dot(xp, rows, k_, packed_.data_ptr<c10::BFloat16>(), n_, p0, p1, yp, n_);
    });
    return finish(x, y);
  }
  auto xf = x.reshape({rows, k_}).to(torch::kFloat32).contiguous();
  const float* xp = xf.data_ptr<float>();
  // Threads split the panels (output columns): each weight is read by one thread only.
  at::parallel_for(0, panels, 1, [&](std::int64_t p0, std::int64_t p1) {
    if (packed_.scalar_type() == torch::kFloat32)
      cpu::gemm_packed(xp, rows, k_, packed_.data_ptr<float>(), n_, p0, p1, yp, n_);
    else
      cpu::gemm_packed(xp, rows, k_, packed_.data_ptr<c10::BFloat16>(), n_, p0, p1, yp, n_);
  });
  return finish(x, y);
}

// y fp32 [rows, N] -> + bias, in x's dtype and leading shape.
torch::Tensor PackedLinear::finish(const torch::Tensor& x, torch::Tensor& y) const {
  if (bias_.defined()) y.add_(bias_);
  auto sizes = x.sizes().vec();
  sizes.back() = n_;
  return y.to(x.scalar_type()).view(sizes);
}

torch::Tensor PackedLinear::int4_cpu(const torch::Tensor& x) const {
  TORCH_CHECK(x.device().is_cpu(), "PackedLinear: the int4 weights are on the CPU, the input is not");
  const auto rows = x.numel() / k_;
  const auto groups = k_ / cpu::kInt4Group;
  auto xc = x.reshape({rows, k_});
  if (xc.scalar_type() != torch::kFloat32 && xc.scalar_type() != torch::kBFloat16) xc = xc.to(torch::kFloat32);
  xc = xc.contiguous();
  // Quantized activations: reused by every output column, so computed once per call.
  thread_local std::vector<std::int8_t> xq;
  thread_local std::vector<float> xs, xsz;
  if (xq.size() < static_cast<std::size_t>(rows * k_)) xq.resize(rows * k_);
  if (xs.size() < static_cast<std::size_t>(rows * groups)) xs.resize(rows * groups), xsz.resize(rows * groups);
  // (Pointers taken here: inside parallel_for the names would be the workers' own buffers.)
  std::int8_t* xqp = xq.data();
  float *xsp = xs.data(), *xszp = xsz.data();
  auto quantize = [&](std::int64_t r0, std::int64_t r1) {
    if (xc.scalar_type() == torch::kFloat32)
      cpu::int4_quantize_rows(xc.data_ptr<float>(), k_, k_, r0, r1, xqp, xsp, xszp);
    else
      cpu::int4_quantize_rows(xc.data_ptr<c10::BFloat16>(), k_, k_, r0, r1, xqp, xsp, xszp);
  };
  if (rows >= 8)
    at::parallel_for(0, rows, 1, quantize);
  else
    quantize(0, rows);

  auto y = torch::empty({rows, n_}, xc.options());
  const cpu::Int4Weights w{int4_q_.data_ptr<std::uint8_t>(), int4_scale_.data_ptr<float>(),
                           int4_scale_zero_.data_ptr<float>(), n_, k_};
  const float* bias = bias_.defined() ? bias_.data_ptr<float>() : nullptr;
  // Threads split the output columns (in blocks of 4, the kernel's tile width): each weight
  // is read by one thread, the quantized activations by all.
  constexpr std::int64_t kCols = 4;
  at::parallel_for(0, (n_ + kCols - 1) / kCols, 1, [&](std::int64_t b0, std::int64_t b1) {
    const auto n0 = b0 * kCols, n1 = std::min(n_, b1 * kCols);
    if (y.scalar_type() == torch::kFloat32)
      cpu::int4_gemm(w, xqp, xsp, xszp, rows, n0, n1, bias, y.data_ptr<float>(), n_);
    else
      cpu::int4_gemm(w, xqp, xsp, xszp, rows, n0, n1, bias, y.data_ptr<c10::BFloat16>(), n_);
  });
  auto sizes = x.sizes().vec();
  sizes.back() = n_;
  return y.to(x.scalar_type()).view(sizes);
}

torch::Tensor PackedLinear::awq_cuda(const torch::Tensor& x) const {
#if LLMCTL_HAVE_CUDA
  TORCH_CHECK(x.device() == awq_.qweight.device(), "PackedLinear: the input is not on the AWQ weights' device");
  c10::cuda::CUDAGuard guard(x.device());
  const auto rows = x.numel() / k_;
  auto xc = x.reshape({rows, k_});
  const auto t = xc.scalar_type();
  if (t != torch::kFloat32 && t != torch::kFloat16 && t != torch::kBFloat16) xc = xc.to(torch::kFloat32);
  xc = xc.contiguous();
  const auto dt = cuda::dtype_of(xc);
  const auto stream = cuda::current_stream();
  torch::Tensor y;
  if (rows <= kAwqCudaGemvMaxRows) {
    y = torch::empty({rows, n_}, xc.options());
    const auto err = cuda::awq_gemv(xc.data_ptr(), awq_.qweight.data_ptr<std::int32_t>(),
                                    awq_.qzeros.data_ptr<std::int32_t>(), awq_.scales.data_ptr(),
                                    bias_.defined() ? bias_.data_ptr<float>() : nullptr, y.data_ptr(), rows, n_, k_,
                                    awq_.group_size, dt, stream);
    cuda::check_launch(err, "AWQ GEMV");
  } else {
    auto wt = torch::empty({k_, n_}, xc.options());  // W^T, dequantized
    const auto err = cuda::awq_dequantize(awq_.qweight.data_ptr<std::int32_t>(), awq_.qzeros.data_ptr<std::int32_t>(),
                                          awq_.scales.data_ptr(), n_, k_, awq_.group_size, wt.data_ptr(), dt, stream);
    cuda::check_launch(err, "AWQ dequantize");
    y = bias_.defined() ? at::addmm(bias_.to(xc.scalar_type()), xc, wt) : at::mm(xc, wt);
  }
  auto sizes = x.sizes().vec();
  sizes.back() = n_;
  return y.to(x.scalar_type()).view(sizes);
#else
  (void)x;
  TORCH_CHECK(false, "PackedLinear: AWQ weights on CUDA need a build with the CUDA kernels");
#endif
}

}  // namespace llmctl::kernels
