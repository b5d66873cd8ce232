#include "llmctl/model/config.h"

#include <cctype>
#include <cmath>
#include <fstream>

#include "llmctl/util/error.h"
#include "llmctl/util/fs.h"

namespace llmctl {

// Generated at build time from configs/*.json (see src/CMakeLists.txt).
extern const std::vector<std::pair<std::string, std::string>>& embedded_presets();

namespace {

template <typename T>
T get_field(const nlohmann::json& j, const char* key, T fallback, const std::string& source) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  try {
    return it->get<T>();
  } catch (const nlohmann::json::exception&) {
    throw Error(source + ": field \"" + key + "\" has the wrong type (" + it->type_name() + ")");
  }
}

RopeScaling parse_rope_scaling(const nlohmann::json& j, const std::string& source) {
  RopeScaling r;
  // transformers v4 writes "rope_scaling"; v5 folds it into "rope_parameters".
  auto it = j.find("rope_scaling");
  if (it == j.end() || it->is_null()) it = j.find("rope_parameters");
  if (it == j.end() || it->is_null()) return r;
  if (!it->is_object()) throw Error(source + ": field \"" + it.key() + "\" must be an object or null");
  const auto& o = *it;
  r.type = get_field<std::string>(o, "rope_type", get_field<std::string>(o, "type", "default", source), source);
  if (r.type == "default") return RopeScaling{};
  if (r.type != "linear" && r.type != "llama3")
    throw Error(source + ": rope_scaling type \"" + r.type + "\" is not supported (linear, llama3)");
  r.factor = get_field<double>(o, "factor", 1.0, source);
  if (!(r.factor > 0)) throw Error(source + ": rope_scaling.factor must be positive");
  if (r.type == "llama3") {
    r.low_freq_factor = get_field<double>(o, "low_freq_factor", 1.0, source);
    r.high_freq_factor = get_field<double>(o, "high_freq_factor", 4.0, source);
    r.original_max_position_embeddings = get_field<std::int64_t>(o, "original_max_position_embeddings", 8192, source);
    if (!(r.high_freq_factor > r.low_freq_factor) || r.low_freq_factor <= 0 || r.original_max_position_embeddings <= 0)
      throw Error(source + ": rope_scaling needs 0 < low_freq_factor < high_freq_factor and a positive original_max_position_embeddings");
  }
  return r;
}

}  // namespace

std::int64_t minimind_ffn_size(std::int64_t hidden) {
  auto raw = static_cast<std::int64_t>(hidden * 8 / 3);
  return 64 * ((raw + 63) / 64);
}

std::vector<std::int64_t> parse_eos_ids(const nlohmann::json& value, const std::string& source) {
  std::vector<std::int64_t> ids;
  auto one = [&](const nlohmann::json& v) {
    if (!v.is_number_integer()) throw Error(source + ": \"eos_token_id\" must be an integer or a list of integers");
    ids.push_back(v.get<std::int64_t>());
  };
  if (value.is_array())
    for (const auto& v : value) one(v);
  else
    one(value);
  return ids;
}

