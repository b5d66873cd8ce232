#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "llmctl/kernels/rmsnorm.h"
#include "llmctl/kernels/cross_entropy.h"
#include "llmctl/kernels/linear.h"
#include "llmctl/kernels/rope.h"
#include "llmctl/kernels/swiglu.h"
#include "llmctl/model/transformer.h"

using namespace llmctl;

TEST(RMSNorm, MatchesHandComputedValues) {
  // x = [3, 4]: mean square 12.5, rstd = 1/sqrt(12.5 + eps).
  auto x = torch::tensor({{3.0f, 4.0f}});
  auto w = torch::tensor({2.0f, 0.5f});
  auto y = kernels::rms_norm(x, w, 1e-6);
  float r = 1.0f / std::sqrt(12.5f + 1e-6f);
  EXPECT_NEAR(y[0][0].item<float>(), 2.0f * 3.0f * r, 1e-6);
  EXPECT_NEAR(y[0][1].item<float>(), 0.5f * 4.0f * r, 1e-6);
}

TEST(RMSNorm, Bf16RoundsBeforeTheWeightLikeHF) {
  torch::manual_seed(0);
  auto x = torch::randn({4, 64}).to(torch::kBFloat16);
  auto w = torch::randn({64}).to(torch::kBFloat16);
  auto y = kernels::rms_norm(x, w, 1e-5);
  ASSERT_EQ(y.scalar_type(), torch::kBFloat16);
  auto xf = x.to(torch::kFloat32);
  auto normed = (xf * torch::rsqrt(xf.pow(2).mean(-1, true) + 1e-5)).to(torch::kBFloat16);
  EXPECT_TRUE(torch::equal(y, w * normed));
}

TEST(RMSNorm, GradientFlowsThroughReferencePath) {
  auto x = torch::randn({3, 8}, torch::requires_grad());
  auto w = torch::ones({8}, torch::requires_grad());
  kernels::rms_norm(x, w, 1e-5).sum().backward();
  ASSERT_TRUE(x.grad().defined());
  ASSERT_TRUE(w.grad().defined());
  EXPECT_GT(w.grad().abs().sum().item<float>(), 0.0f);
}

// The fused fp32 CPU kernel (forward and its own backward) against the torch-ops path
// differentiated by autograd: odd widths, a non-contiguous input, 3-D batches.
TEST(RMSNormCpu, ForwardAndBackwardMatchReference) {
  for (std::int64_t cols : {1, 7, 64, 333, 1024}) {
    torch::manual_seed(cols);
    auto x0 = torch::randn({3, 37, cols}) * 3;
    auto w0 = torch::randn({cols});
    auto g = torch::randn({3, 37, cols});
    auto x1 = x0.clone().requires_grad_(), w1 = w0.clone().requires_grad_();
    auto x2 = x0.clone().requires_grad_(), w2 = w0.clone().requires_grad_();
    auto fused = kernels::rms_norm(x1, w1, 1e-6);
    auto ref = kernels::rms_norm_reference(x2, w2, 1e-6);
    EXPECT_TRUE(torch::allclose(fused, ref, 1e-5, 1e-5)) << "cols " << cols;
    (fused * g).sum().backward();
    (ref * g).sum().backward();
    EXPECT_TRUE(torch::allclose(x1.grad(), x2.grad(), 1e-4, 1e-5))
        << "cols " << cols << " dx max diff " << (x1.grad() - x2.grad()).abs().max().item<float>();
    EXPECT_TRUE(torch::allclose(w1.grad(), w2.grad(), 1e-4, 1e-4))
        << "cols " << cols << " dw max diff " << (w1.grad() - w2.grad()).abs().max().item<float>();
  }
  // A transposed (non-contiguous) input takes the same path.
  auto x = torch::randn({16, 8}).t();
  auto w = torch::randn({16});
  EXPECT_TRUE(torch::allclose(kernels::rms_norm(x, w, 1e-5), kernels::rms_norm_reference(x, w, 1e-5), 1e-5, 1e-5));
}

