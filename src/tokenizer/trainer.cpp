#include "llmctl/util/log.h"
#include "llmctl/tokenizer/trainer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <algorithm>

#include "llmctl/data/jsonl.h"
#include "llmctl/tokenizer/tokenizer.h"
#include "llmctl/util/error.h"
#include "llmctl/util/fs.h"
#include "llmctl/util/progress.h"
#include "llmctl/util/threads.h"

namespace llmctl {
namespace {

// Decodes one UTF-8 character at s[i]; returns its length and sets `cp`. Invalid bytes
// come back as one-byte "characters" 0x110000 + byte, which are never kept as pieces.
std::size_t next_char(const std::string& s, std::size_t i, std::uint32_t& cp) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  std::size_t len = b0 < 0x80 ? 1 : (b0 >> 5) == 0x6 ? 2 : (b0 >> 4) == 0xE ? 3 : (b0 >> 3) == 0x1E ? 4 : 0;
  if (len == 0 || i + len > s.size()) {
    cp = 0x110000 + b0;
    return 1;
  }
  cp = len == 1 ? b0 : b0 & (0x7F >> len);
  for (std::size_t k = 1; k < len; ++k) {
    auto b = static_cast<unsigned char>(s[i + k]);
    if ((b & 0xC0) != 0x80) {
      cp = 0x110000 + b0;
      return 1;
    }
    cp = (cp << 6) | (b & 0x3F);
  }
  return len;
}

// The alphabet sentencepiece may turn into pieces: the most frequent characters covering
// `coverage` of the corpus, but never more than a small vocabulary has room for (the
// rest of the vocabulary is for merges). Characters outside it are encoded by byte
// fallback. Doing this here, not in sentencepiece, lets a 1k-6k vocabulary train on a
// corpus with thousands of distinct CJK characters.
std::unordered_set<std::uint32_t> choose_alphabet(const TokenizerTrainOptions& opt) {
  std::unordered_map<std::uint32_t, std::uint64_t> freq;
  std::uint64_t total = 0;
  DocumentStream stream(opt.inputs);
  Progress progress("counting characters", stream.total_bytes(), "B", opt.progress);
  std::string text;
  while (stream.next(text)) {
    for (std::size_t i = 0; i < text.size();) {
      std::uint32_t cp;
      i += next_char(text, i, cp);
      if (cp != '\n' && cp < 0x110000) {
        ++freq[cp];
        ++total;
      }
    }
    progress.set(stream.bytes_read());
  }
  progress.finish(format_count(static_cast<double>(freq.size())) + " distinct characters");
  std::vector<std::pair<std::uint64_t, std::uint32_t>> by_freq;
  for (auto [cp, n] : freq) by_freq.emplace_back(n, cp);
  std::sort(by_freq.begin(), by_freq.end(), std::greater<>());
  const std::size_t room = static_cast<std::size_t>(std::max(16, (opt.vocab_size - 259) * 3 / 4));
  std::unordered_set<std::uint32_t> keep;
  std::uint64_t covered = 0;
  for (auto [n, cp] : by_freq) {
    if (keep.size() >= room || (total > 0 && covered >= opt.character_coverage * static_cast<double>(total))) break;
    keep.insert(cp);
    covered += n;
  }
  if (keep.size() < by_freq.size())
    log::info(cat("alphabet: ", keep.size(), " of ", by_freq.size(), " characters become pieces (",
                  total ? 100.0 * covered / total : 100.0, "% of the text); the rest use byte fallback"));
  return keep;
}

// Feeds sentencepiece one "sentence" at a time: each document is split at newlines and at
// characters outside the alphabet (all of which byte fallback encodes) and cut to
// max_sentence_bytes. sentencepiece reservoir-samples at most input_sentence_size of
// them, so memory stays bounded whatever the corpus size.
class StreamingSentences : public sentencepiece::SentenceIterator {
 public:
  StreamingSentences(const TokenizerTrainOptions& opt, const std::unordered_set<std::uint32_t>& alphabet)
      : stream_(opt.inputs, /*warn=*/false),  // choose_alphabet() already warned
        alphabet_(alphabet),
        max_bytes_(static_cast<std::size_t>(opt.max_sentence_bytes)),
        progress_("reading corpus", stream_.total_bytes(), "B", opt.progress) {
    Next();
  }
  bool done() const override { return done_; }
  const std::string& value() const override { return value_; }
  sentencepiece::util::Status status() const override { return {}; }
  void Next() override {
    for (;;) {
      // Take the next run of alphabet characters from the current document.
      value_.clear();
      while (pos_ < doc_.size()) {
        std::uint32_t cp;
        std::size_t len = next_char(doc_, pos_, cp);
        if (!alphabet_.count(cp)) {
          pos_ += len;
          if (!value_.empty()) break;
          continue;
        }
        if (value_.size() + len > max_bytes_) break;
        value_.append(doc_, pos_, len);
        pos_ += len;
      }
      if (!value_.empty()) {
        ++sentences_;
        return;
      }
      if (!stream_.next(doc_)) {
        done_ = true;
        progress_.finish(format_count(static_cast<double>(sentences_)) + " sentences");
        return;
      }
      pos_ = 0;
      progress_.set(stream_.bytes_read(), format_count(static_cast<double>(sentences_)) + " sentences");
    }
  }
  const DocumentStream& stream() const { return stream_; }
  std::uint64_t sentences() const { return sentences_; }

 private:
  DocumentStream stream_;
  const std::unordered_set<std::uint32_t>& alphabet_;
  std::size_t max_bytes_;
  Progress progress_;
  std::string doc_, value_;
  std::size_t pos_ = 0;
  std::uint64_t sentences_ = 0;
  bool done_ = false;
};

std::unordered_map<std::string, std::string> trainer_args(const TokenizerTrainOptions& opt, int threads) {
  return {
      {"model_type", opt.model_type},
      {"vocab_size", std::to_string(opt.vocab_size)},
      {"hard_vocab_limit", "false"},
      {"character_coverage", "1.0"},  // the alphabet was chosen by choose_alphabet()
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
}

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
  const int threads = resolve_threads(opt.threads);

  log::info(cat("training ", opt.model_type, " tokenizer, vocab ", opt.vocab_size, ", ", threads, " threads"));
  const auto alphabet = choose_alphabet(opt);
  if (alphabet.empty()) throw Error("--data: no text found in the input files");
  StreamingSentences sentences(opt, alphabet);
  std::string model_proto;
  auto st = sentencepiece::SentencePieceTrainer::Train(trainer_args(opt, threads), &sentences, &model_proto);
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
