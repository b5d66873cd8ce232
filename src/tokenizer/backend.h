#pragma once
// What Tokenizer needs from a backend (sentencepiece, byte-level BPE). Internal to
// src/tokenizer. Ids passed in are already checked to be in [0, vocab_size()).
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "llmctl/tokenizer/bpe.h"
#include "llmctl/tokenizer/tokenizer.h"

namespace llmctl::detail {

class TokenizerBackend {
 public:
  virtual ~TokenizerBackend() = default;
  virtual Tokenizer::Kind kind() const = 0;
  virtual void encode(std::string_view text, bool parse_special, std::vector<int>& out) const = 0;
  // Checks the ids (Error for one outside the vocabulary).
  virtual std::string decode(const std::vector<int>& ids, bool skip_special) const = 0;
  virtual int vocab_size() const = 0;
  virtual std::string id_to_piece(int id) const = 0;
  virtual int piece_to_id(const std::string& piece) const = 0;
  virtual bool is_special(int id) const = 0;
  virtual std::string token_bytes(int id) const = 0;
  virtual std::vector<VocabEntry> vocabulary() const = 0;
  virtual std::vector<std::string> merges() const = 0;
  virtual std::string pre_tokenizer_name() const = 0;
  virtual bool add_space_prefix() const = 0;
  // Tokens matched in text before the model runs (sentencepiece: control, unknown and
  // user-defined pieces), by id.
  virtual std::vector<AddedToken> added_tokens() const = 0;
  // The ids the model file itself names (-1 when it names none).
  struct Ids {
    int bos = -1, eos = -1, pad = -1, unk = -1;
  };
  virtual Ids model_ids() const = 0;
  // Whether the model file makes a BOS part of every encoded text.
  virtual bool model_adds_bos() const = 0;
  // The model file to save: its name and contents.
  virtual std::pair<std::string, std::string> model_file(bool add_bos, int bos_id) const = 0;
};

std::unique_ptr<TokenizerBackend> load_sentencepiece(const std::string& file);
std::unique_ptr<TokenizerBackend> sentencepiece_from_vocab(const std::vector<VocabEntry>& vocab, int bos_id, int eos_id,
                                                           int unk_id, int pad_id, bool add_space_prefix);
std::unique_ptr<TokenizerBackend> bpe_backend(std::unique_ptr<ByteLevelBpe> bpe);

}  // namespace llmctl::detail