// Fused RoPE (fp32 and bf16, shared and per-batch position tables) against the torch-ops
// formula, forward and backward.
TEST(RopeCpu, ForwardAndBackwardMatchReference) {
  const std::int64_t B = 2, T = 9, H = 3, D = 16;
  for (bool per_batch : {false, true}) {
    auto pos = per_batch ? torch::randint(0, 100, {B, T}) : torch::arange(T);
    auto [cos, sin] = rope_cos_sin(pos, D, 10000.0);
    for (auto dt : {torch::kFloat32, torch::kBFloat16}) {
      torch::manual_seed(per_batch);
      auto x0 = torch::randn({B, T, H, D}).to(dt);
      auto g = torch::randn({B, T, H, D}).to(dt);
      auto x1 = x0.clone().requires_grad_(), x2 = x0.clone().requires_grad_();
      auto fused = kernels::rope(x1, cos, sin);
      auto ref = kernels::rope_reference(x2, cos, sin);
      ASSERT_EQ(fused.scalar_type(), dt);
      // bf16: the reference rounds each product, the kernel only the result (1-2 ulp).
      const double tol = dt == torch::kFloat32 ? 1e-6 : 2e-2;
      EXPECT_TRUE(torch::allclose(fused.to(torch::kFloat32), ref.to(torch::kFloat32), tol, tol))
          << "per_batch " << per_batch << " dtype " << dt;
      (fused * g).sum().backward();
      (ref * g).sum().backward();
      EXPECT_TRUE(torch::allclose(x1.grad().to(torch::kFloat32), x2.grad().to(torch::kFloat32), tol, tol))
          << "grad, per_batch " << per_batch << " dtype " << dt;
    }
  }
  // A non-contiguous view (q_proj output viewed as heads) works too.
  auto flat = torch::randn({B, T, H * D});
  auto [cos, sin] = rope_cos_sin(torch::arange(T), D, 10000.0);
  auto x = flat.view({B, T, H, D}).transpose(0, 1).contiguous().transpose(0, 1);
  EXPECT_TRUE(torch::allclose(kernels::rope(x, cos, sin), kernels::rope_reference(x, cos, sin), 1e-6, 1e-6));
}

// Fused silu(gate) * up against torch's ops, forward and backward, including large
// |gate| where the sigmoid saturates.
TEST(SwigluCpu, ForwardAndBackwardMatchReference) {
  for (auto dt : {torch::kFloat32, torch::kBFloat16}) {
    torch::manual_seed(3);
    auto g0 = (torch::randn({5, 7, 301}) * 4).to(dt);
    g0.view(-1).index_put_({0}, 95.0);
    g0.view(-1).index_put_({1}, -95.0);
    auto u0 = torch::randn({5, 7, 301}).to(dt);
    auto dh = torch::randn({5, 7, 301}).to(dt);
    auto g1 = g0.clone().requires_grad_(), u1 = u0.clone().requires_grad_();
    auto g2 = g0.clone().requires_grad_(), u2 = u0.clone().requires_grad_();
    auto fused = kernels::swiglu(g1, u1);
    auto ref = kernels::swiglu_reference(g2, u2);
    ASSERT_EQ(fused.scalar_type(), dt);
    const double tol = dt == torch::kFloat32 ? 1e-5 : 3e-2;
    auto f32 = [](const torch::Tensor& t) { return t.to(torch::kFloat32); };
    EXPECT_TRUE(torch::allclose(f32(fused), f32(ref), tol, tol))
        << dt << " max diff " << (f32(fused) - f32(ref)).abs().max().item<float>();
    (fused * dh).sum().backward();
    (ref * dh).sum().backward();
    EXPECT_TRUE(torch::allclose(f32(g1.grad()), f32(g2.grad()), tol, tol))
        << dt << " dgate max diff " << (f32(g1.grad()) - f32(g2.grad())).abs().max().item<float>();
    EXPECT_TRUE(torch::allclose(f32(u1.grad()), f32(u2.grad()), tol, tol)) << dt;
  }
}

// Fused cross-entropy over the vocabulary against fp32 log-softmax + NLL, forward and
// backward, for fp32 and bf16 logits and a vocabulary that is not a multiple of 16.
TEST(CrossEntropyCpu, ForwardAndBackwardMatchReference) {
  for (auto dt : {torch::kFloat32, torch::kBFloat16}) {
    for (std::int64_t V : {5, 37, 6400}) {
      torch::manual_seed(V);
      auto x0 = (torch::randn({23, V}) * 3).to(dt);
      auto t = torch::randint(0, V, {23});
      auto x1 = x0.clone().requires_grad_(), x2 = x0.clone().requires_grad_();
      auto fused = kernels::cross_entropy_sum(x1, t);
      auto ref = kernels::cross_entropy_sum_reference(x2, t);
      ASSERT_EQ(fused.scalar_type(), torch::kFloat32);
      EXPECT_NEAR(fused.item<float>(), ref.item<float>(), 1e-4 * std::abs(ref.item<float>())) << dt << " V " << V;
      (fused * 0.5).backward();
      (ref * 0.5).backward();
      const double tol = dt == torch::kFloat32 ? 1e-6 : 4e-3;
      EXPECT_TRUE(torch::allclose(x1.grad().to(torch::kFloat32), x2.grad().to(torch::kFloat32), tol, tol))
          << dt << " V " << V << " max diff "
          << (x1.grad().to(torch::kFloat32) - x2.grad().to(torch::kFloat32)).abs().max().item<float>();
    }
  }
  auto x = torch::randn({2, 4});
  EXPECT_THROW(kernels::cross_entropy_sum(x, torch::tensor({0, 4}, torch::kInt64)), std::exception);
}

