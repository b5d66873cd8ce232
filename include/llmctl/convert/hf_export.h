#pragma once
// `llmctl convert --to hf`: a release directory that transformers' AutoModelForCausalLM and
// AutoTokenizer load without trust_remote_code (and so vLLM, LMDeploy, llama.cpp's converter):
// config.json, generation_config.json, model.safetensors, the tokenizer files with a
// chat_template, and a README.md model card that says how the model was made.
#include <string>

#include "llmctl/model/config.h"

namespace llmctl {

class Tokenizer;

struct HfExportOptions {
  std::string dtype;  // f32 | f16 | bf16; empty keeps the source's torch_dtype (GGUF: f32)
};

struct HfExportResult {
  ModelConfig config;
  std::int64_t parameters = 0;
  std::string dtype;  // torch_dtype written
  bool has_tokenizer = false;  // false: the source had no tokenizer files, none were written
};

// `model_path` is a model directory or a .gguf file; `out_dir` is written atomically.
HfExportResult export_hf(const std::string& model_path, const std::string& out_dir, const HfExportOptions& opt);

// The model card (README.md) of a release directory. `model_path` is where the model came
// from: when it sits in an llmctl run directory (run/final, run/checkpoint-N), the run's
// train_config.json and metrics.jsonl (and those of the run it started from) describe
// how it was trained.
std::string model_card(const ModelConfig& cfg, std::int64_t parameters, const std::string& dtype,
                       const std::string& model_path, const std::string& release_name);

}  // namespace llmctl
