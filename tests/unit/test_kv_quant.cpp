// Quantised KV cache (int8 | int4): the per-(token, head) asymmetric scheme's error bound,
// the CPU write kernel against quantize_kv, paged attention over quantised caches against
// attention over the dequantised cache.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "llmctl/kernels/paged_attention.h"
#include "llmctl/util/error.h"
#include "test_helpers.h"

using namespace llmctl;
using kernels::KvCache;

namespace {

// |x - dequantize(quantize(x))| <= scale / 2 per element (plus fp32 rounding of the
// arithmetic: a few ulps of the row's magnitude).
void expect_within_half_step(const torch::Tensor& x, const torch::Tensor& deq, const torch::Tensor& params,
                             const std::string& what) {
  const auto err = (x.to(torch::kFloat32) - deq).abs();
  const auto mag = x.to(torch::kFloat32).abs().amax(-1, true);
  const auto bound = params.select(-1, 0).unsqueeze(-1) / 2 + mag * 4e-7 + 1e-30;
  EXPECT_TRUE((err <= bound).all().item<bool>()) << what << ": worst excess "
                                                 << (err - bound).max().item<double>();
}

}  // namespace

TEST(KvQuant, QuantizeDequantizeErrorIsAtMostHalfAStep) {
  torch::manual_seed(7);
  for (int bits : {8, 4}) {
    // rows of different magnitudes and offsets, a constant row, a row of zeros
    auto x = torch::randn({5, 3, 64}) * torch::tensor({0.01, 1.0, 30.0}).view({1, 3, 1}) + 2.0;
    x[0][0].fill_(1.5);
    x[1][1].zero_();
    const auto [codes, params] = kernels::quantize_kv(x, bits);
    ASSERT_EQ(codes.scalar_type(), torch::kUInt8);
    ASSERT_EQ(codes.size(-1), 64 * bits / 8);
    ASSERT_EQ(params.sizes(), (std::vector<std::int64_t>{5, 3, 2}));
    const auto deq = kernels::dequantize_kv(codes, params, bits);
    expect_within_half_step(x, deq, params, "bits " + std::to_string(bits));
    // min and max of each row are (nearly) exact: the grid spans [min, max]
    EXPECT_TRUE(torch::allclose(deq.amin(-1), x.amin(-1), 0, 1e-4));
    EXPECT_TRUE(torch::allclose(deq.amax(-1), x.amax(-1), 1e-5, 1e-4));
    EXPECT_TRUE(torch::equal(deq[0][0], x[0][0]));  // constant row: scale 0, exact
    EXPECT_TRUE(torch::equal(deq[1][1], x[1][1]));
    EXPECT_LE(codes.max().item<int>(), 255);
    if (bits == 4) {  // nibble order: element 2i low, 2i+1 high
      const auto c = kernels::quantize_kv(torch::tensor({0.0f, 15.0f}), 4).first;
      EXPECT_EQ(c[0].item<int>(), 0xF0);
    }
  }
}

TEST(KvQuant, CpuWriteKernelMatchesQuantizeKv) {
  torch::manual_seed(3);
  for (int bits : {8, 4}) {
    for (auto dt : {torch::kFloat32, torch::kBFloat16}) {
      const std::int64_t blocks = 6, kvh = 3, bs = 5, D = 32, N = 17;
      auto kc = kernels::empty_kv_cache(blocks, kvh, bs, D, dt, bits, torch::kCPU);
      auto vc = kernels::empty_kv_cache(blocks, kvh, bs, D, dt, bits, torch::kCPU);
      ASSERT_EQ(kc.data.sizes(), (std::vector<std::int64_t>{blocks, kvh, bs, D * bits / 8}));
      ASSERT_EQ(kc.params.sizes(), (std::vector<std::int64_t>{blocks, kvh, bs, 2}));
      const auto k = (torch::randn({N, kvh, D}) * 3).to(dt), v = torch::randn({N, kvh, D}).to(dt);
      std::vector<std::int64_t> slots(blocks * bs);
      std::iota(slots.begin(), slots.end(), 0);
      std::shuffle(slots.begin(), slots.end(), std::mt19937(1));
      slots.resize(N);
      const auto slot_t = torch::tensor(slots);
      kernels::write_kv_cache(k, v, kc, vc, slot_t);
      for (auto [x, c] : {std::pair{&k, &kc}, std::pair{&v, &vc}}) {
        const auto block = slot_t.div(bs, "floor"), row = slot_t.remainder(bs);
        using torch::indexing::Slice;
        const auto codes = c->data.index({block, Slice(), row}), params = c->params.index({block, Slice(), row});
        const auto [ref_codes, ref_params] = kernels::quantize_kv(*x, bits);
        EXPECT_TRUE(torch::allclose(params, ref_params, 1e-6, 1e-7));
        // Codes agree but for a rare rounding tie computed one ulp apart.
        const auto same = codes.eq(ref_codes).to(torch::kFloat32).mean().item<double>();
        EXPECT_GE(same, 0.995) << bits << " " << c10::toString(dt);
        expect_within_half_step(*x, kernels::dequantize_kv(codes, params, bits), params,
                                "write kernel, bits " + std::to_string(bits));
      }
    }
  }
}

