#include "llmctl/kernels/rope.h"

#include <ATen/Parallel.h>

#include "cpu/rope_cpu.h"

namespace llmctl::kernels {

torch::Tensor rope_reference(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  // Tables broadcast over heads: [T, D] -> [T, 1, D]; [B, T, D] -> [B, T, 1, D].
  auto c = cos.to(x.scalar_type()).unsqueeze(-2), s = sin.to(x.scalar_type()).unsqueeze(-2);
  const auto half = x.size(-1) / 2;
  auto rotated = torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * c + rotated * s;
}

namespace {

bool fused_cpu_applies(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  const auto t = x.scalar_type();
  return x.device().is_cpu() && (t == torch::kFloat32 || t == torch::kBFloat16) && x.dim() == 4 &&
         x.size(-1) % 2 == 0 && x.size(-1) <= 1024 && cos.scalar_type() == torch::kFloat32 &&
         sin.scalar_type() == torch::kFloat32 && cos.sizes() == sin.sizes() && cos.size(-1) == x.size(-1) &&
         ((cos.dim() == 2 && cos.size(0) == x.size(1)) ||
          (cos.dim() == 3 && cos.size(0) == x.size(0) && cos.size(1) == x.size(1)));
}

// y = rope(x) with rotation sign +1, or its inverse with -1 (x: [B, T, H, D] contiguous).
torch::Tensor rope_cpu(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin, float sign) {
  auto xc = x.contiguous();
  auto c = cos.contiguous(), s = sin.contiguous();
  auto y = torch::empty_like(xc);
  const auto B = xc.size(0), T = xc.size(1), H = xc.size(2), D = xc.size(3);
  // Table row of each (b, t) row of x: shared [T, D] tables or per-batch [B, T, D].
  std::vector<std::int64_t> table_row(static_cast<std::size_t>(B * T));
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t t = 0; t < T; ++t) table_row[b * T + t] = c.dim() == 2 ? t : b * T + t;
  at::parallel_for(0, B * T, 8, [&](std::int64_t lo, std::int64_t hi) {
    if (xc.scalar_type() == torch::kFloat32)
      cpu::rope_rows(xc.data_ptr<float>() + lo * H * D, y.data_ptr<float>() + lo * H * D, c.data_ptr<float>(),
                     s.data_ptr<float>(), table_row.data() + lo, hi - lo, H, D, sign);
    else
      cpu::rope_rows(xc.data_ptr<c10::BFloat16>() + lo * H * D, y.data_ptr<c10::BFloat16>() + lo * H * D,
                     c.data_ptr<float>(), s.data_ptr<float>(), table_row.data() + lo, hi - lo, H, D, sign);
  });
  return y;
}

// Rotation is orthogonal: the gradient is the inverse rotation of the incoming gradient.
class RopeCpu : public torch::autograd::Function<RopeCpu> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& cos, const torch::Tensor& sin) {
    ctx->save_for_backward({cos, sin});
    return rope_cpu(x, cos, sin, 1.0f);
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    auto saved = ctx->get_saved_variables();
    return {rope_cpu(grads[0], saved[0], saved[1], -1.0f), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  if (fused_cpu_applies(x, cos, sin)) return RopeCpu::apply(x, cos, sin);
  return rope_reference(x, cos, sin);
}

}  // namespace llmctl::kernels
