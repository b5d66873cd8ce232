#include "llmctl/model/transformer.h"

#include <cmath>

#include "llmctl/kernels/attention.h"
#include "llmctl/kernels/rmsnorm.h"
#include "llmctl/kernels/rope.h"
#include "llmctl/kernels/swiglu.h"

namespace F = torch::nn::functional;

namespace llmctl {

RMSNormImpl::RMSNormImpl(std::int64_t dim, double eps_) : eps(eps_) {
  weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) { return kernels::rms_norm(x, weight, eps); }

namespace {

// HF's rope_scaling applied to the base frequencies (see RopeScaling).
torch::Tensor scale_inv_freq(const torch::Tensor& inv_freq, const RopeScaling& s) {
  if (s.type == "linear") return inv_freq / s.factor;
  if (s.type != "llama3") return inv_freq;
  const double old_len = static_cast<double>(s.original_max_position_embeddings);
  const double low_wavelen = old_len / s.low_freq_factor, high_wavelen = old_len / s.high_freq_factor;
  auto wavelen = 2 * M_PI / inv_freq;
  auto scaled = torch::where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq);
  auto smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
  auto smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled;
  auto medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
  return torch::where(medium, smoothed, scaled);
}

}  // namespace

std::pair<torch::Tensor, torch::Tensor> rope_cos_sin(const torch::Tensor& positions, std::int64_t head_dim,
                                                     double theta, const RopeScaling& scaling) {
  auto fopts = torch::TensorOptions().dtype(torch::kFloat32).device(positions.device());
  // inv_freq[i] = theta^(-2i/d), computed as HF does (int64 arange -> float).
  auto exponents = torch::arange(0, head_dim, 2, fopts.dtype(torch::kInt64)).to(torch::kFloat32) / head_dim;
  auto inv_freq = scale_inv_freq(1.0 / torch::pow(theta, exponents), scaling);
  auto freqs = positions.to(torch::kFloat32).unsqueeze(-1) * inv_freq;  // [..., T, d/2]
  auto emb = torch::cat({freqs, freqs}, -1);
  return {emb.cos(), emb.sin()};
}

torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  // HF's layout [B, heads, T, D]; the formula lives in kernels::rope_reference ([B, T, heads, D]).
  return kernels::rope_reference(x.transpose(1, 2), cos, sin).transpose(1, 2);
}

AttentionImpl::AttentionImpl(const ModelConfig& cfg)
    : n_heads_(cfg.num_attention_heads), n_kv_heads_(cfg.num_key_value_heads), head_dim_(cfg.head_dim) {
  auto lin = [&](std::int64_t in, std::int64_t out, bool bias) {
    return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(bias));
  };
  q_proj = register_module("q_proj", lin(cfg.hidden_size, cfg.q_dim(), cfg.attention_bias));
  k_proj = register_module("k_proj", lin(cfg.hidden_size, cfg.kv_dim(), cfg.attention_bias));
  v_proj = register_module("v_proj", lin(cfg.hidden_size, cfg.kv_dim(), cfg.attention_bias));
  o_proj = register_module("o_proj", lin(cfg.q_dim(), cfg.hidden_size, cfg.o_proj_bias));
  if (cfg.qk_norm) {
    q_norm = register_module("q_norm", RMSNorm(cfg.head_dim, cfg.rms_norm_eps));
    k_norm = register_module("k_norm", RMSNorm(cfg.head_dim, cfg.rms_norm_eps));
  }
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  const auto B = x.size(0), T = x.size(1);
  auto q = q_proj->forward(x).view({B, T, n_heads_, head_dim_});
  auto k = k_proj->forward(x).view({B, T, n_kv_heads_, head_dim_});
  auto v = v_proj->forward(x).view({B, T, n_kv_heads_, head_dim_});
  if (q_norm) {  // Qwen3: per-head norm before RoPE
    q = q_norm->forward(q);
    k = k_norm->forward(k);
  }
  q = kernels::rope(q, cos, sin);  // [B, T, H, D]
  k = kernels::rope(k, cos, sin);
  // GQA without materialising repeated K/V: query head h reads kv head h / group.
  auto out = kernels::causal_attention(q, k, v);
  return o_proj->forward(out.reshape({B, T, n_heads_ * head_dim_}));
}

