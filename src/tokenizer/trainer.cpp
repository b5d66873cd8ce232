#include "llmctl/util/log.h"
#include "llmctl/tokenizer/trainer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "llmctl/data/jsonl.h"
#include "llmctl/tokenizer/tokenizer.h"
#include "llmctl/util/error.h"
#include "llmctl/util/fs.h"
#include "llmctl/util/progress.h"

namespace llmctl {
namespace {

// Length of the longest prefix of s[0, max) that ends on a UTF-8 character boundary.
std::size_t utf8_cut(const std::string& s, std::size_t start, std::size_t max) {
  std::size_t end = std::min(s.size(), start + max);
  if (end == s.size()) return end - start;
  while (end > start && (static_cast<unsigned char>(s[end]) & 0xC0) == 0x80) --end;
  return end > start ? end - start : std::min(max, s.size() - start);
}

// Feeds sentencepiece one "sentence" at a time: each document is split at newlines
// (newlines themselves are encoded by byte fallback) and cut to max_sentence_bytes.
// sentencepiece reservoir-samples at most input_sentence_size of them, so memory stays
// bounded whatever the corpus size.
class StreamingSentences : public sentencepiece::SentenceIterator {
 public:
  StreamingSentences(const TokenizerTrainOptions& opt)
      : stream_(opt.inputs),
        max_bytes_(static_cast<std::size_t>(opt.max_sentence_bytes)),
        progress_("reading corpus", stream_.total_bytes(), "B", opt.progress) {
    Next();
  }
  bool done() const override { return done_; }
  const std::string& value() const override { return value_; }
  sentencepiece::util::Status status() const override { return {}; }
  void Next() override {
    for (;;) {
      if (pos_ < doc_.size()) {
        std::size_t nl = doc_.find('\n', pos_);
        std::size_t line_end = nl == std::string::npos ? doc_.size() : nl;
        std::size_t n = utf8_cut(doc_, pos_, std::min(line_end - pos_, max_bytes_));
        value_.assign(doc_, pos_, n);
        pos_ += n;
        if (pos_ == nl) ++pos_;  // skip the newline
        if (value_.empty()) continue;
        ++sentences_;
        return;
      }
      if (!stream_.next(doc_)) {
        done_ = true;
        progress_.finish(format_count(sentences_) + " sentences");
        return;
      }
      pos_ = 0;
      progress_.set(stream_.bytes_read(), format_count(sentences_) + " sentences");
    }
  }
  const TextStream& stream() const { return stream_; }
  std::uint64_t sentences() const { return sentences_; }

 private:
  TextStream stream_;
  std::size_t max_bytes_;
  Progress progress_;
  std::string doc_, value_;
  std::size_t pos_ = 0;
  std::uint64_t sentences_ = 0;
  bool done_ = false;
};

}  // namespace

void write_tokenizer_metadata(const std::string& dir, int model_max_length) {
  using nlohmann::json;
  auto added = [](int id, const char* content) {
    return json{{"content", content}, {"lstrip", false}, {"normalized", false},
                {"rstrip", false},    {"single_word", false}, {"special", true}};
  };
  json cfg = {
      {"tokenizer_class", "LlamaTokenizer"},
      {"add_bos_token", false},
      {"add_eos_token", false},
      {"add_prefix_space", false},
      {"legacy", false},
      {"bos_token", kImStart},
      {"eos_token", kImEnd},
      {"unk_token", kEndOfText},
      {"pad_token", kEndOfText},
      {"model_max_length", model_max_length},
      {"clean_up_tokenization_spaces", false},
      {"spaces_between_special_tokens", false},
      {"sp_model_kwargs", json::object()},
      {"added_tokens_decoder",
       {{"0", added(0, kEndOfText)}, {"1", added(1, kImStart)}, {"2", added(2, kImEnd)}}},
      {"chat_template", kChatMLTemplate},
  };
  json special = {{"bos_token", kImStart}, {"eos_token", kImEnd},
                  {"unk_token", kEndOfText}, {"pad_token", kEndOfText}};
  write_file_atomic(dir + "/tokenizer_config.json", cfg.dump(2) + "\n");
  write_file_atomic(dir + "/special_tokens_map.json", special.dump(2) + "\n");
}

TokenizerTrainResult train_tokenizer(const TokenizerTrainOptions& opt) {
  if (opt.inputs.empty()) throw Error("--data: no input files given");
  if (opt.model_type != "bpe" && opt.model_type != "unigram")
    throw Error("--model-type must be bpe or unigram, not '" + opt.model_type + "'");
  if (opt.vocab_size < 300)
    throw Error("--vocab-size must be at least 300 (256 byte tokens + specials + pieces)");
  auto t0 = std::chrono::steady_clock::now();
  int threads = opt.threads > 0 ? opt.threads : static_cast<int>(std::thread::hardware_concurrency());

  StreamingSentences sentences(opt);
  std::unordered_map<std::string, std::string> args = {
      {"model_type", opt.model_type},
      {"vocab_size", std::to_string(opt.vocab_size)},
      {"hard_vocab_limit", "false"},
      {"character_coverage", std::to_string(opt.character_coverage)},
      {"input_sentence_size", std::to_string(opt.max_sentences)},
      {"shuffle_input_sentence", "true"},
      {"max_sentence_length", std::to_string(opt.max_sentence_bytes * 2)},
      {"num_threads", std::to_string(threads)},
      {"byte_fallback", "true"},
      {"split_digits", "true"},
      {"allow_whitespace_only_pieces", "true"},
      {"remove_extra_whitespaces", "false"},
      {"add_dummy_prefix", "false"},
      {"normalization_rule_name", "identity"},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"unk_piece", kEndOfText},
      {"bos_piece", kImStart},
      {"eos_piece", kImEnd},
      {"unk_surface", ""},
      {"minloglevel", "1"},
  };
  std::string model_proto;
  log::info(cat("training ", opt.model_type, " tokenizer, vocab ", opt.vocab_size, ", ", threads, " threads"));
  auto st = sentencepiece::SentencePieceTrainer::Train(args, &sentences, &model_proto);
  if (!st.ok()) throw Error("tokenizer training failed: " + st.ToString());
  if (sentences.sentences() == 0) throw Error("--data: no text found in the input files");

  // Each file is replaced atomically; other files in --out are left alone.
  std::filesystem::create_directories(opt.out_dir);
  write_file_atomic(opt.out_dir + "/tokenizer.model", model_proto);
  write_tokenizer_metadata(opt.out_dir, opt.model_max_length);

  sentencepiece::SentencePieceProcessor sp;
  if (!sp.LoadFromSerializedProto(model_proto).ok()) throw Error("trained tokenizer does not load");
  TokenizerTrainResult r;
  r.documents = sentences.stream().documents();
  r.sentences = sentences.sentences();
  r.malformed = sentences.stream().malformed();
  r.bytes = sentences.stream().bytes_read();
  r.vocab_size = sp.GetPieceSize();
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace llmctl
