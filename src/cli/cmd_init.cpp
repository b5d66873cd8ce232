// llmctl init: a freshly initialised model directory from a preset or config file.
#include <torch/torch.h>

#include "common.h"
#include "llmctl/util/log.h"
#include "llmctl/io/model_dir.h"
#include "llmctl/tokenizer/tokenizer.h"
#include "llmctl/util/error.h"

namespace llmctl::cli {

void add_init(CLI::App& app) {
  struct Opts {
    std::string preset, config, tokenizer, out, dtype = "f32";
    std::uint64_t seed = 42;
    bool json = false;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand(
      "init", "Create a randomly initialised model directory (HF layout) from a preset or config");
  auto* preset = sub->add_option("--preset", o->preset, "Preset: nano, minimind2-small, minimind2, minimind3");
  auto* config = sub->add_option("--config", o->config, "An HF config.json-style file instead of a preset")
                     ->check(CLI::ExistingFile);
  preset->excludes(config);
  sub->add_option("--tokenizer", o->tokenizer,
                  "Tokenizer directory: its files are copied and its vocabulary size is used")
      ->required();
  sub->add_option("--out", o->out, "Output model directory")->required();
  sub->add_option("--seed", o->seed, "Seed of the initialisation")->capture_default_str();
  sub->add_option("--dtype", o->dtype, "Dtype of the saved weights: f32, bf16 or f16")->capture_default_str();
  sub->add_flag("--json", o->json, "Print a JSON summary on stdout");
  sub->callback([o, preset, config] {
    if (!*preset && !*config) throw Error("init: give --preset or --config");
    ModelConfig cfg = resolve_config(*preset ? o->preset : o->config);
    auto tok = Tokenizer::load(o->tokenizer);
    if (cfg.vocab_size != tok.vocab_size())
      log::info(cat("vocab_size ", cfg.vocab_size, " -> ", tok.vocab_size(), " to match the tokenizer"));
    cfg.vocab_size = tok.vocab_size();
    cfg.bos_token_id = tok.bos_id();
    cfg.eos_token_ids = {tok.eos_id()};
    cfg.pad_token_id = tok.pad_id();
    torch::manual_seed(o->seed);
    CausalLM model(cfg);
    SaveOptions so;
    so.dtype = parse_dtype(o->dtype);
    so.tokenizer_dir = tok.source_dir();
    save_model(model, o->out, so);
    auto n = count_parameters(model);
    if (o->json)
      print_json({{"out", o->out}, {"parameters", n}, {"config", cfg.to_json()}});
    else
      std::printf("model: %s (%s, %.2fM parameters, %lld layers, hidden %lld, vocab %lld)\n", o->out.c_str(),
                  cfg.model_type.c_str(), n / 1e6, static_cast<long long>(cfg.num_hidden_layers),
                  static_cast<long long>(cfg.hidden_size), static_cast<long long>(cfg.vocab_size));
  });
}

}  // namespace llmctl::cli