ModelConfig ModelConfig::from_json(const nlohmann::json& j, const std::string& source) {
  if (!j.is_object()) throw Error(source + ": not a JSON object");
  ModelConfig c;
  c.model_type = get_field<std::string>(j, "model_type", "llama", source);
  // Llama and Mistral configs default to untied embeddings; minimind ties them in its code
  // and (like transformers' PretrainedConfig) defaults to tied when the key is absent.
  const bool tied_by_default = c.model_type != "llama" && c.model_type != "mistral";
  if (c.model_type == "mistral" || c.model_type == "minimind") c.model_type = "llama";
  if (c.model_type != "llama" && c.model_type != "qwen2" && c.model_type != "qwen3")
    throw Error(source + ": model_type \"" + c.model_type + "\" is not supported (llama, mistral, qwen2, qwen3)");
  auto req = [&](const char* key) -> std::int64_t {
    if (!j.contains(key)) throw Error(source + ": required field \"" + std::string(key) + "\" is missing");
    return get_field<std::int64_t>(j, key, 0, source);
  };
  c.vocab_size = req("vocab_size");
  c.hidden_size = req("hidden_size");
  c.num_hidden_layers = req("num_hidden_layers");
  c.num_attention_heads = req("num_attention_heads");
  c.intermediate_size = get_field<std::int64_t>(j, "intermediate_size", minimind_ffn_size(c.hidden_size), source);
  c.num_key_value_heads = get_field<std::int64_t>(j, "num_key_value_heads", c.num_attention_heads, source);
  c.head_dim = c.num_attention_heads > 0 ? c.hidden_size / c.num_attention_heads : 0;
  c.head_dim = get_field<std::int64_t>(j, "head_dim", c.head_dim, source);
  c.max_position_embeddings = get_field<std::int64_t>(j, "max_position_embeddings", 32768, source);
  c.rope_theta = get_field<double>(j, "rope_theta", 10000.0, source);
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object())  // transformers v5
    c.rope_theta = get_field<double>(j["rope_parameters"], "rope_theta", c.rope_theta, source);
  c.rms_norm_eps = get_field<double>(j, "rms_norm_eps", 1e-6, source);
  c.rope_scaling = parse_rope_scaling(j, source);
  // Mistral's sliding window: llmctl attends to the whole context, which equals the window
  // only up to its length, so the usable context stops there.
  const auto window = get_field<std::int64_t>(j, "sliding_window", 0, source);
  if (window > 0 && window < c.max_position_embeddings && get_field<bool>(j, "use_sliding_window", true, source))
    c.max_position_embeddings = window;
  c.tie_word_embeddings = get_field<bool>(j, "tie_word_embeddings", tied_by_default, source);
  c.initializer_range = get_field<double>(j, "initializer_range", 0.02, source);
  c.mlp_bias = get_field<bool>(j, "mlp_bias", false, source);
  if (c.model_type == "qwen2") {
    c.attention_bias = true;  // Qwen2 always has q/k/v bias and never an o_proj bias
  } else {
    c.attention_bias = get_field<bool>(j, "attention_bias", false, source);
    c.o_proj_bias = c.attention_bias;
  }
  c.qk_norm = c.model_type == "qwen3";
  c.bos_token_id = get_field<std::int64_t>(j, "bos_token_id", 1, source);
  c.pad_token_id = get_field<std::int64_t>(j, "pad_token_id", 0, source);
  if (auto it = j.find("eos_token_id"); it != j.end() && !it->is_null()) c.eos_token_ids = parse_eos_ids(*it, source);
  c.torch_dtype = get_field<std::string>(j, "torch_dtype", get_field<std::string>(j, "dtype", "float32", source), source);
  if (auto it = j.find("quantization_config"); it != j.end() && !it->is_null())
    c.quantization = QuantizationConfig::from_json(*it, source);
  c.validate(source);
  return c;
}

void ModelConfig::validate(const std::string& source) const {
  auto positive = [&](std::int64_t v, const char* name) {
    if (v <= 0) throw Error(source + ": \"" + name + "\" must be positive, got " + std::to_string(v));
  };
  positive(vocab_size, "vocab_size");
  positive(hidden_size, "hidden_size");
  positive(intermediate_size, "intermediate_size");
  positive(num_hidden_layers, "num_hidden_layers");
  positive(num_attention_heads, "num_attention_heads");
  positive(num_key_value_heads, "num_key_value_heads");
  positive(head_dim, "head_dim");
  positive(max_position_embeddings, "max_position_embeddings");
  // Bounds far above any model llmctl targets; they stop a corrupt config from asking
  // for terabytes (or overflowing the parameter count) before anything is allocated.
  auto at_most = [&](std::int64_t v, std::int64_t max, const char* name) {
    if (v > max) throw Error(source + ": \"" + name + "\" = " + std::to_string(v) + " is implausibly large (max " + std::to_string(max) + ")");
  };
  at_most(vocab_size, 1 << 24, "vocab_size");
  at_most(hidden_size, 1 << 17, "hidden_size");
  at_most(intermediate_size, 1 << 19, "intermediate_size");
  at_most(num_hidden_layers, 1 << 10, "num_hidden_layers");
  at_most(num_attention_heads, 1 << 10, "num_attention_heads");
  at_most(head_dim, 1 << 12, "head_dim");
  at_most(max_position_embeddings, 1 << 24, "max_position_embeddings");
  if (num_attention_heads % num_key_value_heads != 0)
    throw Error(source + ": num_attention_heads (" + std::to_string(num_attention_heads) +
                ") is not a multiple of num_key_value_heads (" + std::to_string(num_key_value_heads) + ")");
  if (head_dim % 2 != 0) throw Error(source + ": head_dim must be even for RoPE");
  if (!(rope_theta > 0)) throw Error(source + ": rope_theta must be positive");
  if (!(rms_norm_eps > 0)) throw Error(source + ": rms_norm_eps must be positive");
}

