// llmctl train-tokenizer: sentencepiece BPE/unigram on minimind jsonl or plain text.

#include "common.h"
#include "llmctl/tokenizer/trainer.h"

namespace llmctl::cli {

void add_train_tokenizer(CLI::App& app) {
  auto opt = std::make_shared<TokenizerTrainOptions>();
  auto json = std::make_shared<bool>(false);
  auto* sub = app.add_subcommand("train-tokenizer",
                                 "Train a sentencepiece tokenizer (byte fallback, split digits, "
                                 "ChatML special tokens at ids 0-2) on jsonl or text files");
  sub->add_option("--data", opt->inputs,
                  "Input files: minimind jsonl ({\"text\"} or {\"conversations\"}) or plain text, "
                  "one document per line")
      ->required()
      ->check(CLI::ExistingFile);
  sub->add_option("--out", opt->out_dir, "Output directory for tokenizer.model and its HF config files")
      ->required();
  sub->add_option("--vocab-size", opt->vocab_size, "Vocabulary size (including 256 byte tokens)")
      ->capture_default_str();
  sub->add_option("--model-type", opt->model_type, "bpe or unigram")
      ->check(CLI::IsMember({"bpe", "unigram"}))
      ->capture_default_str();
  sub->add_option("--max-sentences", opt->max_sentences,
                  "Memory bound: sample at most this many sentences (lines) from the corpus")
      ->capture_default_str();
  sub->add_option("--max-sentence-bytes", opt->max_sentence_bytes,
                  "Longer lines are cut into pieces of at most this many bytes")
      ->capture_default_str();
  sub->add_option("--character-coverage", opt->character_coverage,
                  "Share of characters covered by pieces; the rare rest use byte fallback")
      ->capture_default_str();
  sub->add_option("--model-max-length", opt->model_max_length, "model_max_length in tokenizer_config.json")
      ->capture_default_str();
  sub->add_option("--threads", opt->threads, "Training threads (0: all cores)")->capture_default_str();
  sub->add_flag("--json", *json, "Print a JSON summary on stdout");
  sub->callback([opt, json] {
    opt->progress = true;
    auto r = train_tokenizer(*opt);
    if (*json) {
      print_json({{"out", opt->out_dir}, {"vocab_size", r.vocab_size}, {"documents", r.documents},
                  {"sentences", r.sentences}, {"malformed_lines", r.malformed}, {"bytes", r.bytes},
                  {"seconds", r.seconds}});
    } else {
      std::printf("tokenizer: %s (vocab %d, %llu documents, %llu malformed lines skipped, %.1f s)\n",
                  opt->out_dir.c_str(), r.vocab_size, static_cast<unsigned long long>(r.documents),
                  static_cast<unsigned long long>(r.malformed), r.seconds);
    }
  });
}

}  // namespace llmctl::cli
