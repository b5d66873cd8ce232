#include "llmctl/io/model_dir.h"

#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "llmctl/convert/gguf_convert.h"
#include "llmctl/tokenizer/tokenizer.h"
#include "llmctl/util/error.h"
#include "llmctl/util/fs.h"

namespace fs = std::filesystem;

namespace llmctl {

torch::ScalarType parse_dtype(const std::string& name) {
  if (name == "f32" || name == "fp32" || name == "float32" || name == "float") return torch::kFloat32;
  if (name == "f16" || name == "fp16" || name == "float16" || name == "half") return torch::kFloat16;
  if (name == "bf16" || name == "bfloat16") return torch::kBFloat16;
  throw Error("unknown dtype '" + name + "' (use f32, f16 or bf16)");
}

std::string hf_dtype_name(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32: return "float32";
    case torch::kFloat16: return "float16";
    case torch::kBFloat16: return "bfloat16";
    default: throw Error(std::string("unsupported model dtype ") + c10::toString(t));
  }
}

namespace {

// True when the directory's weights carry per-head q/k RMSNorm weights (only the
// safetensors headers are read).
bool has_qk_norm_weights(const std::string& dir) {
  for (const auto& file : safetensors_files(dir)) {
    SafetensorsFile f(file);
    if (f.contains("model.layers.0.self_attn.q_norm.weight")) return true;
  }
  return false;
}

}  // namespace

ModelConfig load_model_config(const std::string& dir) {
  if (is_gguf_file(dir)) return read_gguf_config(dir);
  fs::path p = fs::path(dir) / "config.json";
  if (!fs::is_directory(dir))
    throw Error(dir + (fs::exists(dir) ? ": neither a model directory nor a GGUF file" : ": no such model or GGUF file"));
  if (!fs::exists(p)) throw Error(dir + ": no config.json");
  auto j = nlohmann::json::parse(read_file(p.string()), nullptr, false);
  if (j.is_discarded()) throw Error(p.string() + ": not valid JSON");
  auto cfg = ModelConfig::from_json(j, p.string());
  // minimind's own config.json says model_type "minimind" for MiniMind2 (Llama layout) and
  // minimind-3 (per-head q/k norms, Qwen3 layout) alike: the weights tell them apart.
  if (j.value("model_type", "") == "minimind" && has_qk_norm_weights(dir)) {
    cfg.model_type = "qwen3";
    cfg.qk_norm = true;
  }
  // generation_config.json's eos ids win: they are what stops generation. Its sampling
  // keys become the defaults of chat and serve; without the file, vLLM's defaults apply.
  fs::path g = fs::path(dir) / "generation_config.json";
  cfg.generation = GenerationDefaults{};
  if (fs::exists(g)) {
    auto gj = nlohmann::json::parse(read_file(g.string()), nullptr, false);
    if (gj.is_discarded()) throw Error(g.string() + ": not valid JSON");
    cfg.generation = GenerationDefaults::from_json(gj, g.string());
    if (gj.contains("eos_token_id") && !gj["eos_token_id"].is_null())
      cfg.eos_token_ids = parse_eos_ids(gj["eos_token_id"], g.string());
  }
  return cfg;
}

void load_weights(CausalLM& model, const std::map<std::string, torch::Tensor>& tensors, const std::string& source) {
  torch::NoGradGuard no_grad;
  std::set<std::string> used;
  for (auto& p : model->named_parameters()) {
    auto it = tensors.find(p.key());
    if (it == tensors.end()) throw Error(source + ": missing tensor '" + p.key() + "'");
    const auto& src = it->second;
    if (src.sizes() != p.value().sizes()) {
      std::ostringstream ss;
      ss << source << ": tensor '" << p.key() << "' has shape " << src.sizes() << " but the config needs "
         << p.value().sizes();
      throw Error(ss.str());
    }
    if (!src.is_floating_point()) throw Error(source + ": tensor '" + p.key() + "' is not floating point");
    p.value().copy_(src);
    used.insert(p.key());
  }
  for (const auto& [name, t] : tensors) {
    if (used.count(name)) continue;
    if (name == "lm_head.weight" && model->config().tie_word_embeddings) continue;  // tied copy
    if (name.find("rotary_emb.inv_freq") != std::string::npos) continue;         // old HF buffers
    throw Error(source + ": unexpected tensor '" + name + "' (does config.json match the weights?)");
  }
}

Tokenizer load_tokenizer(const std::string& path) {
  if (is_gguf_file(path)) return read_gguf_tokenizer(path);
  return Tokenizer::load(path);
}

CausalLM load_model(const std::string& dir, const torch::Device& device, torch::ScalarType dtype) {
  if (is_gguf_file(dir)) {
    auto gm = import_gguf(dir);
    CausalLM model(gm.config);
    load_weights(model, gm.tensors, dir);
    model->to(device, dtype);
    model->eval();
    return model;
  }
  auto cfg = load_model_config(dir);
  CausalLM model(cfg);
  load_weights(model, load_safetensors_dir(dir), dir);
  model->to(device, dtype);
  model->eval();
  return model;
}

NamedTensors model_tensors(const CausalLM& model) {
  NamedTensors out;
  for (const auto& p : model->named_parameters()) out.emplace_back(p.key(), p.value());
  return out;
}

void save_model(const CausalLM& model, const std::string& dir, const SaveOptions& opt) {
  std::string staging = make_staging_dir(dir);
  try {
    ModelConfig cfg = model->config();
    cfg.torch_dtype = hf_dtype_name(opt.dtype);
    NamedTensors tensors;
    for (auto& [name, t] : model_tensors(model)) tensors.emplace_back(name, t.detach().to(opt.dtype));
    auto meta = opt.metadata;
    meta["format"] = "pt";  // what transformers expects
    save_safetensors(staging + "/model.safetensors", tensors, meta);
    write_file_atomic(staging + "/config.json", cfg.to_json().dump(2) + "\n");
    write_file_atomic(staging + "/generation_config.json", cfg.generation_json().dump(2) + "\n");
    if (!opt.tokenizer_dir.empty()) {
      bool any = false;
      for (const auto& f : tokenizer_file_names()) {
        fs::path src = fs::path(opt.tokenizer_dir) / f;
        if (fs::exists(src)) {
          write_file_atomic(staging + "/" + f, read_file(src.string()));
          any = true;
        }
      }
      if (!any) throw Error(opt.tokenizer_dir + ": no tokenizer files to copy");
    } else if (opt.tokenizer) {
      opt.tokenizer->save(staging);
    }
    if (opt.extra_files) opt.extra_files(staging);
    replace_dir(staging, dir);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(staging, ec);
    throw;
  }
}

}  // namespace llmctl
