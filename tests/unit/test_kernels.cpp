#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "llmctl/kernels/rmsnorm.h"
#include "llmctl/kernels/attention.h"
#include "llmctl/kernels/cross_entropy.h"
#include "llmctl/kernels/linear.h"
#include "llmctl/kernels/rope.h"
#include "llmctl/kernels/swiglu.h"
#include "llmctl/model/transformer.h"
#include "test_helpers.h"

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

// The bf16 inference kernel (taken when no gradient is wanted) against the torch-ops path:
// the same roundings, so equal but for rare one-ulp flips where fp32 sums differ in order.
TEST(RMSNormCpu, Bf16InferenceMatchesReference) {
  torch::NoGradGuard no_grad;
  for (std::int64_t cols : {1, 7, 64, 333, 1024}) {
    torch::manual_seed(cols);
    auto x = (torch::randn({3, 37, cols}) * 3).to(torch::kBFloat16);
    auto w = torch::randn({cols}).to(torch::kBFloat16);
    auto fused = kernels::rms_norm(x, w, 1e-6);
    auto ref = kernels::rms_norm_reference(x, w, 1e-6);
    ASSERT_EQ(fused.scalar_type(), torch::kBFloat16);
    ASSERT_EQ(fused.sizes(), x.sizes());
    const auto diff = (fused.to(torch::kFloat32) - ref.to(torch::kFloat32)).abs();
    const auto ulp = ref.to(torch::kFloat32).abs() * (1.0 / 128) + 1e-30;
    EXPECT_TRUE((diff <= ulp).all().item<bool>()) << "cols " << cols;
    EXPECT_GE((diff == 0).to(torch::kFloat32).mean().item<double>(), 0.99) << "cols " << cols;
  }
  auto x = torch::randn({16, 8}).to(torch::kBFloat16).t();  // non-contiguous
  auto w = torch::randn({16}).to(torch::kBFloat16);
  EXPECT_TRUE(torch::allclose(kernels::rms_norm(x, w, 1e-5).to(torch::kFloat32),
                              kernels::rms_norm_reference(x, w, 1e-5).to(torch::kFloat32), 1e-2, 1e-2));
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

// Fused bf16 causal attention (forward and backward) against LibTorch's attention computed
// in fp32 from the same bf16 inputs: block tails (T not a multiple of 64, odd last
// blocks), a single row, GQA and plain multi-head, head sizes 16 / 64 / 128.
TEST(CausalAttentionCpu, ForwardAndBackwardMatchReference) {
  struct Case { std::int64_t B, T, H, KV, D; };
  const Case cases[] = {{2, 1, 4, 2, 64}, {2, 7, 4, 2, 64}, {1, 64, 2, 2, 16}, {2, 100, 8, 2, 64},
                        {1, 131, 4, 1, 128}, {1, 257, 2, 2, 32}};
  // Relative error, against a floor for gradients that are zero in exact arithmetic (T = 1:
  // one visible key, so the scores get no gradient).
  auto rel = [](const torch::Tensor& a, const torch::Tensor& b) {
    const double floor = 1e-2 * std::sqrt(static_cast<double>(b.numel()));
    return (a.to(torch::kFloat32) - b).norm().item<double>() / std::max(b.norm().item<double>(), floor);
  };
  for (const auto& c : cases) {
    torch::manual_seed(c.T);
    auto q0 = torch::randn({c.B, c.T, c.H, c.D}).to(torch::kBFloat16);
    auto k0 = torch::randn({c.B, c.T, c.KV, c.D}).to(torch::kBFloat16);
    auto v0 = torch::randn({c.B, c.T, c.KV, c.D}).to(torch::kBFloat16);
    auto dout = torch::randn({c.B, c.T, c.H, c.D});
    if (!kernels::causal_attention_fused(q0, k0, v0)) GTEST_SKIP() << "this CPU has no AVX-512 BF16";
    auto q1 = q0.clone().requires_grad_(), k1 = k0.clone().requires_grad_(), v1 = v0.clone().requires_grad_();
    auto q2 = q0.to(torch::kFloat32).requires_grad_(), k2 = k0.to(torch::kFloat32).requires_grad_(),
         v2 = v0.to(torch::kFloat32).requires_grad_();
    auto fused = kernels::causal_attention(q1, k1, v1);
    auto ref = kernels::causal_attention_reference(q2, k2, v2);
    ASSERT_EQ(fused.sizes(), ref.sizes());
    ASSERT_EQ(fused.scalar_type(), torch::kBFloat16);
    const std::string at = "T " + std::to_string(c.T) + " H " + std::to_string(c.H) + "/" + std::to_string(c.KV) +
                           " D " + std::to_string(c.D);
    EXPECT_LT(rel(fused, ref), 8e-3) << at;
    EXPECT_LT((fused.to(torch::kFloat32) - ref).abs().max().item<float>(), 4e-2) << at;
    (fused.to(torch::kFloat32) * dout).sum().backward();
    (ref * dout).sum().backward();
    EXPECT_LT(rel(q1.grad(), q2.grad()), 2e-2) << at << " dq";
    EXPECT_LT(rel(k1.grad(), k2.grad()), 2e-2) << at << " dk";
    EXPECT_LT(rel(v1.grad(), v2.grad()), 2e-2) << at << " dv";
  }
  // What the kernel does not take goes to LibTorch: fp32, or a head size not a multiple of 16.
  auto f = torch::randn({1, 5, 2, 64});
  EXPECT_FALSE(kernels::causal_attention_fused(f, f, f));
  auto odd = torch::randn({1, 5, 2, 24}).to(torch::kBFloat16);
  EXPECT_FALSE(kernels::causal_attention_fused(odd, odd, odd));
  EXPECT_TRUE(torch::allclose(kernels::causal_attention(f, f, f), kernels::causal_attention_reference(f, f, f)));
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
    // micro-kernel row tails; bf16: 17 and 70 take the BF16 dot-product kernel where the CPU
    // has one, 300 oneDNN
    for (std::int64_t m : {1, 3, 8, 13, 17, 70, 300})
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

// Timing, not a check: bf16 PackedLinear (the BF16 dot-product kernel between
// kPackedMaxRows and kBf16DotMaxRows rows) against oneDNN's at::linear, minimind2-small's
// gate|up projection (2816 x 512). LLMCTL_BENCH_GEMM=1.
TEST(PackedLinear, Bf16Benchmark) {
  const char* env = std::getenv("LLMCTL_BENCH_GEMM");
  if (!env || std::string(env) != "1") GTEST_SKIP() << "set LLMCTL_BENCH_GEMM=1 to time";
  torch::NoGradGuard no_grad;
  const std::int64_t N = 2816, K = 512;
  auto w = torch::randn({N, K}).to(torch::kBFloat16);
  kernels::PackedLinear lin(w, {});
  for (std::int64_t m : {1, 4, 6, 8, 12, 16, 17, 32, 64, 128, 256, 512}) {
    auto x = torch::randn({m, K}).to(torch::kBFloat16);
    const double ours = best_ms([&] { lin(x); }), onednn = best_ms([&] { at::linear(x, w); });
    const double gflop = 2.0 * m * N * K / 1e9;
    std::printf("[bench] bf16 linear %ldx%ldx%ld: PackedLinear %.3f ms (%.0f GFLOP/s), "
                "at::linear %.3f ms (%.0f GFLOP/s)\n",
                static_cast<long>(m), static_cast<long>(N), static_cast<long>(K), ours, gflop / ours * 1e3, onednn,
                gflop / onednn * 1e3);
  }
}

// Timing, not a check: one-row PackedLinear (a decode step's GEMV) over 105 MB of fp32
// weights, more than any cache holds, as a memory-bandwidth figure. LLMCTL_BENCH_GEMM=1.
TEST(PackedLinear, DecodeBandwidthBenchmark) {
  const char* env = std::getenv("LLMCTL_BENCH_GEMM");
  if (!env || std::string(env) != "1") GTEST_SKIP() << "set LLMCTL_BENCH_GEMM=1 to time";
  torch::NoGradGuard no_grad;
  const std::int64_t N = 25600, K = 1024;
  kernels::PackedLinear lin(torch::randn({N, K}), {});
  auto x = torch::randn({1, K});
  const double ms = best_ms([&] { lin(x); });
  std::printf("[bench] fp32 linear 1x%ldx%ld (%.0f MB): %.2f ms, %.1f GB/s\n", static_cast<long>(N),
              static_cast<long>(K), N * K * 4 / 1e6, ms, N * K * 4 / (ms * 1e6));
}

// Timing, not a check: the fused attention against LibTorch's SDPA at the training shape
// (minimind2-small, batch 8 x 512, bf16). LLMCTL_BENCH_ATTENTION=1 build/tests/llmctl_tests
// --gtest_filter=CausalAttentionCpu.Benchmark
TEST(CausalAttentionCpu, Benchmark) {
  const char* env = std::getenv("LLMCTL_BENCH_ATTENTION");
  if (!env || std::string(env) != "1") GTEST_SKIP() << "set LLMCTL_BENCH_ATTENTION=1 to time";
  torch::manual_seed(0);
  const std::int64_t B = 8, T = 512, H = 8, KV = 2, D = 64;
  auto q0 = torch::randn({B, T, H, D}).to(torch::kBFloat16);
  auto k0 = torch::randn({B, T, KV, D}).to(torch::kBFloat16);
  auto v0 = torch::randn({B, T, KV, D}).to(torch::kBFloat16);
  auto dout = torch::randn({B, T, H, D}).to(torch::kBFloat16);
  const double flops = 4.0 * B * H * T * T / 2 * D;  // causal forward; the backward is 2.5x
  for (bool fused : {false, true}) {
    auto q = q0.clone().requires_grad_(), k = k0.clone().requires_grad_(), v = v0.clone().requires_grad_();
    double fwd = 0, bwd = 0;
    const int reps = 5;
    for (int it = 0; it <= reps; ++it) {  // the first round warms up
      const auto t0 = std::chrono::steady_clock::now();
      auto o = fused ? kernels::causal_attention(q, k, v) : kernels::causal_attention_reference(q, k, v);
      const auto t1 = std::chrono::steady_clock::now();
      o.backward(dout);
      const auto t2 = std::chrono::steady_clock::now();
      if (it == 0) continue;
      fwd += std::chrono::duration<double>(t1 - t0).count() / reps;
      bwd += std::chrono::duration<double>(t2 - t1).count() / reps;
    }
    std::printf("%-6s forward %6.1f ms (%4.0f GFLOP/s)  backward %6.1f ms (%4.0f GFLOP/s)\n",
                fused ? "fused" : "sdpa", fwd * 1e3, flops / fwd / 1e9, bwd * 1e3, 2.5 * flops / bwd / 1e9);
  }
}