nlohmann::json ModelConfig::to_json() const {
  static const std::map<std::string, std::string> arch = {
      {"llama", "LlamaForCausalLM"}, {"qwen2", "Qwen2ForCausalLM"}, {"qwen3", "Qwen3ForCausalLM"}};
  nlohmann::json j = {
      {"architectures", {arch.at(model_type)}},
      {"model_type", model_type},
      {"vocab_size", vocab_size},
      {"hidden_size", hidden_size},
      {"intermediate_size", intermediate_size},
      {"num_hidden_layers", num_hidden_layers},
      {"num_attention_heads", num_attention_heads},
      {"num_key_value_heads", num_key_value_heads},
      {"head_dim", head_dim},
      {"max_position_embeddings", max_position_embeddings},
      {"rope_theta", rope_theta},
      {"rms_norm_eps", rms_norm_eps},
      {"hidden_act", "silu"},
      {"tie_word_embeddings", tie_word_embeddings},
      {"initializer_range", initializer_range},
      {"bos_token_id", bos_token_id},
      {"pad_token_id", pad_token_id},
      {"torch_dtype", torch_dtype},
      {"use_cache", true},
  };
  j["eos_token_id"] = eos_token_ids.size() == 1 ? nlohmann::json(eos_token_ids[0]) : nlohmann::json(eos_token_ids);
  if (!rope_scaling.type.empty()) {
    j["rope_scaling"] = {{"rope_type", rope_scaling.type}, {"factor", rope_scaling.factor}};
    if (rope_scaling.type == "llama3") {
      j["rope_scaling"]["low_freq_factor"] = rope_scaling.low_freq_factor;
      j["rope_scaling"]["high_freq_factor"] = rope_scaling.high_freq_factor;
      j["rope_scaling"]["original_max_position_embeddings"] = rope_scaling.original_max_position_embeddings;
    }
  }
  if (quantization.enabled()) j["quantization_config"] = quantization.to_json();
  if (model_type == "llama") {
    j["attention_bias"] = attention_bias;
    j["mlp_bias"] = mlp_bias;
  } else if (model_type == "qwen3") {
    j["attention_bias"] = attention_bias;
  }
  return j;
}

QuantizationConfig QuantizationConfig::from_json(const nlohmann::json& j, const std::string& source) {
  if (!j.is_object()) throw Error(source + ": field \"quantization_config\" must be an object or null");
  const std::string where = source + ": quantization_config.";
  QuantizationConfig q;
  auto get = [&](const char* key, auto fallback) {
    using T = decltype(fallback);
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return fallback;
    try {
      return it->template get<T>();
    } catch (const nlohmann::json::exception&) {
      throw Error(where + key + " has the wrong type (" + it->type_name() + ")");
    }
  };
  q.method = get("quant_method", std::string());
  if (q.method.empty()) throw Error(where + "quant_method is missing (llmctl reads \"awq\")");
  std::string lower;
  for (char ch : q.method) lower += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (lower != "awq")
    throw Error(where + "quant_method \"" + q.method + "\" is not supported (llmctl reads AWQ int4 \"awq\" models)");
  q.method = "awq";
  // AutoAWQ writes "bits"; older configs say "w_bit" / "q_group_size".
  q.bits = get("bits", get("w_bit", 4));
  if (q.bits != 4) throw Error(where + "bits = " + std::to_string(q.bits) + " is not supported (AWQ models must be 4-bit)");
  q.group_size = get("group_size", get("q_group_size", 128));
  if (q.group_size <= 0)
    throw Error(where + "group_size = " + std::to_string(q.group_size) + " is not supported (it must be positive)");
  q.zero_point = get("zero_point", true);
  if (!q.zero_point) throw Error(where + "zero_point = false is not supported (llmctl reads asymmetric AWQ)");
  q.version = get("version", std::string("gemm"));
  lower.clear();
  for (char ch : q.version) lower += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (lower != "gemm")
    throw Error(where + "version \"" + q.version + "\" is not supported (llmctl reads AutoAWQ's \"gemm\" layout)");
  q.version = "gemm";
  if (auto it = j.find("modules_to_not_convert"); it != j.end() && !it->is_null()) {
    if (!it->is_array()) throw Error(where + "modules_to_not_convert must be a list of strings or null");
    for (const auto& m : *it) {
      if (!m.is_string()) throw Error(where + "modules_to_not_convert must be a list of strings or null");
      q.modules_to_not_convert.push_back(m.get<std::string>());
    }
  }
  return q;
}

