#pragma once
// AWQ (activation-aware weight quantization, llm-awq / AutoAWQ) of a CausalLM's linears to
// int4 in AutoAWQ's "gemm" storage (quant/awq.h), and the calibration data it runs on.
//
// Layer by layer, on the activations of the unquantized model (layer i's inputs are the
// fp outputs of the original layers 0..i-1):
//   1. scale search per group (prev op -> linears, block whose output is compared):
//        input_layernorm -> q,k,v (self_attn);  v_proj -> o_proj (only without GQA);
//        post_attention_layernorm -> gate,up (mlp);  up_proj -> down_proj (down_proj)
//      s = (mean|x|^a / (w_mean^(1-a) + 1e-4)).clamp(1e-4), s /= sqrt(max s * min s) for
//      a in {0, 0.05, ..., 0.95}; the s whose quantized block output has the least MSE wins
//      and is folded: prev.weight /= s, the linears' columns *= s;
//   2. clip search (not q/k): per output channel and group, max|w| shrunk by (1 - i/20),
//      i = 0..9, keeping the one minimising the error of x.w on <= 512 sampled tokens;
//   3. asymmetric int4 round-to-nearest per group (awq_quantize).
// RTN is step 3 alone.
#include <torch/torch.h>

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "llmctl/model/transformer.h"
#include "llmctl/quant/awq.h"

namespace llmctl {

class Tokenizer;

struct AwqOptions {
  bool search = true;            // false: plain RTN (no scale or clip search)
  bool clip = true;              // the clip search (with search)
  int group_size = 128;
  int n_grid = 20;               // scale ratios tried: 0, 1/n_grid, ..., (n_grid-1)/n_grid
  int clip_steps = 10;           // shrink factors tried: 1 - i/20, i < clip_steps
  std::int64_t clip_tokens = 512;   // tokens sampled for the clip search
  std::int64_t chunk_tokens = 4096;  // tokens per forward in the search (memory bound)
  bool progress = true;          // a bar / log lines per layer
};

struct AwqResult {
  AwqLinears linears;       // every q,k,v,o,gate,up,down linear by HF module name
  nlohmann::json layers;    // per layer: best ratios and losses of each group, seconds
  std::int64_t calib_tokens = 0;
  double seconds = 0;
};

// Checks that every linear of the model can be quantized with `group_size` (in_features a
// multiple of it, out_features of 8); the Error names the linear and suggests a group size.
void awq_check_model(const ModelConfig& cfg, int group_size);

// Quantizes the model's linears. With opt.search, the model is modified in place: the
// scales are folded into its norms / linears and the clipping applied, so its remaining
// fp tensors (norms, embeddings) are the ones to save next to the returned linears.
// `calib` is int64 [blocks, seq] token ids on any device (ignored without search); the
// model runs in fp32 on its own device.
AwqResult awq_quantize_model(CausalLM& model, const torch::Tensor& calib, const AwqOptions& opt);

// Calibration blocks (AutoAWQ's recipe): the first `samples` documents of `files` (jsonl:
// "text" records as pretrain data, "conversations" rendered in the tokenizer's chat
// format; other files: one document per non-empty line), or of the built-in set
// (dataset/calib/calib.jsonl) when `files` is empty; each encoded (BOS when the tokenizer
// adds one) and cut to `seq_len` tokens, concatenated, and split into [n, seq_len] blocks
// (one shorter block when there are fewer tokens). Errors name the file.
torch::Tensor awq_calibration(const Tokenizer& tok, const std::vector<std::string>& files, int samples, int seq_len);

}  // namespace llmctl
