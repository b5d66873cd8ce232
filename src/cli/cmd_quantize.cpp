// llmctl quantize: int4 weight-only quantization (AWQ or plain RTN) into AutoAWQ's "gemm"
// directory format, which llmctl, AutoAWQ, vLLM and transformers load.
#include <torch/torch.h>

#include <chrono>
#include <filesystem>

#include "common.h"
#include "llmctl/io/model_dir.h"
#include "llmctl/quant/awq_search.h"
#include "llmctl/tokenizer/tokenizer.h"
#include "llmctl/util/error.h"
#include "llmctl/util/fs.h"
#include "llmctl/util/log.h"
#include "llmctl/util/threads.h"

namespace fs = std::filesystem;

namespace llmctl::cli {

void add_quantize(CLI::App& app) {
  struct Opts {
    std::string model, out, method = "awq", device = "cpu";
    int bits = 4, group_size = 128, calib_samples = 128, calib_seq_len = 512, threads = 0;
    std::vector<std::string> calib_data;
    bool overwrite = false, json = false, no_clip = false;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("quantize", "Quantize a model's linears to int4 (AWQ or RTN) in AutoAWQ's gemm format");
  sub->footer(
      "Examples:\n"
      "  llmctl quantize --model runs/sft/final --out runs/sft/final-awq\n"
      "  llmctl quantize --model runs/sft/final --out final-awq --group-size 64 --calib-data my.jsonl\n"
      "  llmctl quantize --model runs/sft/final --out final-rtn --method rtn\n"
      "The output loads everywhere a model directory is taken (eval, chat, serve) and in AutoAWQ,\n"
      "vLLM and transformers. See docs/quantize.md.");
  sub->add_option("--model", o->model, "Model directory (or .gguf file) to quantize")->required()->check(CLI::ExistingPath);
  sub->add_option("--out", o->out, "Output model directory")->required();
  sub->add_option("--method", o->method, "awq (activation-aware scale + clip search) or rtn (round to nearest)")
      ->check(CLI::IsMember({"awq", "rtn"}))
      ->capture_default_str();
  sub->add_option("--bits", o->bits, "Weight bits (only 4)")->capture_default_str();
  sub->add_option("--group-size", o->group_size, "Input channels sharing a scale and zero point")->capture_default_str();
  sub->add_option("--calib-data", o->calib_data,
                  "Calibration files: jsonl with \"text\" or \"conversations\" records, or plain text "
                  "(default: the built-in set, dataset/calib/calib.jsonl)");
  sub->add_option("--calib-samples", o->calib_samples, "Calibration documents")->capture_default_str();
  sub->add_option("--calib-seq-len", o->calib_seq_len, "Tokens per calibration document and block")->capture_default_str();
  sub->add_flag("--no-clip", o->no_clip, "AWQ without the clip search (scales only)");
  sub->add_option("--device", o->device, "Where the search runs: cpu, cuda or cuda:N")->capture_default_str();
  sub->add_option("--threads", o->threads, "CPU threads (0: all cores)")->capture_default_str();
  sub->add_flag("--overwrite", o->overwrite, "Replace --out if it exists (the old one stays until the new one is complete)");
  sub->add_flag("--json", o->json, "Print a JSON summary on stdout");
  sub->callback([o] {
    const auto t0 = std::chrono::steady_clock::now();
    if (o->bits != 4) throw Error("--bits " + std::to_string(o->bits) + " is not supported: AWQ output is 4-bit only");
    std::error_code ec;
    if (fs::equivalent(o->model, o->out, ec)) throw Error("--out must differ from --model");
    if (fs::exists(o->out, ec) && !o->overwrite) throw Error("--out " + o->out + " already exists (pass --overwrite to replace it)");
    const auto cfg = load_model_config(o->model);
    if (cfg.quantization.enabled()) throw Error("--model " + o->model + " is already quantized (" + cfg.quantization.method + ")");
    awq_check_model(cfg, o->group_size);
    if (o->method == "awq") {
      if (o->calib_samples <= 0) throw Error("--calib-samples must be positive");
      if (o->calib_seq_len < 2) throw Error("--calib-seq-len must be at least 2");
    }
    torch::set_num_threads(resolve_threads(o->threads));
    torch::Device device(torch::kCPU);
    try {
      device = torch::Device(o->device);
    } catch (const std::exception&) {
      throw Error("--device: '" + o->device + "' is not a device (use cpu, cuda or cuda:N)");
    }
    if (device.is_cuda() && !torch::cuda::is_available())
      throw Error("--device " + o->device + ": no CUDA GPU is available on this machine");

    const bool is_dir = fs::is_directory(o->model);
    bool has_tok_files = false;
    for (const auto& f : tokenizer_file_names()) has_tok_files = has_tok_files || (is_dir && fs::exists(fs::path(o->model) / f));
    std::unique_ptr<Tokenizer> tok;
    torch::Tensor calib;
    AwqOptions opt;
    opt.search = o->method == "awq";
    opt.clip = !o->no_clip;
    opt.group_size = o->group_size;
    if (opt.search || !is_dir) tok = std::make_unique<Tokenizer>(load_tokenizer(o->model));
    if (opt.search) calib = awq_calibration(*tok, o->calib_data, o->calib_samples, o->calib_seq_len);

    log::info("quantizing " + o->model + " (" + o->method + ", int4, group " + std::to_string(o->group_size) + ")");
    auto model = load_model(o->model, device, torch::kFloat32);
    auto res = awq_quantize_model(model, calib, opt);

    QuantizationConfig q;
    q.method = "awq";
    q.bits = 4;
    q.group_size = o->group_size;
    SaveOptions so;
    if (has_tok_files)
      so.tokenizer_dir = o->model;
    else if (tok)
      so.tokenizer = tok.get();
    const fs::path gen = fs::path(o->model) / "generation_config.json";
    if (is_dir && fs::exists(gen))  // verbatim, keys llmctl does not model included
      so.extra_files = [gen](const std::string& staging) {
        write_file_atomic(staging + "/generation_config.json", read_file(gen.string()));
      };
    save_awq_model(model, res.linears, q, o->out, so);

    std::uint64_t bytes = 0;
    for (const auto& e : fs::directory_iterator(o->out))
      if (e.is_regular_file()) bytes += e.file_size();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    nlohmann::json summary = {{"model", o->model},
                              {"out", o->out},
                              {"method", o->method},
                              {"bits", 4},
                              {"group_size", o->group_size},
                              {"clip", opt.search && opt.clip},
                              {"linears", res.linears.size()},
                              {"calib_tokens", res.calib_tokens},
                              {"calib_blocks", calib.defined() ? calib.size(0) : 0},
                              {"bytes", bytes},
                              {"quantize_seconds", res.seconds},
                              {"seconds", seconds},
                              {"layers", res.layers}};
    if (o->json)
      print_json(summary);
    else
      std::printf("wrote %s (%s int4, group %d, %zu linears, %.1f MB) in %.1f s\n", o->out.c_str(), o->method.c_str(),
                  o->group_size, res.linears.size(), bytes / 1e6, seconds);
  });
}

}  // namespace llmctl::cli
