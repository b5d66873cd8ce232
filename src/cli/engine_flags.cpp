// Flags shared by the subcommands that run the inference engine (chat, serve, bench).
#include "common.h"

namespace llmctl::cli {

void SamplingFlags::add_to(CLI::App* sub) {
  params.temperature = 0.7f;
  params.top_p = 0.9f;
  params.max_new_tokens = 512;
  auto* g = sub->add_option_group("Sampling");
  // Unset, these five take the model's generation_config.json values (the defaults shown
  // are for a model without one).
  temperature_ = g->add_option("--temperature", params.temperature,
                               "Softmax temperature; 0 = greedy (default: the model's generation_config.json)")
                     ->capture_default_str();
  top_p_ = g->add_option("--top-p", params.top_p,
                         "Nucleus sampling: smallest set of tokens with this much probability (default: the model's)")
               ->capture_default_str();
  top_k_ = g->add_option("--top-k", params.top_k, "Sample among the k most likely tokens (0: off; default: the model's)")
               ->capture_default_str();
  min_p_ = g->add_option("--min-p", params.min_p, "Drop tokens below min-p x the top probability (0: off)")
               ->capture_default_str();
  repetition_penalty_ = g->add_option("--repetition-penalty", params.repetition_penalty,
                                      "Divide (positive) logits of tokens seen in prompt or output by this (1: off)")
                            ->capture_default_str();
  g->add_option("--presence-penalty", params.presence_penalty, "Subtract from logits of generated tokens (0: off)")
      ->capture_default_str();
  g->add_option("--frequency-penalty", params.frequency_penalty,
                "Subtract this x count from logits of generated tokens (0: off)")
      ->capture_default_str();
  g->add_option("--max-new-tokens", params.max_new_tokens, "Longest answer in tokens")->capture_default_str();
  g->add_option("--seed", seed, "Sampling seed: the same seed gives the same text (-1: random)")
      ->capture_default_str();
  g->add_option("--stop", params.stop, "Stop string (repeatable); it is not part of the output");
  g->add_flag("--ignore-eos", params.ignore_eos, "Keep generating past end-of-sequence tokens (until --max-new-tokens)");
}

SamplingParams SamplingFlags::get(const GenerationDefaults* defaults) const {
  SamplingParams p = params;
  auto unset = [&](const CLI::Option* o) { return defaults && o && o->count() == 0; };
  if (unset(temperature_)) p.temperature = static_cast<float>(defaults->effective_temperature());
  if (unset(top_p_)) p.top_p = static_cast<float>(defaults->top_p);
  if (unset(top_k_)) p.top_k = static_cast<int>(defaults->top_k);
  if (unset(min_p_)) p.min_p = static_cast<float>(defaults->min_p);
  if (unset(repetition_penalty_)) p.repetition_penalty = static_cast<float>(defaults->repetition_penalty);
  if (seed >= 0) p.seed = static_cast<std::uint64_t>(seed);
  p.validate();
  return p;
}

void EngineFlags::add_to(CLI::App* sub) {
  rt.add_to(sub);
  auto* g = sub->add_option_group("Engine");
  g->add_option("--kv-cache-gb", cfg.kv_cache_gb, "KV cache pool size in GiB (ignored with --num-blocks)")
      ->capture_default_str();
  g->add_option("--num-blocks", cfg.num_blocks, "KV cache pool size in blocks (0: from --kv-cache-gb)")
      ->capture_default_str();
  g->add_option("--block-size", cfg.block_size, "Tokens per KV cache block")->capture_default_str();
  g->add_option("--kv-dtype", cfg.kv_dtype,
                "KV cache storage: auto (the model dtype), int8 or int4 (per token and head, asymmetric scale and "
                "zero beside each row; about 1.8x / 3.2x more tokens than bf16 in the same --kv-cache-gb)")
      ->check(CLI::IsMember({"auto", "int8", "int4"}))
      ->capture_default_str();
  g->add_option("--max-num-seqs", cfg.max_num_seqs, "Most sequences running in one batch")->capture_default_str();
  g->add_option("--max-num-batched-tokens", cfg.max_num_batched_tokens,
                "Token budget of one step; longer prefills are chunked")
      ->capture_default_str();
  g->add_option("--max-model-len", cfg.max_model_len,
                "Longest prompt + answer (0: the model's, at most 8192)")
      ->capture_default_str();
  g->add_flag("--no-prefix-caching", no_prefix_caching, "Do not reuse KV blocks of earlier requests");
}

EngineConfig EngineFlags::get() const {
  rt.apply();
  EngineConfig c = cfg;
  c.device = rt.device;
  c.dtype = rt.dtype;
  c.prefix_caching = !no_prefix_caching;
  return c;
}

}  // namespace llmctl::cli
