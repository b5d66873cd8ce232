#pragma once
// Model directories <-> GGUF files that llama.cpp / ollama run.
//
// Architectures written: "llama" (Llama, Mistral, MiniMind2, and Qwen2 as Llama with q/k/v
// biases) and "qwen3" (per-head q/k RMSNorm: Qwen3, minimind-3); read: those and "qwen2".
// HF parameter names map to llama.cpp's (token_embd, blk.N.attn_q, ...). llama.cpp's
// "llama" RoPE rotates interleaved pairs where HF rotates halves, so attn_q / attn_k rows
// (and their biases) are permuted on export and un-permuted on import; "qwen2" / "qwen3"
// rotate halves and need no permutation.
#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "llmctl/model/config.h"
#include "llmctl/tokenizer/tokenizer.h"

namespace llmctl {

class GgufFile;

struct GgufExportOptions {
  std::string dtype = "f32";  // f32 | f16 | bf16 | q8_0 | q4_0 (2-D weights; norms and biases stay f32)
};

// An llmctl / HF model directory (config.json + safetensors + tokenizer files), or a GGUF
// file, -> one GGUF v3 file, written atomically.
void export_gguf(const std::string& model_dir, const std::string& out_path, const GgufExportOptions& opt);

struct GgufModel {
  ModelConfig config;
  std::map<std::string, torch::Tensor> tensors;  // HF names, float32 (dequantized), Q/K permutation undone
  std::unique_ptr<Tokenizer> tokenizer;
};

// Reads a "llama" / "qwen2" / "qwen3" GGUF: every supported tensor type is dequantized at
// load; tensor names and shapes are checked against the metadata first.
GgufModel import_gguf(const std::string& path);
// Only the metadata: the model's config, or its tokenizer.
ModelConfig read_gguf_config(const std::string& path);
Tokenizer read_gguf_tokenizer(const std::string& path);
ModelConfig gguf_model_config(const GgufFile& f);
Tokenizer gguf_tokenizer(const GgufFile& f);

// A regular file starting with the GGUF magic.
bool is_gguf_file(const std::string& path);

// HF parameter name -> llama.cpp tensor name, and back; "" when the name has no counterpart.
std::string gguf_tensor_name(const std::string& hf_name);
std::string hf_tensor_name(const std::string& gguf_name);

// The row permutation of q/k projections (weights [n_head * head_dim, in] or biases
// [n_head * head_dim]): rows viewed as (n_head, 2, head_dim / 2) with the middle axes
// swapped (HF rotate-half -> llama.cpp interleaved pairs), and its inverse.
torch::Tensor permute_qk(const torch::Tensor& w, std::int64_t n_head);
torch::Tensor unpermute_qk(const torch::Tensor& w, std::int64_t n_head);

}  // namespace llmctl
