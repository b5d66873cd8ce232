#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "llmctl/kernels/rmsnorm.h"

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