nlohmann::json QuantizationConfig::to_json() const {
  nlohmann::json j = {{"quant_method", method}, {"zero_point", zero_point}, {"group_size", group_size},
                      {"bits", bits},           {"version", version}};
  j["modules_to_not_convert"] = modules_to_not_convert.empty() ? nlohmann::json(nullptr) : nlohmann::json(modules_to_not_convert);
  return j;
}

GenerationDefaults GenerationDefaults::from_json(const nlohmann::json& j, const std::string& source) {
  if (!j.is_object()) throw Error(source + ": not a JSON object");
  GenerationDefaults g;
  g.do_sample = get_field<bool>(j, "do_sample", true, source);
  g.temperature = get_field<double>(j, "temperature", g.temperature, source);
  g.top_p = get_field<double>(j, "top_p", g.top_p, source);
  g.top_k = get_field<std::int64_t>(j, "top_k", g.top_k, source);
  g.min_p = get_field<double>(j, "min_p", g.min_p, source);
  g.repetition_penalty = get_field<double>(j, "repetition_penalty", g.repetition_penalty, source);
  if (g.temperature < 0) throw Error(source + ": \"temperature\" must not be negative");
  if (!(g.top_p > 0 && g.top_p <= 1)) throw Error(source + ": \"top_p\" must be in (0, 1]");
  if (g.top_k < 0) throw Error(source + ": \"top_k\" must not be negative");
  if (!(g.min_p >= 0 && g.min_p <= 1)) throw Error(source + ": \"min_p\" must be in [0, 1]");
  if (!(g.repetition_penalty > 0)) throw Error(source + ": \"repetition_penalty\" must be positive");
  return g;
}

nlohmann::json ModelConfig::generation_json() const {
  nlohmann::json j = {{"bos_token_id", bos_token_id}, {"pad_token_id", pad_token_id},
                      {"do_sample", generation.do_sample}, {"temperature", generation.temperature},
                      {"top_p", generation.top_p}};
  if (generation.top_k > 0) j["top_k"] = generation.top_k;
  if (generation.min_p > 0) j["min_p"] = generation.min_p;
  if (generation.repetition_penalty != 1.0) j["repetition_penalty"] = generation.repetition_penalty;
  // eos_token_id here is what stops generation in transformers / vLLM: never omit it.
  j["eos_token_id"] = eos_token_ids.size() == 1 ? nlohmann::json(eos_token_ids[0]) : nlohmann::json(eos_token_ids);
  return j;
}

std::int64_t ModelConfig::num_parameters() const {
  const std::int64_t h = hidden_size;
  std::int64_t attn = h * q_dim() + 2 * h * kv_dim() + q_dim() * h;
  if (attention_bias) attn += q_dim() + 2 * kv_dim();
  if (o_proj_bias) attn += h;
  if (qk_norm) attn += 2 * head_dim;
  std::int64_t mlp = 3 * h * intermediate_size + (mlp_bias ? 2 * intermediate_size + h : 0);
  std::int64_t layer = attn + mlp + 2 * h;
  std::int64_t total = num_hidden_layers * layer + vocab_size * h + h;
  if (!tie_word_embeddings) total += vocab_size * h;
  return total;
}

std::vector<std::string> preset_names() {
  std::vector<std::string> names;
  for (const auto& [name, text] : embedded_presets()) names.push_back(name);
  return names;
}

ModelConfig preset_config(const std::string& name) {
  for (const auto& [n, text] : embedded_presets())
    if (n == name) return ModelConfig::from_json(nlohmann::json::parse(text), "configs/" + n + ".json");
  std::string known;
  for (const auto& n : preset_names()) known += (known.empty() ? "" : ", ") + n;
  throw Error("unknown preset '" + name + "' (known: " + known + ")");
}

ModelConfig resolve_config(const std::string& preset_or_file) {
  if (!path_exists(preset_or_file)) return preset_config(preset_or_file);
  auto j = nlohmann::json::parse(read_file(preset_or_file), nullptr, false);
  if (j.is_discarded()) throw Error(preset_or_file + ": not valid JSON");
  return ModelConfig::from_json(j, preset_or_file);
}

}  // namespace llmctl