namespace {

struct Seq {
  std::int64_t ctx, n;  // cached positions, the last n of them query rows
};

// Paged attention over a quantised cache (blocks in shuffled order, unused rows holding
// garbage codes and NaN params) == attention over the same cache dequantised to fp32, both
// through the fp kernel and the torch reference; the reference on the quantised cache too.
void check_quantized_attention(const std::vector<Seq>& seqs, std::int64_t heads, std::int64_t kv_heads,
                               std::int64_t D, std::int64_t bs, int bits, torch::ScalarType dt,
                               std::uint64_t seed = 1) {
  torch::manual_seed(seed);
  std::mt19937_64 rng(seed);
  const auto S = static_cast<std::int64_t>(seqs.size());
  std::int64_t need = 0, max_blocks = 1, N = 0;
  for (const auto& s : seqs) {
    need += (s.ctx + bs - 1) / bs;
    max_blocks = std::max(max_blocks, (s.ctx + bs - 1) / bs + 1);
    N += s.n;
  }
  const auto num_blocks = need + 2;
  std::vector<std::int32_t> ids(num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  auto make = [&] {
    auto c = kernels::empty_kv_cache(num_blocks, kv_heads, bs, D, dt, bits, torch::kCPU);
    c.data.copy_(torch::randint(0, 256, c.data.sizes(), torch::kInt32));
    c.params.fill_(NAN);
    return c;
  };
  KvCache kc = make(), vc = make();
  auto block_tables = torch::full({S, max_blocks}, 1 << 30, torch::kInt32);
  auto query_start = torch::zeros({S + 1}, torch::kInt32), context_lens = torch::zeros({S}, torch::kInt32);
  std::vector<std::int64_t> slots;
  std::size_t next = 0;
  for (std::int64_t s = 0; s < S; ++s) {
    query_start[s + 1] = query_start[s].item<std::int32_t>() + static_cast<std::int32_t>(seqs[s].n);
    context_lens[s] = static_cast<std::int32_t>(seqs[s].ctx);
    for (std::int64_t j = 0; j < (seqs[s].ctx + bs - 1) / bs; ++j) block_tables[s][j] = ids[next++];
    for (std::int64_t p = 0; p < seqs[s].ctx; ++p)
      slots.push_back(block_tables[s][p / bs].item<std::int64_t>() * bs + p % bs);
  }
  const auto T = static_cast<std::int64_t>(slots.size());
  // keys with a per-channel offset (as real keys have), values plain
  const auto k = (torch::randn({T, kv_heads, D}) + torch::randn({1, kv_heads, D}) * 2).to(dt);
  const auto v = torch::randn({T, kv_heads, D}).to(dt);
  kernels::write_kv_cache(k, v, kc, vc, torch::tensor(slots));
  const auto q = torch::randn({N, heads, D}).to(dt);
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));

