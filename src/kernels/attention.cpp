#include "llmctl/kernels/attention.h"

#include <cmath>

#include "cpu/flash_attention_cpu.h"

namespace llmctl::kernels {

torch::Tensor causal_attention_reference(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  const bool gqa = q.size(2) != k.size(2);
  auto out = at::scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                              /*attn_mask=*/{}, /*dropout_p=*/0.0, /*is_causal=*/true,
                                              /*scale=*/std::nullopt, /*enable_gqa=*/gqa);
  return out.transpose(1, 2);
}

bool causal_attention_fused(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  auto is = [&](const torch::Tensor& t) {
    return t.device().is_cpu() && t.scalar_type() == torch::kBFloat16 && t.dim() == 4;
  };
  if (!is(q) || !is(k) || !is(v) || k.sizes() != v.sizes()) return false;
  if (q.size(0) != k.size(0) || q.size(1) != k.size(1) || q.size(3) != k.size(3)) return false;
  if (k.size(2) == 0 || q.size(2) % k.size(2) != 0 || q.size(1) == 0) return false;
  return cpu::flash_attention_bf16_usable(q.size(3), q.size(1));
}

namespace {

cpu::AttentionShape shape_of(const torch::Tensor& q, const torch::Tensor& k) {
  return {q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), 1.0f / std::sqrt(static_cast<float>(q.size(3)))};
}

const c10::BFloat16* bf(const torch::Tensor& t) { return t.data_ptr<c10::BFloat16>(); }
c10::BFloat16* bf(torch::Tensor& t) { return t.data_ptr<c10::BFloat16>(); }

class CausalAttentionCpu : public torch::autograd::Function<CausalAttentionCpu> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& q_in,
                               const torch::Tensor& k_in, const torch::Tensor& v_in) {
    auto q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
    auto out = torch::empty_like(q);
    auto lse = torch::empty({q.size(0), q.size(2), q.size(1)}, q.options().dtype(torch::kFloat32));
    cpu::flash_attention_bf16_forward(shape_of(q, k), bf(q), bf(k), bf(v), bf(out), lse.data_ptr<float>());
    ctx->save_for_backward({q, k, v, out, lse});
    return out;
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    auto s = ctx->get_saved_variables();
    const auto &q = s[0], &k = s[1], &v = s[2], &out = s[3], &lse = s[4];
    auto dout = grads[0].to(torch::kBFloat16).contiguous();
    auto dq = torch::empty_like(q), dk = torch::empty_like(k), dv = torch::empty_like(v);
    cpu::flash_attention_bf16_backward(shape_of(q, k), bf(q), bf(k), bf(v), bf(out), bf(dout),
                                       lse.data_ptr<float>(), bf(dq), bf(dk), bf(dv));
    return {dq, dk, dv};
  }
};

}  // namespace

torch::Tensor causal_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  if (causal_attention_fused(q, k, v)) return CausalAttentionCpu::apply(q, k, v);
  return causal_attention_reference(q, k, v);
}

}  // namespace llmctl::kernels
