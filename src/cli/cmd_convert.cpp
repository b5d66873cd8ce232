// llmctl convert: the bridge to the HF and llama.cpp ecosystems.
//   DIR|FILE.gguf --to hf    a release directory transformers loads without trust_remote_code
//   DIR|FILE.gguf --to gguf  one GGUF v3 file for llama.cpp / ollama (f32 f16 bf16 q8_0 q4_0)
#include <chrono>
#include <filesystem>

#include "common.h"
#include "llmctl/convert/gguf_convert.h"
#include "llmctl/convert/hf_export.h"
#include "llmctl/io/model_dir.h"
#include "llmctl/util/error.h"
#include "llmctl/util/fs.h"
#include "llmctl/util/log.h"

namespace fs = std::filesystem;

namespace llmctl::cli {

namespace {

// Never replace something the user did not ask to lose: an existing output needs --overwrite.
void check_output(const std::string& out, bool overwrite) {
  std::error_code ec;
  if (!fs::exists(out, ec)) return;
  if (!overwrite) throw Error("--out " + out + " already exists (pass --overwrite to replace it)");
}

std::uint64_t path_bytes(const std::string& p) {
  if (!fs::is_directory(p)) return file_size(p);
  std::uint64_t n = 0;
  for (const auto& e : fs::recursive_directory_iterator(p))
    if (e.is_regular_file()) n += e.file_size();
  return n;
}

}  // namespace

void add_convert(CLI::App& app) {
  struct Opts {
    std::string model, to, out, dtype;
    bool overwrite = false, json = false;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("convert", "Convert a model: HF directory or GGUF in, HF release directory or GGUF out");
  sub->footer(
      "Examples:\n"
      "  llmctl convert --model runs/sft/final --to hf --out release/my-model --dtype bf16\n"
      "  llmctl convert --model runs/sft/final --to gguf --out my-model-q8_0.gguf --dtype q8_0\n"
      "  llmctl convert --model downloaded.gguf --to hf --out my-model-hf");
  sub->add_option("--model", o->model, "Model directory (llmctl or HF layout) or a .gguf file")
      ->required()
      ->check(CLI::ExistingPath);
  sub->add_option("--to", o->to, "Output format: hf (a model directory) or gguf (one file)")
      ->required()
      ->check(CLI::IsMember({"hf", "gguf"}));
  sub->add_option("--out", o->out, "Output directory (--to hf) or file (--to gguf)")->required();
  sub->add_option("--dtype", o->dtype,
                  "Weights: hf: f32, f16 or bf16 (default: the source's); gguf: f32, f16, bf16, q8_0 or q4_0 "
                  "(default f16)");
  sub->add_flag("--overwrite", o->overwrite, "Replace --out if it exists (the old one stays until the new one is complete)");
  sub->add_flag("--json", o->json, "Print a JSON summary on stdout");
  sub->callback([o] {
    const auto t0 = std::chrono::steady_clock::now();
    std::error_code ec;
    if (fs::equivalent(o->model, o->out, ec)) throw Error("--out must differ from --model");
    check_output(o->out, o->overwrite);
    nlohmann::json summary = {{"model", o->model}, {"to", o->to}, {"out", o->out}};
    if (o->to == "hf") {
      if (!o->dtype.empty()) parse_dtype(o->dtype);  // f32 | f16 | bf16, checked before loading
      log::info("converting " + o->model + " to an HF directory " + o->out);
      auto r = export_hf(o->model, o->out, {o->dtype});
      summary["dtype"] = r.dtype;
      summary["parameters"] = r.parameters;
      summary["tokenizer"] = r.has_tokenizer;
      summary["config"] = r.config.to_json();
    } else {
      GgufExportOptions opt;
      opt.dtype = o->dtype.empty() ? "f16" : o->dtype;
      if (opt.dtype != "f32" && opt.dtype != "f16" && opt.dtype != "bf16" && opt.dtype != "q8_0" && opt.dtype != "q4_0")
        throw Error("--dtype for gguf must be f32, f16, bf16, q8_0 or q4_0, not '" + opt.dtype + "'");
      log::info("converting " + o->model + " to GGUF " + o->out + " (" + opt.dtype + ")");
      export_gguf(o->model, o->out, opt);
      summary["dtype"] = opt.dtype;
    }
    summary["bytes"] = path_bytes(o->out);
    summary["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (o->json)
      print_json(summary);
    else
      std::printf("wrote %s (%.1f MB, %s) in %.1f s\n", o->out.c_str(), summary["bytes"].get<double>() / 1e6,
                  summary["dtype"].get<std::string>().c_str(), summary["seconds"].get<double>());
  });
}

}  // namespace llmctl::cli