MLPImpl::MLPImpl(const ModelConfig& cfg) {
  auto lin = [&](std::int64_t in, std::int64_t out) {
    return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(cfg.mlp_bias));
  };
  gate_proj = register_module("gate_proj", lin(cfg.hidden_size, cfg.intermediate_size));
  up_proj = register_module("up_proj", lin(cfg.hidden_size, cfg.intermediate_size));
  down_proj = register_module("down_proj", lin(cfg.intermediate_size, cfg.hidden_size));
}

torch::Tensor MLPImpl::forward(const torch::Tensor& x) {
  return down_proj->forward(kernels::swiglu(gate_proj->forward(x), up_proj->forward(x)));
}

DecoderLayerImpl::DecoderLayerImpl(const ModelConfig& cfg) {
  input_layernorm = register_module("input_layernorm", RMSNorm(cfg.hidden_size, cfg.rms_norm_eps));
  self_attn = register_module("self_attn", Attention(cfg));
  post_attention_layernorm = register_module("post_attention_layernorm", RMSNorm(cfg.hidden_size, cfg.rms_norm_eps));
  mlp = register_module("mlp", MLP(cfg));
}

torch::Tensor DecoderLayerImpl::forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  auto h = x + self_attn->forward(input_layernorm->forward(x), cos, sin);
  return h + mlp->forward(post_attention_layernorm->forward(h));
}

DecoderModelImpl::DecoderModelImpl(const ModelConfig& cfg) {
  embed_tokens = register_module("embed_tokens", torch::nn::Embedding(cfg.vocab_size, cfg.hidden_size));
  layers = register_module("layers", torch::nn::ModuleList());
  for (std::int64_t i = 0; i < cfg.num_hidden_layers; ++i) layers->push_back(DecoderLayer(cfg));
  norm = register_module("norm", RMSNorm(cfg.hidden_size, cfg.rms_norm_eps));
}

CausalLMImpl::CausalLMImpl(const ModelConfig& cfg) : cfg_(cfg) {
  cfg_.validate();
  model = register_module("model", DecoderModel(cfg_));
  if (!cfg_.tie_word_embeddings)
    lm_head = register_module("lm_head", torch::nn::Linear(torch::nn::LinearOptions(cfg_.hidden_size, cfg_.vocab_size).bias(false)));
  init_weights();
}

void CausalLMImpl::init_weights() {
  torch::NoGradGuard no_grad;
  for (auto& p : named_parameters()) {
    const std::string& name = p.key();
    auto& t = p.value();
    if (name.find("norm.weight") != std::string::npos)
      t.fill_(1.0);
    else if (name.size() >= 4 && name.compare(name.size() - 4, 4, "bias") == 0)
      t.zero_();
    else
      t.normal_(0.0, cfg_.initializer_range);
  }
}

torch::Tensor CausalLMImpl::hidden_states(const torch::Tensor& input_ids, const torch::Tensor& positions) {
  TORCH_CHECK(input_ids.dim() == 2, "input_ids must be [batch, seq]");
  auto pos = positions.defined() ? positions
                                 : torch::arange(input_ids.size(1), torch::TensorOptions().dtype(torch::kInt64).device(input_ids.device()));
  auto [cos, sin] = rope_cos_sin(pos, cfg_.head_dim, cfg_.rope_theta, cfg_.rope_scaling);
  auto h = model->embed_tokens->forward(input_ids);
  for (const auto& layer : *model->layers) h = layer->as<DecoderLayerImpl>()->forward(h, cos, sin);
  return model->norm->forward(h);
}

torch::Tensor CausalLMImpl::logits(const torch::Tensor& hidden) {
  return lm_head ? lm_head->forward(hidden) : F::linear(hidden, model->embed_tokens->weight);
}

torch::Tensor CausalLMImpl::forward(const torch::Tensor& input_ids, const torch::Tensor& positions) {
  return logits(hidden_states(input_ids, positions));
}

std::int64_t count_parameters(const CausalLM& m) {
  std::int64_t n = 0;
  for (const auto& p : m->parameters()) n += p.numel();
  return n;
}

}  // namespace llmctl
