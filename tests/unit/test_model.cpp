#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "llmctl/model/transformer.h"
#include "test_helpers.h"

using namespace llmctl;

namespace {

ModelConfig tiny_config(const std::string& type = "llama") { return small_config(50, 32, 4, 8, type); }

// Attention written out with loops: softmax(q k^T / sqrt(d)) v with a causal mask and
// query head h reading kv head h / (H / KV). q: [H, T, D], k/v: [KV, T, D].
torch::Tensor naive_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  const auto H = q.size(0), T = q.size(1), D = q.size(2), group = H / k.size(0);
  auto out = torch::zeros_like(q);
  for (int64_t h = 0; h < H; ++h)
    for (int64_t i = 0; i < T; ++i) {
      std::vector<double> s(i + 1);
      double mx = -1e30, z = 0;
      for (int64_t j = 0; j <= i; ++j) {
        s[j] = (q[h][i] * k[h / group][j]).sum().item<double>() / std::sqrt(double(D));
        mx = std::max(mx, s[j]);
      }
      for (auto& e : s) z += (e = std::exp(e - mx));
      for (int64_t j = 0; j <= i; ++j) out[h][i] += v[h / group][j] * (s[j] / z);
    }
  return out;
}

}  // namespace

TEST(RoPE, RotatesPairsByPositionTimesFrequency) {
  // head_dim 4: frequencies 1 and theta^-0.5. A vector (1, 0, 0, 0) at position p becomes
  // (cos p, 0, sin p, 0) in rotate-half layout (pair i couples dims i and i + d/2).
  const double theta = 100.0;
  auto pos = torch::tensor({0, 1, 2}, torch::kInt64);
  auto [cos, sin] = rope_cos_sin(pos, 4, theta);
  auto x = torch::zeros({1, 1, 3, 4});
  x.index_put_({0, 0, torch::indexing::Slice(), 0}, 1.0);
  x.index_put_({0, 0, torch::indexing::Slice(), 1}, 1.0);
  auto y = apply_rope(x, cos, sin);
  for (int p = 0; p < 3; ++p) {
    EXPECT_NEAR(y[0][0][p][0].item<double>(), std::cos(p), 1e-6);
    EXPECT_NEAR(y[0][0][p][2].item<double>(), std::sin(p), 1e-6);
    double f = std::pow(theta, -0.5);
    EXPECT_NEAR(y[0][0][p][1].item<double>(), std::cos(p * f), 1e-6);
    EXPECT_NEAR(y[0][0][p][3].item<double>(), std::sin(p * f), 1e-6);
  }
  // Rotation keeps the norm.
  EXPECT_TRUE(torch::allclose(y.norm(2, -1), x.norm(2, -1), 1e-5, 1e-6));
}

TEST(Attention, GqaMatchesNaiveLoopAttention) {
  torch::manual_seed(1);
  torch::NoGradGuard ng;
  for (const std::string type : {"llama", "qwen2", "qwen3"}) {
    auto cfg = tiny_config(type);
    Attention attn(cfg);
    if (attn->q_norm) {  // non-trivial norm weights so a skipped norm would show
      attn->q_norm->weight.uniform_(0.5, 1.5);
      attn->k_norm->weight.uniform_(0.5, 1.5);
    }
    if (cfg.attention_bias) attn->k_proj->bias.uniform_(-0.5, 0.5);
    const int64_t T = 6;
    auto x = torch::randn({1, T, cfg.hidden_size});
    auto [cos, sin] = rope_cos_sin(torch::arange(T), cfg.head_dim, cfg.rope_theta);
    auto got = attn->forward(x, cos, sin);

    auto q = attn->q_proj->forward(x).view({T, cfg.num_attention_heads, cfg.head_dim});
    auto k = attn->k_proj->forward(x).view({T, cfg.num_key_value_heads, cfg.head_dim});
    auto v = attn->v_proj->forward(x).view({T, cfg.num_key_value_heads, cfg.head_dim});
    if (attn->q_norm) {
      q = attn->q_norm->forward(q);
      k = attn->k_norm->forward(k);
    }
    q = apply_rope(q.transpose(0, 1).unsqueeze(0), cos, sin)[0];
    k = apply_rope(k.transpose(0, 1).unsqueeze(0), cos, sin)[0];
    auto o = naive_attention(q, k, v.transpose(0, 1));  // [H, T, D]
    auto expect = attn->o_proj->forward(o.transpose(0, 1).reshape({1, T, -1}));
    EXPECT_TRUE(torch::allclose(got, expect, 1e-5, 1e-5)) << type << " max diff " << (got - expect).abs().max().item<float>();
  }
}

