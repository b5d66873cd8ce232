#pragma once
// The decoder-only model (SPEC §2) as LibTorch modules whose parameter names are exactly
// HF's, so named_parameters() is a Llama / Qwen2 / Qwen3 state dict. Device- and
// dtype-agnostic: move it with ->to(device, dtype).
//
//   CausalLM ─ model ─ embed_tokens
//            │       ├ layers.{i} ─ input_layernorm, self_attn.{q,k,v,o}_proj [q_norm, k_norm],
//            │       │              post_attention_layernorm, mlp.{gate,up,down}_proj
//            │       └ norm
//            └ lm_head (absent when tied: logits use embed_tokens.weight)
#include <torch/torch.h>

#include "llmctl/model/config.h"

namespace llmctl {

class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(std::int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;
  double eps;
};
TORCH_MODULE(RMSNorm);

// RoPE tables for the given positions ([T] or [B, T]): cos and sin of shape [..., T, head_dim]
// in HF's rotate-half layout (the half-dim frequencies repeated twice), computed in fp32.
std::pair<torch::Tensor, torch::Tensor> rope_cos_sin(const torch::Tensor& positions, std::int64_t head_dim,
                                                     double theta, const RopeScaling& scaling = {});
// x: [B, heads, T, head_dim]; cos/sin: [T, head_dim] or [B, T, head_dim].
torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);

class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const ModelConfig& cfg);
  // x: [B, T, hidden] -> [B, T, hidden], causal over T.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  RMSNorm q_norm{nullptr}, k_norm{nullptr};

 private:
  std::int64_t n_heads_, n_kv_heads_, head_dim_;
};
TORCH_MODULE(Attention);

class MLPImpl : public torch::nn::Module {
 public:
  explicit MLPImpl(const ModelConfig& cfg);
  torch::Tensor forward(const torch::Tensor& x);  // down(silu(gate(x)) * up(x))
  torch::nn::Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(MLP);

class DecoderLayerImpl : public torch::nn::Module {
 public:
  explicit DecoderLayerImpl(const ModelConfig& cfg);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  Attention self_attn{nullptr};
  MLP mlp{nullptr};
};
TORCH_MODULE(DecoderLayer);

class DecoderModelImpl : public torch::nn::Module {
 public:
  explicit DecoderModelImpl(const ModelConfig& cfg);
  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};
};
TORCH_MODULE(DecoderModel);

class CausalLMImpl : public torch::nn::Module {
 public:
  explicit CausalLMImpl(const ModelConfig& cfg);
  // input_ids: [B, T] int64. positions: optional [T] or [B, T] (default 0..T-1).
  // Returns logits [B, T, vocab] in the model's dtype.
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& positions = {});
  // Final normed hidden states [B, T, hidden]; logits() maps them to the vocabulary.
  torch::Tensor hidden_states(const torch::Tensor& input_ids, const torch::Tensor& positions = {});
  torch::Tensor logits(const torch::Tensor& hidden);
  // HF-style initialisation: N(0, initializer_range) for linears and embeddings, zero
  // biases, unit norms. Uses torch's global generator (seed it with torch::manual_seed).
  void init_weights();
  const ModelConfig& config() const { return cfg_; }
  DecoderModel model{nullptr};
  torch::nn::Linear lm_head{nullptr};

 private:
  ModelConfig cfg_;
};
TORCH_MODULE(CausalLM);

// Parameter count of an instantiated model (tied weights counted once).
std::int64_t count_parameters(const CausalLM& model);

}  // namespace llmctl
