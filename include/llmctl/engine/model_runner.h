#pragma once
// Runs the model over one scheduled batch: the new tokens of every sequence flattened into
// one [N, hidden] activation, K/V written into the paged cache, attention over each
// sequence's blocks, and logits only for the sequences that sample this step. It owns the
// KV cache pool and an inference copy of the weights, packed for the CPU GEMM, with q/k/v
// and gate/up fused into one projection each (one weight stream instead of three / two).
// With AWQ linears the projections run on the int4 weights instead (kernels/linear.h).
#include <torch/torch.h>

#include <vector>

#include "llmctl/engine/scheduler.h"
#include "llmctl/kernels/linear.h"
#include "llmctl/kernels/paged_attention.h"
#include "llmctl/model/config.h"
#include "llmctl/model/transformer.h"
#include "llmctl/quant/awq.h"

namespace llmctl {

class ModelRunner {
 public:
  // Takes the weights of `model` (which may be dropped afterwards) in `dtype`, and
  // allocates num_blocks cache blocks of block_size tokens for every layer. Linears found
  // in `awq` (by HF module name) use those int4 weights rather than the model's. kv_bits:
  // 0 keeps the KV cache in `dtype`, 8 / 4 quantises it (kernels::KvCache).
  ModelRunner(CausalLM& model, torch::ScalarType dtype, int num_blocks, int block_size, int max_model_len,
              const AwqLinears* awq = nullptr, int kv_bits = 0);

  // Logits (fp32, [rows, vocab]) for batch[i] where wants_logits[i], in batch order: the
  // prediction after that sequence's last scheduled token.
  torch::Tensor forward(const std::vector<ScheduledSeq>& batch, const std::vector<bool>& wants_logits);

  // Seconds the last forward spent on the host preparing the batch (ids, positions,
  // slots, block tables): engine overhead rather than model time.
  double last_prepare_s() const { return last_prepare_s_; }
  // Writes every page of a CPU KV pool once, so later steps take no first-touch page faults
  // (the pool is allocated untouched; a long-running server has touched it). No-op off the CPU.
  void touch_kv_cache();
  const ModelConfig& config() const { return cfg_; }
  // Bytes of K and V for one block over all layers (quantised: codes plus scale and zero).
  static std::int64_t block_bytes(const ModelConfig& cfg, int block_size, torch::ScalarType dtype, int kv_bits = 0);

 private:
  struct Layer {
    torch::Tensor input_norm, q_norm, k_norm, post_norm;
    kernels::PackedLinear qkv, o, gate_up, down;
    kernels::KvCache k_cache, v_cache;  // [num_blocks, kv_heads, block_size, head_dim (codes)]
  };
  ModelConfig cfg_;
  int block_size_;
  double last_prepare_s_ = 0;
  std::vector<Layer> layers_;
  torch::Tensor embed_, final_norm_;
  kernels::PackedLinear lm_head_;
  torch::Tensor rope_cos_, rope_sin_;  // [max_model_len, head_dim], fp32
};

}  // namespace llmctl
