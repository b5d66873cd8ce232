#include "llmctl/convert/hf_export.h"

#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include <nlohmann/json.hpp>

#include "llmctl/io/model_dir.h"
#include "llmctl/tokenizer/chat_format.h"
#include "llmctl/tokenizer/tokenizer.h"
#include "llmctl/util/error.h"
#include "llmctl/util/fs.h"
#include "llmctl/util/log.h"
#include "llmctl/util/version.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace llmctl {

namespace {

json read_json_or_null(const fs::path& p) {
  if (!fs::exists(p)) return nullptr;
  auto j = json::parse(read_file(p.string()), nullptr, false);
  return j.is_discarded() ? json(nullptr) : j;
}

// The last line of metrics.jsonl that parses (a run killed mid-write leaves a torn line).
json last_metrics(const fs::path& run_dir) {
  std::ifstream in(run_dir / "metrics.jsonl");
  json last;
  for (std::string line; std::getline(in, line);) {
    auto j = json::parse(line, nullptr, false);
    if (!j.is_discarded() && j.is_object() && j.contains("step")) last = j;
  }
  return last;
}

// One markdown paragraph per training stage, oldest first: the stage a model was
// initialised from (init_model) is followed back through its own run directory.
void describe_training(const fs::path& model_dir, std::vector<std::string>& stages, int depth = 0) {
  const fs::path run = model_dir.parent_path();
  const json cfg = read_json_or_null(run / "train_config.json");
  if (!cfg.is_object() || depth > 4) return;
  const std::string init = cfg.value("init_model", "");
  if (!init.empty()) describe_training(fs::path(init), stages, depth + 1);
  std::ostringstream s;
  const std::string mode = cfg.value("mode", "pretrain");
  s << "- **" << (mode == "sft" ? "Supervised fine-tuning" : "Pretraining") << "** with `llmctl "
    << mode << "` on";
  for (const auto& d : cfg.value("data", json::array())) s << " `" << d.get<std::string>() << "`";
  const long long batch = cfg.value("batch_size", 0LL), accum = cfg.value("grad_accum", 1LL),
                  seq = cfg.value("seq_len", 0LL), world = cfg.value("world_size", 1LL);
  s << ": sequences of " << seq << " tokens, " << batch * accum * world << " per optimizer step (batch " << batch
    << " x accumulation " << accum << " x " << world << " process" << (world == 1 ? "" : "es") << "), AdamW lr "
    << cfg.value("lr", 0.0) << " (cosine to " << cfg.value("min_lr_ratio", 0.0) << "x, warmup "
    << cfg.value("warmup_steps", 0LL) << " steps), " << cfg.value("dtype", std::string("f32")) << " on "
    << cfg.value("device", std::string("cpu")) << ", seed " << cfg.value("seed", 0LL) << ".";
  const json m = last_metrics(run);
  if (m.is_object()) {
    const long long steps = m.value("step", 0LL);
    s << " " << steps << " steps (about " << steps * batch * accum * world * seq << " tokens), final training loss "
      << m.value("loss", 0.0) << ".";
  }
  stages.push_back(s.str());
}

// A release's tokenizer_config.json always has a chat_template: transformers'
// apply_chat_template needs it, and older llmctl checkpoints and some HF directories lack it.
void ensure_chat_template(const std::string& path, const std::string& tmpl) {
  json j = read_json_or_null(path);
  if (!j.is_object()) j = json::object();
  if (j.contains("chat_template") && !j["chat_template"].is_null()) return;
  j["chat_template"] = tmpl;
  write_file_atomic(path, j.dump(2) + "\n");
}

std::string dtype_of(const std::string& torch_dtype) {
  return torch_dtype == "bfloat16" ? "bf16" : torch_dtype == "float16" ? "f16" : "f32";
}

}  // namespace