  // The dequantised cache; rows never written are NaN there too.
  const auto kd = kernels::kv_cache_values(kc), vd = kernels::kv_cache_values(vc);
  const auto out = kernels::paged_attention(q, kc, vc, query_start, context_lens, block_tables, scale);
  const auto ref_q = kernels::paged_attention_reference(q, kc, vc, query_start, context_lens, block_tables, scale);
  const auto qf = q.to(torch::kFloat32);
  const auto dense = kernels::paged_attention_reference(qf, kd, vd, query_start, context_lens, block_tables, scale);
  const auto fp_kernel = kernels::paged_attention(qf, kd, vd, query_start, context_lens, block_tables, scale);
  const std::string what = "heads " + std::to_string(heads) + "/" + std::to_string(kv_heads) + " D " +
                           std::to_string(D) + " bs " + std::to_string(bs) + " int" + std::to_string(bits) + " " +
                           c10::toString(dt);
  ASSERT_EQ(out.scalar_type(), dt) << what;
  const double tol = dt == torch::kFloat32 ? 2e-5 : 2e-2;
  auto diff = [](const torch::Tensor& a, const torch::Tensor& b) {
    return (a.to(torch::kFloat32) - b.to(torch::kFloat32)).abs().max().item<double>();
  };
  EXPECT_TRUE(torch::isfinite(out).all().item<bool>()) << what;
  EXPECT_LE(diff(out, dense), tol) << what;
  EXPECT_LE(diff(ref_q, dense), tol) << what;
  EXPECT_LE(diff(fp_kernel, dense), 2e-5) << what;
}

}  // namespace

TEST(KvQuant, PagedAttentionEqualsAttentionOverTheDequantizedCache) {
  const std::vector<Seq> mixed{{37, 37}, {20, 1}, {1, 1}, {50, 7}, {16, 1}, {33, 1}};
  for (int bits : {8, 4})
    for (auto dt : {torch::kFloat32, torch::kBFloat16}) {
      check_quantized_attention(mixed, 8, 2, 64, 16, bits, dt);      // minimind2-small, GQA 4:1
      check_quantized_attention(mixed, 3, 3, 32, 5, bits, dt, 2);    // odd heads, MHA, odd block
      check_quantized_attention(mixed, 6, 1, 48, 7, bits, dt, 3);    // MQA, head_dim not /16
      check_quantized_attention({{300, 1}, {300, 1}}, 14, 2, 64, 16, bits, dt, 4);  // long decodes
      check_quantized_attention({{90, 90}}, 4, 2, 16, 8, bits, dt, 5);              // prefill
    }
}

TEST(KvQuant, BlockBytesAndParsing) {
  EXPECT_EQ(kernels::kv_cache_bits("auto"), 0);
  EXPECT_EQ(kernels::kv_cache_bits("int8"), 8);
  EXPECT_EQ(kernels::kv_cache_bits("int4"), 4);
  EXPECT_THROW(kernels::kv_cache_bits("fp8"), Error);
  // minimind2-small: 2 kv heads x 64 dims, blocks of 16: bf16 4096 B, int8 2048 + 256, int4 1024 + 256
  EXPECT_EQ(kernels::kv_cache_block_bytes(2, 16, 64, torch::kBFloat16, 0), 4096);
  EXPECT_EQ(kernels::kv_cache_block_bytes(2, 16, 64, torch::kFloat32, 8), 2048 + 256);
  EXPECT_EQ(kernels::kv_cache_block_bytes(2, 16, 64, torch::kFloat32, 4), 1024 + 256);
  // mismatched caches are refused
  auto kc = kernels::empty_kv_cache(4, 2, 4, 16, torch::kFloat32, 8, torch::kCPU);
  auto vc = kernels::empty_kv_cache(4, 2, 4, 16, torch::kFloat32, 4, torch::kCPU);
  const auto x = torch::randn({1, 2, 16});
  EXPECT_THROW(kernels::write_kv_cache(x, x, kc, vc, torch::tensor({std::int64_t{0}})), Error);
  auto bad = kc;
  bad.params = torch::zeros({4, 2, 4, 3});
  EXPECT_THROW(kernels::write_kv_cache(x, x, bad, bad, torch::tensor({std::int64_t{0}})), Error);
}