// The fused CUDA kernel against the CPU path, for each dtype and a ragged width that is
// not a multiple of the block size. Skips cleanly without a GPU.
TEST(RMSNormCuda, MatchesCpuPath) {
  if (!kernels::built_with_cuda()) GTEST_SKIP() << "built without CUDA kernels";
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU on this machine";
  torch::NoGradGuard no_grad;
  for (auto dt : {torch::kFloat32, torch::kFloat16, torch::kBFloat16}) {
    for (std::int64_t cols : {1, 64, 333, 4096}) {
      torch::manual_seed(cols);
      auto x = torch::randn({7, 5, cols}).to(dt);
      auto w = torch::randn({cols}).to(dt);
      auto expect = kernels::rms_norm_reference(x, w, 1e-6);
      auto got = kernels::rms_norm(x.cuda(), w.cuda(), 1e-6).cpu();
      ASSERT_EQ(got.scalar_type(), dt);
      double tol = dt == torch::kFloat32 ? 1e-5 : (dt == torch::kFloat16 ? 2e-3 : 2e-2);
      EXPECT_TRUE(torch::allclose(got.to(torch::kFloat32), expect.to(torch::kFloat32), tol, tol))
          << "dtype " << dt << " cols " << cols << " max diff "
          << (got.to(torch::kFloat32) - expect.to(torch::kFloat32)).abs().max().item<float>();
    }
  }
}

TEST(PackedLinear, MatchesAtLinear) {
  torch::manual_seed(4);
  for (auto dt : {torch::kFloat32, torch::kBFloat16})
    for (std::int64_t m : {1, 3, 8, 13, 70})   // micro-kernel row tails; 70: bf16 takes oneDNN
      for (std::int64_t n : {1, 7, 32, 45, 130})  // panel tails (32 columns per panel)
        for (std::int64_t k : {5, 16, 100}) {
          auto x = torch::randn({m, k}).to(dt), w = torch::randn({n, k}).to(dt), b = torch::randn({n}).to(dt);
          auto ref = at::linear(x.to(torch::kFloat64), w.to(torch::kFloat64), b.to(torch::kFloat64));
          auto y = kernels::PackedLinear(w, b)(x);
          ASSERT_EQ(y.scalar_type(), dt);
          ASSERT_EQ(y.sizes(), ref.sizes());
          const double tol = dt == torch::kFloat32 ? 1e-4 : 0.1;  // bf16: the output rounding
          EXPECT_TRUE(torch::allclose(y.to(torch::kFloat64), ref, tol, tol)) << m << "x" << n << "x" << k;
          auto y3 = kernels::PackedLinear(w, {})(x.unsqueeze(0));  // leading dims kept, no bias
          ASSERT_EQ(y3.dim(), 3);
          EXPECT_TRUE(torch::allclose(y3.squeeze(0).to(torch::kFloat64),
                                      at::linear(x.to(torch::kFloat64), w.to(torch::kFloat64)), tol, tol));
        }
}

TEST(PackedLinear, RowsDoNotDependOnTheirBatch) {
  // What makes prefix-cache hits and decode steps bit-identical to a cold prefill.
  torch::manual_seed(5);
  auto w = torch::randn({100, 64}), x = torch::randn({29, 64});
  kernels::PackedLinear lin(w, torch::randn({100}));
  auto all = lin(x);
  for (std::int64_t start : {0, 1, 5, 20, 28}) EXPECT_TRUE(torch::equal(lin(x.narrow(0, start, 29 - start)), all.narrow(0, start, 29 - start)));
  EXPECT_TRUE(torch::equal(lin(x.narrow(0, 7, 1)), all.narrow(0, 7, 1)));
}