std::string model_card(const ModelConfig& cfg, std::int64_t parameters, const std::string& dtype,
                       const std::string& model_path, const std::string& release_name) {
  std::ostringstream s;
  const auto arch = cfg.to_json()["architectures"][0].get<std::string>();
  s << "---\nlibrary_name: transformers\npipeline_tag: text-generation\ntags:\n- llmctl\n- " << cfg.model_type
    << "\n---\n\n# " << release_name << "\n\n"
    << "A " << cfg.model_type << "-family causal language model (`" << arch << "`) with "
    << parameters / 1e6 << "M parameters, released by `llmctl convert --to hf` (llmctl " << version_string()
    << ").\n\n## Model\n\n"
    << "| | |\n|---|---|\n"
    << "| layers | " << cfg.num_hidden_layers << " |\n"
    << "| hidden size | " << cfg.hidden_size << " |\n"
    << "| attention heads / kv heads / head dim | " << cfg.num_attention_heads << " / " << cfg.num_key_value_heads
    << " / " << cfg.head_dim << " |\n"
    << "| MLP (SwiGLU) size | " << cfg.intermediate_size << " |\n"
    << "| vocabulary | " << cfg.vocab_size << " |\n"
    << "| context | " << cfg.max_position_embeddings << " tokens, RoPE theta " << cfg.rope_theta << " |\n"
    << "| tied embeddings | " << (cfg.tie_word_embeddings ? "yes" : "no") << " |\n"
    << "| weights | " << dtype << " safetensors |\n\n";
  std::vector<std::string> stages;
  describe_training(fs::path(model_path), stages);
  s << "## How it was trained\n\n";
  if (stages.empty()) {
    s << "Converted from `" << fs::path(model_path).filename().string()
      << "`; no llmctl training record was found next to it.\n\n";
  } else {
    for (const auto& st : stages) s << st << "\n";
    s << "\n";
  }
  s << "## Use\n\n"
    << "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
    << "tok = AutoTokenizer.from_pretrained(\"" << release_name << "\")\n"
    << "model = AutoModelForCausalLM.from_pretrained(\"" << release_name << "\")\n"
    << "ids = tok.apply_chat_template([{\"role\": \"user\", \"content\": \"Hello\"}], add_generation_prompt=True,"
    << " return_tensors=\"pt\")\nprint(tok.decode(model.generate(ids, max_new_tokens=64)[0]))\n```\n\n"
    << "```sh\nllmctl chat --model " << release_name << "\n"
    << "vllm serve ./" << release_name << "\n"
    << "llmctl convert --model " << release_name << " --to gguf --out " << release_name << ".gguf --dtype q8_0"
    << "  # llama.cpp / ollama\n```\n\n"
    << "Sampling defaults (generation_config.json): temperature " << cfg.generation.temperature << ", top_p "
    << cfg.generation.top_p << "; generation ends at token id" << (cfg.eos_token_ids.size() > 1 ? "s" : "");
  for (auto id : cfg.eos_token_ids) s << " " << id;
  s << ".\n";
  return s.str();
}

HfExportResult export_hf(const std::string& model_path, const std::string& out_dir, const HfExportOptions& opt) {
  auto model = load_model(model_path);
  HfExportResult r;
  r.config = model->config();
  r.dtype = opt.dtype.empty() ? dtype_of(r.config.torch_dtype) : opt.dtype;
  for (const auto& p : model->parameters()) r.parameters += p.numel();

  SaveOptions so;
  so.dtype = parse_dtype(r.dtype);
  // A directory's own tokenizer files travel as they are (nothing lost in translation); a
  // GGUF's vocabulary is written out as tokenizer files. A directory without tokenizer
  // files (weights kept apart from their tokenizer) still converts, weights only.
  std::optional<Tokenizer> tok;
  if (!fs::is_directory(model_path) || Tokenizer::exists_in(model_path)) tok = load_tokenizer(model_path);
  if (!tok)
    log::warn(model_path + " has no tokenizer files: the release holds the weights and configs only");
  else if (fs::is_directory(model_path))
    so.tokenizer_dir = model_path;
  else
    so.tokenizer = &*tok;
  r.has_tokenizer = tok.has_value();
  const std::string name = fs::path(out_dir).filename().string();
  so.extra_files = [&](const std::string& staging) {
    if (tok) ensure_chat_template(staging + "/tokenizer_config.json", tok->chat_template());
    write_file_atomic(staging + "/README.md", model_card(r.config, r.parameters, r.dtype, model_path, name));
  };
  save_model(model, out_dir, so);
  r.config.torch_dtype = hf_dtype_name(so.dtype);
  return r;
}

}  // namespace llmctl
