// AWQ int4 inference: the CPU int4 GEMM (every instruction-set path), the CUDA w4a16
// kernels, and the engine on an AWQ model directory, each against the dequantized weights.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "llmctl/engine/engine.h"
#include "llmctl/io/model_dir.h"
#include "llmctl/kernels/linear.h"
#include "llmctl/kernels/rmsnorm.h"
#include "llmctl/quant/awq.h"
#include "test_helpers.h"

using namespace llmctl;

namespace {

struct IsaGuard {
  ~IsaGuard() { kernels::force_int4_isa("auto"); }
};

std::vector<std::string> cpu_isas() {
  std::vector<std::string> out;
  IsaGuard restore;
  for (const char* isa : {"scalar", "avx2", "vnni"})
    if (kernels::force_int4_isa(isa)) out.push_back(isa);
  return out;
}

// The error the int8 activation rounding allows: each x[k] moves by at most sx/2 =
// max|x over its group of 128| / 254, so |y - x W^T| <= sum_g amax_g / 254 * sum_{k in g} |W[n][k]|,
// plus fp32 summation slack, plus the output's own rounding for bf16.
torch::Tensor allowed_error(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& ref, bool bf16_out) {
  const auto K = x.size(1), G = K / 128;
  auto amax = x.abs().view({x.size(0), G, 128}).amax(2) / 254.0;          // [M, G]
  auto wabs = w.abs().view({w.size(0), G, 128}).sum(2);                    // [N, G]
  auto bound = amax.to(torch::kFloat64).matmul(wabs.t().to(torch::kFloat64));
  bound += 1e-5 * x.abs().to(torch::kFloat64).matmul(w.abs().t().to(torch::kFloat64)) + 1e-6;
  if (bf16_out) bound += ref.abs() * (1.0 / 128);
  return bound;
}

}  // namespace

// The int4 kernel against x W^T + b on the dequantized weights, for every instruction-set
// path this CPU has, fp32 and bf16 inputs, with and without bias, odd row counts (1, 3,
// 17: not multiples of the row tile) and shapes whose K is a group multiple but not a power
// of two and whose N is not a multiple of the column blocks the threads get.
TEST(Int4Cpu, MatchesDequantizedMatmulWithinActivationRounding) {
  IsaGuard restore;
  torch::manual_seed(0);
  const std::vector<std::pair<std::int64_t, std::int64_t>> shapes = {{128, 8}, {384, 40}, {1408, 200}};
  for (const auto& isa : cpu_isas()) {
    ASSERT_TRUE(kernels::force_int4_isa(isa));
    EXPECT_EQ(kernels::int4_isa(), isa);
    for (const auto& [K, N] : shapes)
      for (int group : {128, 256}) {
        if (K % group) continue;
        auto w = torch::randn({N, K});
        auto awq = awq_quantize(w, group);
        auto wdq = awq_dequantize(awq);
        for (bool with_bias : {false, true}) {
          auto b = with_bias ? torch::randn({N}) : torch::Tensor();
          kernels::PackedLinear lin(awq, b);
          for (std::int64_t rows : {1, 3, 17})
            for (auto dt : {torch::kFloat32, torch::kBFloat16}) {
              auto x = (torch::randn({rows, K}) * torch::rand({1, K}) * 4).to(dt);  // uneven channels
              auto y = lin(x);
              ASSERT_EQ(y.scalar_type(), dt);
              ASSERT_EQ(y.sizes(), (std::vector<std::int64_t>{rows, N}));
              auto xf = x.to(torch::kFloat32);
              auto ref = xf.to(torch::kFloat64).matmul(wdq.t().to(torch::kFloat64));
              if (with_bias) ref += b.to(torch::kFloat64);
              auto err = (y.to(torch::kFloat64) - ref).abs();
              auto bound = allowed_error(xf, wdq, ref, dt == torch::kBFloat16);
              EXPECT_TRUE((err <= bound).all().item<bool>())
                  << isa << " K=" << K << " N=" << N << " g=" << group << " rows=" << rows << " dtype=" << dt
                  << " max excess " << (err - bound).max().item<double>();
              // The rounding is real but small: a typical output is much closer than the bound.
              EXPECT_LT(err.mean().item<double>(), 0.25 * bound.mean().item<double>());
            }
        }
      }
  }
}

// Every path computes the same integer dot products; only the float summation order of
// the group terms differs.
TEST(Int4Cpu, AllInstructionSetsAgree) {
  IsaGuard restore;
  torch::manual_seed(1);
  auto awq = awq_quantize(torch::randn({72, 640}), 128);
  kernels::PackedLinear lin(awq, torch::randn({72}));
  auto x = torch::randn({2, 5, 640});  // leading dims kept
  ASSERT_TRUE(kernels::force_int4_isa("scalar"));
  auto ref = lin(x);
  EXPECT_EQ(ref.sizes(), (std::vector<std::int64_t>{2, 5, 72}));
  for (const auto& isa : cpu_isas()) {
    ASSERT_TRUE(kernels::force_int4_isa(isa));
    EXPECT_TRUE(torch::allclose(lin(x), ref, 1e-5, 1e-4)) << isa;
  }
  EXPECT_FALSE(kernels::force_int4_isa("sse9"));
}

// Group sizes the int4 kernel cannot take run on the dequantized fp32 weight.
TEST(Int4Cpu, OtherGroupSizesFallBackToTheDequantizedWeight) {
  torch::manual_seed(2);
  auto awq = awq_quantize(torch::randn({16, 192}), 64);
  kernels::PackedLinear lin(awq, {});
  auto x = torch::randn({3, 192});
  EXPECT_TRUE(torch::allclose(lin(x), x.matmul(awq_dequantize(awq).t()), 1e-4, 1e-4));
}