TEST(MLP, IsSwiGLU) {
  torch::NoGradGuard ng;
  auto cfg = tiny_config();
  MLP mlp(cfg);
  auto x = torch::randn({2, cfg.hidden_size});
  auto g = torch::matmul(x, mlp->gate_proj->weight.t());
  auto u = torch::matmul(x, mlp->up_proj->weight.t());
  auto expect = torch::matmul(g / (1 + torch::exp(-g)) * u, mlp->down_proj->weight.t());
  EXPECT_TRUE(torch::allclose(mlp->forward(x), expect, 1e-5, 1e-6));
}

TEST(CausalLM, HfParameterNames) {
  auto cfg = tiny_config("qwen3");
  cfg.tie_word_embeddings = false;
  CausalLM m(cfg);
  auto params = m->named_parameters();
  for (const char* name : {"model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                           "model.layers.1.self_attn.k_norm.weight", "model.layers.0.mlp.down_proj.weight",
                           "model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight",
                           "model.norm.weight", "lm_head.weight"})
    EXPECT_NE(params.find(name), nullptr) << name;
  cfg.tie_word_embeddings = true;
  CausalLM tied(cfg);
  EXPECT_EQ(tied->named_parameters().find("lm_head.weight"), nullptr);
}

TEST(CausalLM, FutureTokensDoNotChangeEarlierLogits) {
  torch::manual_seed(2);
  torch::NoGradGuard ng;
  for (const std::string type : {"llama", "qwen2", "qwen3"}) {
    CausalLM m(tiny_config(type));
    auto a = torch::randint(0, 50, {1, 10}, torch::kInt64);
    auto b = a.clone();
    b[0][7] = (a[0][7].item<int64_t>() + 1) % 50;
    auto la = m->forward(a), lb = m->forward(b);
    using torch::indexing::Slice;
    EXPECT_TRUE(torch::allclose(la.index({0, Slice(0, 7)}), lb.index({0, Slice(0, 7)}), 1e-6, 1e-6)) << type;
    EXPECT_FALSE(torch::allclose(la.index({0, 7}), lb.index({0, 7}))) << type;
  }
}

TEST(CausalLM, BatchRowsAreIndependentAndPositionsDefaultToArange) {
  torch::manual_seed(3);
  torch::NoGradGuard ng;
  CausalLM m(tiny_config());
  auto ids = torch::randint(0, 50, {2, 8}, torch::kInt64);
  auto both = m->forward(ids);
  auto one = m->forward(ids.narrow(0, 1, 1));
  EXPECT_TRUE(torch::allclose(both[1], one[0], 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(both, m->forward(ids, torch::arange(8)), 0, 0));
}

TEST(CausalLM, Bf16ForwardStaysCloseToFp32) {
  torch::manual_seed(4);
  torch::NoGradGuard ng;
  CausalLM m(tiny_config("qwen3"));
  auto ids = torch::randint(0, 50, {1, 12}, torch::kInt64);
  auto ref = torch::log_softmax(m->forward(ids), -1);
  m->to(torch::kBFloat16);
  auto low = torch::log_softmax(m->forward(ids).to(torch::kFloat32), -1);
  EXPECT_LT((ref - low).abs().max().item<float>(), 0.1f);
}
