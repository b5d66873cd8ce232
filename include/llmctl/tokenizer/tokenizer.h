#pragma once
// Text <-> token ids. Backed by a sentencepiece model (tokenizer.model) in a model or
// tokenizer directory. Special tokens (<|im_start|> ...) written inside text are matched
// first and mapped to their ids, as HF tokenizers do; the rest goes to sentencepiece.
#include <memory>
#include <string>
#include <vector>

#include "llmctl/data/jsonl.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace llmctl {

class Tokenizer {
 public:
  // Loads DIR/tokenizer.model (a directory) or the given .model file.
  static Tokenizer load(const std::string& path);
  // True when `dir` holds a tokenizer this class can load.
  static bool exists_in(const std::string& dir);
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  std::vector<int> encode(const std::string& text, bool parse_special = true) const;
  std::string decode(const std::vector<int>& ids, bool skip_special = false) const;
  std::string id_to_piece(int id) const;
  int piece_to_id(const std::string& piece) const;  // -1 when absent
  bool is_special(int id) const;
  int vocab_size() const;
  int bos_id() const { return bos_id_; }
  int eos_id() const { return eos_id_; }
  int pad_id() const { return pad_id_; }

  // ChatML: <|im_start|>{role}\n{content}<|im_end|>\n ... [+ <|im_start|>assistant\n]
  static std::string render_chatml(const std::vector<Message>& messages, bool add_generation_prompt);

  // Directory where the tokenizer files were found (to copy them into model dirs).
  const std::string& source_dir() const { return dir_; }

 private:
  Tokenizer();
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::vector<std::pair<std::string, int>> specials_;  // longest first
  std::string dir_;
  int bos_id_ = -1, eos_id_ = -1, pad_id_ = -1;
};

// The fixed special tokens of llmctl tokenizers (minimind's ids).
inline constexpr const char* kEndOfText = "<|endoftext|>";  // id 0: pad / unk
inline constexpr const char* kImStart = "<|im_start|>";     // id 1: bos
inline constexpr const char* kImEnd = "<|im_end|>";         // id 2: eos

// HF's chat_template (Jinja) for ChatML, as written into tokenizer_config.json.
extern const char* const kChatMLTemplate;

// Names of the tokenizer files copied along with a model directory.
const std::vector<std::string>& tokenizer_file_names();

}  // namespace llmctl
