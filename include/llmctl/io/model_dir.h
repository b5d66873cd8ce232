#pragma once
// HF model directories: config.json + generation_config.json + model.safetensors (or
// shards) + tokenizer files. What llmctl writes is a valid HF Llama/Qwen directory, and
// HF directories of the supported families load here.
#include <torch/torch.h>

#include <functional>
#include <string>

#include "llmctl/io/safetensors.h"
#include "llmctl/model/config.h"
#include "llmctl/model/transformer.h"
#include "llmctl/quant/awq.h"

namespace llmctl {

class Tokenizer;

// Models load from an HF directory or, everywhere a model path is taken, from a .gguf file
// (llama architecture; quantized tensors dequantized, see convert/gguf_convert.h).
ModelConfig load_model_config(const std::string& path);
// The model's tokenizer: the directory's tokenizer files, or the GGUF's vocabulary.
Tokenizer load_tokenizer(const std::string& path);

// Copies `tensors` into the model's parameters (converting dtype). Every parameter must
// be present with the right shape; unexpected tensors are errors except a tied
// lm_head.weight and rotary inv_freq buffers. Errors name the tensor.
void load_weights(CausalLM& model, const std::map<std::string, torch::Tensor>& tensors,
                  const std::string& source);

// Builds the model from DIR and loads its weights onto `device` in `dtype`. An AWQ
// directory (config.json with quantization_config) loads with its int4 linears
// dequantized, (q - z) * s, into the full-precision model: the reference path of the
// int4 kernels, and what eval and training see. The returned model's config has no
// quantization (its weights are not quantized); load_model_config(DIR) still says AWQ.
CausalLM load_model(const std::string& path, const torch::Device& device = torch::kCPU,
                    torch::ScalarType dtype = torch::kFloat32);

// The packed int4 linears of an AWQ directory by module name ("model.layers.0.mlp.up_proj"):
// qweight/qzeros/scales for every module with a .qweight tensor, shapes checked against
// each other, the group size in config.json and the model's shapes. A missing qzeros or
// scales, a wrong shape or dtype, or a directory whose config.json is not AWQ is an Error
// naming the file and the tensor. Tensors are zero-copy views of the mapped files.
AwqLinears load_awq_linears(const std::string& dir);

// A model directory's tensors by HF name, AWQ linears dequantized into fp32 <name>.weight.
std::map<std::string, torch::Tensor> load_model_tensors(const std::string& dir);

struct SaveOptions {
  torch::ScalarType dtype = torch::kFloat32;  // dtype of the saved weights
  std::string tokenizer_dir;                  // tokenizer files copied from here if set
  const Tokenizer* tokenizer = nullptr;       // else, if set, written with Tokenizer::save
  std::map<std::string, std::string> metadata;
  // Called with the staging directory before it is swapped in, to add files that must
  // appear atomically with the model (a checkpoint's optimizer and trainer state).
  std::function<void(const std::string& staging_dir)> extra_files;
};

// Writes a complete model directory to `dir` atomically: everything is written to a
// staging directory next to it and swapped in at the end, so `dir` is at every moment
// either the old complete model or the new one.
void save_model(const CausalLM& model, const std::string& dir, const SaveOptions& opt = {});

// Writes an AWQ model directory (AutoAWQ "gemm"): the modules in `linears` as
// <name>.qweight/.qzeros/.scales (their biases in fp16), every other tensor (embeddings,
// norms, lm_head) in fp16, and config.json with `q` as quantization_config and
// torch_dtype float16. Atomic like save_model; opt.dtype is ignored.
void save_awq_model(const CausalLM& model, const AwqLinears& linears, const QuantizationConfig& q,
                    const std::string& dir, const SaveOptions& opt = {});

// The model's tensors under HF names (tied lm_head omitted, as save_pretrained does).
NamedTensors model_tensors(const CausalLM& model);

// torch dtype from "f32|fp32|float32|f16|fp16|float16|bf16|bfloat16"; throws otherwise.
torch::ScalarType parse_dtype(const std::string& name);
std::string hf_dtype_name(torch::ScalarType t);  // "float32" ...

}  // namespace llmctl
