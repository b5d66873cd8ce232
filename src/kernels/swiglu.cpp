#include "llmctl/kernels/swiglu.h"

#include <ATen/Parallel.h>

#include "cpu/swiglu_cpu.h"

namespace llmctl::kernels {

torch::Tensor swiglu_reference(const torch::Tensor& gate, const torch::Tensor& up) {
  return torch::nn::functional::silu(gate) * up;
}

namespace {

constexpr std::int64_t kGrain = 16384;

bool fused_cpu_applies(const torch::Tensor& g, const torch::Tensor& u) {
  const auto t = g.scalar_type();
  return g.device().is_cpu() && u.device().is_cpu() && (t == torch::kFloat32 || t == torch::kBFloat16) &&
         u.scalar_type() == t && g.sizes() == u.sizes();
}

template <typename T>
void forward_into(const torch::Tensor& g, const torch::Tensor& u, torch::Tensor& h) {
  const T *gp = g.data_ptr<T>(), *up = u.data_ptr<T>();
  T* hp = h.data_ptr<T>();
  at::parallel_for(0, g.numel(), kGrain, [&](std::int64_t b, std::int64_t e) {
    cpu::swiglu_forward(gp + b, up + b, hp + b, e - b);
  });
}

template <typename T>
void backward_into(const torch::Tensor& g, const torch::Tensor& u, const torch::Tensor& dh, torch::Tensor& dg,
                   torch::Tensor& du) {
  const T *gp = g.data_ptr<T>(), *up = u.data_ptr<T>(), *dhp = dh.data_ptr<T>();
  T *dgp = dg.data_ptr<T>(), *dup = du.data_ptr<T>();
  at::parallel_for(0, g.numel(), kGrain, [&](std::int64_t b, std::int64_t e) {
    cpu::swiglu_backward(gp + b, up + b, dhp + b, dgp + b, dup + b, e - b);
  });
}

class SwigluCpu : public torch::autograd::Function<SwigluCpu> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& gate,
                               const torch::Tensor& up) {
    auto g = gate.contiguous(), u = up.contiguous();
    auto h = torch::empty_like(g);
    if (g.scalar_type() == torch::kFloat32)
      forward_into<float>(g, u, h);
    else
      forward_into<c10::BFloat16>(g, u, h);
    ctx->save_for_backward({g, u});
    return h;
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &g = saved[0], &u = saved[1];
    auto dh = grads[0].to(g.scalar_type()).contiguous();
    auto dg = torch::empty_like(g), du = torch::empty_like(u);
    if (g.scalar_type() == torch::kFloat32)
      backward_into<float>(g, u, dh, dg, du);
    else
      backward_into<c10::BFloat16>(g, u, dh, dg, du);
    return {dg, du};
  }
};

}  // namespace

torch::Tensor swiglu(const torch::Tensor& gate, const torch::Tensor& up) {
  if (fused_cpu_applies(gate, up)) return SwigluCpu::apply(gate, up);
  return swiglu_reference(gate, up);
}

torch::Tensor swiglu_packed(const torch::Tensor& gate_up) {
  const auto F = gate_up.size(-1) / 2;
  const auto t = gate_up.scalar_type();
  if (!gate_up.device().is_cpu() || (t != torch::kFloat32 && t != torch::kBFloat16))
    return swiglu_reference(gate_up.narrow(-1, 0, F), gate_up.narrow(-1, F, F));
  auto gu = gate_up.contiguous();
  auto out_sizes = gu.sizes().vec();
  out_sizes.back() = F;
  auto h = torch::empty(out_sizes, gu.options());
  const auto rows = gu.numel() / (2 * F);
  auto run = [&](auto* in, auto* out) {
    at::parallel_for(0, rows, std::max<std::int64_t>(1, kGrain / F), [&](std::int64_t b, std::int64_t e) {
      for (auto r = b; r < e; ++r) cpu::swiglu_forward(in + r * 2 * F, in + r * 2 * F + F, out + r * F, F);
    });
  };
  if (t == torch::kFloat32)
    run(gu.data_ptr<float>(), h.data_ptr<float>());
  else
    run(gu.data_ptr<c10::BFloat16>(), h.data_ptr<c10::BFloat16>());
  return h;
}

}  // namespace llmctl::kernels
