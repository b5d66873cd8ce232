#pragma once
// The decoder family's hyper-parameters in HF's config.json schema (SPEC §2). No torch here:
// the CLI, tokenizer and file code use it without pulling in LibTorch headers.
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace llmctl {

// generation_config.json's sampling defaults: what chat and serve use for a flag or request
// field the user left unset (vLLM's rule). Absent keys keep vLLM's defaults.
struct GenerationDefaults {
  bool do_sample = true;       // false: greedy
  double temperature = 1.0;
  double top_p = 1.0;
  std::int64_t top_k = 0;      // 0: off (transformers' 50 is not applied unless the file says so)
  double min_p = 0.0;
  double repetition_penalty = 1.0;

  // Reads the sampling keys of a generation_config.json object; wrong types name the key.
  static GenerationDefaults from_json(const nlohmann::json& j, const std::string& source);
  // The temperature to sample with by default (0 when do_sample is false).
  double effective_temperature() const { return do_sample ? temperature : 0.0; }
};

// config.json's rope_scaling: "linear" divides every frequency by factor; "llama3" (Llama 3.1+)
// divides only the long-wavelength ones and blends between (HF's _compute_llama3_parameters).
struct RopeScaling {
  std::string type;  // "" (none) | "linear" | "llama3"
  double factor = 1.0;
  double low_freq_factor = 1.0, high_freq_factor = 4.0;
  std::int64_t original_max_position_embeddings = 8192;
};

// config.json's quantization_config. Only AutoAWQ's int4 "gemm" format is read (see
// quant/awq.h): quant_method "awq", bits 4, zero_point true, version "gemm". method == "" is
// an unquantized model.
struct QuantizationConfig {
  std::string method;  // "" | "awq"
  int bits = 4;
  int group_size = 128;
  bool zero_point = true;
  std::string version = "gemm";
  std::vector<std::string> modules_to_not_convert;  // kept in full precision (null -> empty)
  bool enabled() const { return !method.empty(); }
  // Parses a quantization_config object; anything llmctl cannot run is an Error naming the
  // field ("quantization_config.bits" ...). `source` names the file.
  static QuantizationConfig from_json(const nlohmann::json& j, const std::string& source);
  nlohmann::json to_json() const;
};

struct ModelConfig {
  std::string model_type = "llama";  // llama | qwen2 | qwen3
  std::int64_t vocab_size = 6400;
  std::int64_t hidden_size = 512;
  std::int64_t intermediate_size = 1408;
  std::int64_t num_hidden_layers = 8;
  std::int64_t num_attention_heads = 8;
  std::int64_t num_key_value_heads = 2;
  std::int64_t head_dim = 64;
  std::int64_t max_position_embeddings = 32768;
  double rope_theta = 1e6;
  double rms_norm_eps = 1e-5;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = true;
  bool attention_bias = false;  // bias on q,k,v (Qwen2 always; Llama's o_proj too)
  bool o_proj_bias = false;     // Llama's attention_bias covers o_proj as well
  bool mlp_bias = false;
  bool qk_norm = false;         // Qwen3 / minimind-3 per-head RMSNorm on q and k
  double initializer_range = 0.02;
  std::int64_t bos_token_id = 1;
  std::vector<std::int64_t> eos_token_ids = {2};
  std::int64_t pad_token_id = 0;
  std::string torch_dtype = "float32";
  // llmctl's own models sample at 0.7 / 0.9 unless their generation_config.json says otherwise.
  GenerationDefaults generation{true, 0.7, 0.9, 0, 0.0, 1.0};
  // The weights' storage (AWQ int4) when config.json has a quantization_config.
  QuantizationConfig quantization;

  // Parses an HF config.json; unknown model types and inconsistent shapes are errors
  // that name the field. `source` names the file in messages.
  static ModelConfig from_json(const nlohmann::json& j, const std::string& source = "config.json");
  nlohmann::json to_json() const;            // HF config.json
  nlohmann::json generation_json() const;    // HF generation_config.json
  void validate(const std::string& source = "config") const;

  std::int64_t q_dim() const { return num_attention_heads * head_dim; }
  std::int64_t kv_dim() const { return num_key_value_heads * head_dim; }
  // Parameter count implied by the shapes (tied embeddings counted once).
  std::int64_t num_parameters() const;
};

// Presets shipped in configs/ (compiled into the binary): nano, minimind2-small,
// minimind2, minimind3. Throws listing the known names when `name` is unknown.
ModelConfig preset_config(const std::string& name);
std::vector<std::string> preset_names();

// A preset name, or a path to a config.json-style file.
ModelConfig resolve_config(const std::string& preset_or_file);

// Reads an eos_token_id value (an integer or a list of integers); throws naming `source`.
std::vector<std::int64_t> parse_eos_ids(const nlohmann::json& value, const std::string& source);

// minimind's FFN sizing: 64 * ceil(int(hidden * 8 / 3) / 64).
std::int64_t minimind_ffn_size(std::int64_t hidden);

}  // namespace llmctl
