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

namespace {

std::string shape_of(const std::vector<std::int64_t>& v) {
  std::string s = "[";
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

// (out, in) of the standard linears of layer modules, by their name after "model.layers.N.".
bool linear_shape(const ModelConfig& c, const std::string& name, std::int64_t& out, std::int64_t& in) {
  const std::string pre = "model.layers.";
  if (name.compare(0, pre.size(), pre) != 0) return false;
  auto dot = name.find('.', pre.size());
  if (dot == std::string::npos) return false;
  const std::string rest = name.substr(dot + 1);
  const std::int64_t h = c.hidden_size, f = c.intermediate_size;
  if (rest == "self_attn.q_proj") { out = c.q_dim(); in = h; }
  else if (rest == "self_attn.k_proj" || rest == "self_attn.v_proj") { out = c.kv_dim(); in = h; }
  else if (rest == "self_attn.o_proj") { out = h; in = c.q_dim(); }
  else if (rest == "mlp.gate_proj" || rest == "mlp.up_proj") { out = f; in = h; }
  else if (rest == "mlp.down_proj") { out = h; in = f; }
  else return false;
  return true;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

AwqLinears load_awq_linears(const std::string& dir) {
  const auto cfg = load_model_config(dir);
  const std::string config_path = (fs::path(dir) / "config.json").string();
  if (!cfg.quantization.enabled()) throw Error(config_path + ": no quantization_config (not an AWQ model)");
  const int g = cfg.quantization.group_size;
  struct Entry {
    const SafetensorsEntry* e;
    const SafetensorsFile* f;
  };
  std::vector<std::unique_ptr<SafetensorsFile>> files;
  std::map<std::string, Entry> entries;
  for (const auto& path : safetensors_files(dir)) {
    files.push_back(std::make_unique<SafetensorsFile>(path));
    for (const auto& e : files.back()->entries()) entries[e.name] = {&e, files.back().get()};
  }
  AwqLinears out;
  for (const auto& [name, ent] : entries) {
    if (!ends_with(name, ".qweight")) continue;
    const std::string module = name.substr(0, name.size() - 8);
    const std::string where = ent.f->path();
    auto get = [&](const std::string& suffix, const char* dtype) -> torch::Tensor {
      auto it = entries.find(module + suffix);
      if (it == entries.end())
        throw Error(where + ": tensor '" + module + suffix + "' is missing (AWQ linear '" + module +
                    "' needs qweight, qzeros and scales)");
      const auto& e = *it->second.e;
      if (e.dtype != dtype)
        throw Error(it->second.f->path() + ": tensor '" + e.name + "' has dtype " + e.dtype + ", AWQ needs " + dtype);
      if (e.shape.size() != 2)
        throw Error(it->second.f->path() + ": tensor '" + e.name + "' has shape " + shape_of(e.shape) + ", AWQ needs 2-D");
      return it->second.f->tensor(e.name);
    };
    AwqTensor t;
    t.group_size = g;
    t.qweight = get(".qweight", "I32");
    t.qzeros = get(".qzeros", "I32");
    t.scales = get(".scales", "F16");
    if (entries.count(module + ".weight"))
      throw Error(where + ": tensor '" + module + ".weight' next to '" + module + ".qweight' (one linear stored twice)");
    const std::int64_t K = t.qweight.size(0), N = t.scales.size(1);
    auto bad = [&](const std::string& suffix, const std::vector<std::int64_t>& want, const torch::Tensor& have) {
      std::vector<std::int64_t> h(have.sizes().begin(), have.sizes().end());
      if (h == want) return;
      throw Error(entries.at(module + suffix).f->path() + ": tensor '" + module + suffix + "' has shape " + shape_of(h) +
                  ", expected " + shape_of(want) + " (group size " + std::to_string(g) + ")");
    };
    if (K % g != 0)
      throw Error(where + ": tensor '" + name + "': in_features " + std::to_string(K) + " is not a multiple of the group size " +
                  std::to_string(g) + " (config.json quantization_config.group_size)");
    std::int64_t want_n = 0, want_k = 0;
    if (linear_shape(cfg, module, want_n, want_k)) {
      bad(".qweight", {want_k, want_n / 8}, t.qweight);
      bad(".scales", {want_k / g, want_n}, t.scales);
    }
    if (N % 8 != 0)
      throw Error(where + ": tensor '" + module + ".scales': out_features " + std::to_string(N) + " is not a multiple of 8");
    bad(".scales", {K / g, N}, t.scales);
    bad(".qweight", {K, N / 8}, t.qweight);
    bad(".qzeros", {K / g, N / 8}, t.qzeros);
    awq_check(t, where + ": AWQ linear '" + module + "'");
    out.emplace(module, std::move(t));
  }
  if (out.empty()) throw Error(dir + ": config.json says AWQ but no tensor ends in .qweight");
  return out;
}

std::map<std::string, torch::Tensor> load_model_tensors(const std::string& dir) {
  auto tensors = load_safetensors_dir(dir);
  if (load_model_config(dir).quantization.enabled()) {
    for (const auto& [name, t] : load_awq_linears(dir)) {
      for (const char* suffix : {".qweight", ".qzeros", ".scales"}) tensors.erase(name + suffix);
      tensors[name + ".weight"] = awq_dequantize(t);
    }
  } else {
    for (const auto& [name, t] : tensors)
      if (ends_with(name, ".qweight"))
        throw Error(dir + ": tensor '" + name + "' is AWQ-quantized but config.json has no quantization_config");
  }
  return tensors;
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
  auto tensors = load_model_tensors(dir);
  cfg.quantization = {};  // dequantized
  CausalLM model(cfg);
  load_weights(model, tensors, dir);
  model->to(device, dtype);
  model->eval();
  return model;
}

NamedTensors model_tensors(const CausalLM& model) {
  NamedTensors out;
  for (const auto& p : model->named_parameters()) out.emplace_back(p.key(), p.value());
  return out;
}

namespace {

// Writes config.json, generation_config.json, model.safetensors and the tokenizer files into
// a staging directory and swaps it in.
void write_model_dir(const ModelConfig& cfg, const NamedTensors& tensors, const std::string& dir, const SaveOptions& opt) {
  std::string staging = make_staging_dir(dir);
  try {
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

}  // namespace

void save_model(const CausalLM& model, const std::string& dir, const SaveOptions& opt) {
  ModelConfig cfg = model->config();
  cfg.torch_dtype = hf_dtype_name(opt.dtype);
  cfg.quantization = {};  // full-precision weights
  NamedTensors tensors;
  for (auto& [name, t] : model_tensors(model)) tensors.emplace_back(name, t.detach().to(opt.dtype));
  write_model_dir(cfg, tensors, dir, opt);
}

void save_awq_model(const CausalLM& model, const AwqLinears& linears, const QuantizationConfig& q,
                    const std::string& dir, const SaveOptions& opt) {
  if (!q.enabled()) throw Error("save_awq_model: no quantization config");
  ModelConfig cfg = model->config();
  cfg.torch_dtype = "float16";
  cfg.quantization = q;
  NamedTensors tensors;
  std::set<std::string> written;
  for (auto& [name, t] : model_tensors(model)) {
    if (ends_with(name, ".weight")) {
      const std::string module = name.substr(0, name.size() - 7);
      auto it = linears.find(module);
      if (it != linears.end()) {
        const auto& a = it->second;
        awq_check(a, "AWQ linear '" + module + "'");
        if (a.group_size != q.group_size || a.in_features() != t.size(1) || a.out_features() != t.size(0))
          throw Error("AWQ linear '" + module + "' does not match the model's weight or the group size");
        tensors.emplace_back(module + ".qweight", a.qweight.cpu().contiguous());
        tensors.emplace_back(module + ".qzeros", a.qzeros.cpu().contiguous());
        tensors.emplace_back(module + ".scales", a.scales.cpu().contiguous());
        written.insert(module);
        continue;
      }
    }
    tensors.emplace_back(name, t.detach().to(torch::kFloat16));
  }
  for (const auto& [module, a] : linears)
    if (!written.count(module)) throw Error("AWQ linear '" + module + "' is not a linear of the model");
  write_model_dir(cfg, tensors, dir, opt);
}

}  // namespace llmctl