TEST(Int4Cuda, MatchesDequantizedMatmul) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU on this machine";
  torch::manual_seed(3);
  for (const auto& [K, N] : std::vector<std::pair<std::int64_t, std::int64_t>>{{128, 8}, {384, 40}, {1408, 2816}}) {
    auto awq = awq_quantize(torch::randn({N, K}), 128);
    auto wdq = awq_dequantize(awq);
    auto b = torch::randn({N});
    AwqTensor dev{awq.qweight.cuda(), awq.qzeros.cuda(), awq.scales.cuda(), awq.group_size};
    kernels::PackedLinear lin(dev, b);
    for (std::int64_t rows : {1, 3, 8, 17, 64})  // GEMV up to 8 rows, dequantize + cuBLAS above
      for (auto dt : {torch::kFloat32, torch::kFloat16, torch::kBFloat16}) {
        auto x = torch::randn({rows, K}).to(dt);
        auto y = lin(x.cuda());
        ASSERT_EQ(y.scalar_type(), dt);
        auto ref = x.to(torch::kFloat64).matmul(wdq.t().to(torch::kFloat64)) + b.to(torch::kFloat64);
        // fp32: summation order (TF32 is off by default); fp16/bf16: the inputs' and
        // outputs' own precision through the GEMM.
        const double tol = dt == torch::kFloat32 ? 1e-3 : dt == torch::kFloat16 ? 2e-2 : 1e-1;
        const double scale = ref.abs().max().item<double>();
        EXPECT_LT((y.cpu().to(torch::kFloat64) - ref).abs().max().item<double>(), tol * scale)
            << "K=" << K << " N=" << N << " rows=" << rows << " dtype=" << dt;
      }
  }
}

namespace {

// A random model saved as an AWQ directory (round-to-nearest int4, group 128).
struct AwqModel {
  TempDir dir;
  ModelConfig cfg;
  explicit AwqModel(const std::string& type) {
    cfg = small_config(97, 128, 4, 32, type);
    cfg.intermediate_size = 256;
    cfg.max_position_embeddings = 256;
    cfg.initializer_range = 0.3;
    cfg.eos_token_ids = {};
    torch::manual_seed(7);
    CausalLM model(cfg);
    AwqLinears linears;
    for (const auto& item : model->named_parameters()) {
      const auto& name = item.key();
      const auto& p = item.value();
      const auto dot = name.rfind(".weight");
      if (name.find("_proj.weight") == std::string::npos || dot == std::string::npos) continue;
      linears[name.substr(0, dot)] = awq_quantize(p.detach(), 128);
    }
    QuantizationConfig q;
    q.method = "awq";
    q.bits = 4;
    q.group_size = 128;
    save_awq_model(model, linears, q, dir.path);
  }
};

}  // namespace

// Greedy decoding of an AWQ model directory through the engine (int4 kernel, int8
// activations) against the plain model on the same directory loaded dequantized (fp32
// weights (q - z) * s). The int8 activation rounding (up to 0.4% of a group's largest
// value per element, at every projection) moves this random model's logits by up to ~3% of
// their range, so a near-tie may flip: scored teacher-forced on the engine's own tokens (one
// flip does not derail the rest), at least 90% of the steps must pick the dequantized
// model's argmax, and every step's token must be within 5% of the logit range of it.
TEST(Int4Engine, GreedyMatchesTheDequantizedModel) {
  IsaGuard restore;
  for (const std::string type : {"llama", "qwen2"}) {
    AwqModel m(type);
    ASSERT_TRUE(load_model_config(m.dir.path).quantization.enabled());
    auto plain = load_model(m.dir.path);
    plain->eval();
    for (const auto& isa : cpu_isas()) {
      ASSERT_TRUE(kernels::force_int4_isa(isa));
      EngineConfig ec;
      ec.block_size = 8;
      ec.num_blocks = 64;
      ec.max_num_batched_tokens = 16;  // chunked prefill: 1..16-row GEMMs
      Engine engine(m.dir.path, ec);
      const std::vector<std::vector<int>> prompts = {{5, 6, 7}, {42}, {11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21}};
      SamplingParams sp;
      sp.temperature = 0;
      sp.max_new_tokens = 24;
      sp.ignore_eos = true;
      auto outs = engine.generate(prompts, sp);
      int agree = 0, total = 0;
      for (std::size_t i = 0; i < prompts.size(); ++i) {
        std::vector<std::int64_t> ids(prompts[i].begin(), prompts[i].end());
        for (int t : outs[i].output_token_ids) ids.push_back(t);
        torch::NoGradGuard ng;
        auto logits = plain->forward(torch::tensor(ids).unsqueeze(0))[0];
        const auto P = static_cast<std::int64_t>(prompts[i].size());
        for (std::size_t j = 0; j < outs[i].output_token_ids.size(); ++j) {
          auto row = logits[P - 1 + static_cast<std::int64_t>(j)];
          const int tok = outs[i].output_token_ids[j];
          const double range = (row.max() - row.min()).item<double>();
          agree += row.argmax().item<int>() == tok;
          ++total;
          EXPECT_LE((row.max() - row[tok]).item<double>(), 0.05 * range) << type << " " << isa << " step " << j;
        }
      }
      EXPECT_GE(agree, total * 9 / 10) << type << " " << isa << ": " << agree << "/" << total;
    }
  }
}
