#include "llmctl/kernels/cross_entropy.h"

#include <ATen/Parallel.h>

#include "cpu/cross_entropy_cpu.h"
#include "llmctl/util/error.h"

namespace llmctl::kernels {

torch::Tensor cross_entropy_sum_reference(const torch::Tensor& logits, const torch::Tensor& target) {
  return torch::nn::functional::cross_entropy(logits.to(torch::kFloat32), target,
                                              torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
}

namespace {

bool fused_cpu_applies(const torch::Tensor& logits, const torch::Tensor& target) {
  const auto t = logits.scalar_type();
  return logits.device().is_cpu() && (t == torch::kFloat32 || t == torch::kBFloat16) && logits.dim() == 2 &&
         logits.size(1) > 0 && target.dim() == 1 && target.size(0) == logits.size(0) &&
         target.scalar_type() == torch::kInt64;
}

template <typename T>
void forward_rows(const torch::Tensor& x, const std::int64_t* t, float* lse, float* loss) {
  const auto cols = x.size(1);
  const T* xp = x.data_ptr<T>();
  at::parallel_for(0, x.size(0), 8, [&](std::int64_t b, std::int64_t e) {
    cpu::cross_entropy_forward_rows(xp + b * cols, t + b, lse + b, loss + b, e - b, cols);
  });
}

template <typename T>
void backward_rows(const torch::Tensor& x, const std::int64_t* t, const float* lse, float g, torch::Tensor& dx) {
  const auto cols = x.size(1);
  const T* xp = x.data_ptr<T>();
  T* dp = dx.data_ptr<T>();
  at::parallel_for(0, x.size(0), 8, [&](std::int64_t b, std::int64_t e) {
    cpu::cross_entropy_backward_rows(xp + b * cols, t + b, lse + b, g, dp + b * cols, e - b, cols);
  });
}

class CrossEntropyCpu : public torch::autograd::Function<CrossEntropyCpu> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& logits,
                               const torch::Tensor& target) {
    auto x = logits.contiguous();
    auto t = target.contiguous();
    const auto V = x.size(1);
    // An id outside the vocabulary would read out of bounds: refuse it here.
    if (t.numel() > 0 && (t.min().item<std::int64_t>() < 0 || t.max().item<std::int64_t>() >= V))
      throw Error("cross_entropy: a target id is outside the vocabulary of " + std::to_string(V));
    auto lse = torch::empty({x.size(0)}, torch::kFloat32);
    auto loss = torch::empty({x.size(0)}, torch::kFloat32);
    if (x.scalar_type() == torch::kFloat32)
      forward_rows<float>(x, t.data_ptr<std::int64_t>(), lse.data_ptr<float>(), loss.data_ptr<float>());
    else
      forward_rows<c10::BFloat16>(x, t.data_ptr<std::int64_t>(), lse.data_ptr<float>(), loss.data_ptr<float>());
    ctx->save_for_backward({x, t, lse});
    return loss.sum();
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &t = saved[1], &lse = saved[2];
    const float g = grads[0].item<float>();
    auto dx = torch::empty_like(x);
    if (x.scalar_type() == torch::kFloat32)
      backward_rows<float>(x, t.data_ptr<std::int64_t>(), lse.data_ptr<float>(), g, dx);
    else
      backward_rows<c10::BFloat16>(x, t.data_ptr<std::int64_t>(), lse.data_ptr<float>(), g, dx);
    return {dx, torch::Tensor()};
  }
};

}  // namespace

torch::Tensor cross_entropy_sum(const torch::Tensor& logits, const torch::Tensor& target) {
  if (fused_cpu_applies(logits, target)) return CrossEntropyCpu::apply(logits, target);
  return cross_entropy_sum_reference(logits, target);
}

}  // namespace llmctl::kernels
