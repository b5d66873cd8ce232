#pragma once
// Byte-level BPE (GPT-2, Qwen2/2.5/3, Llama 3, SmolLM, minimind) as HF tokenizers runs it
// from a tokenizer.json, id for id: added tokens are matched in the text first (leftmost,
// longest), the rest is normalized, pre-tokenized, and each pre-token's bytes are merged
// by rank. Decoding undoes the byte-level map and returns raw bytes.
// Encoding is thread-safe; each thread keeps its own bounded cache of pre-token -> ids.
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "llmctl/tokenizer/pretokenizer.h"
#include "llmctl/tokenizer/tokenizer.h"

namespace llmctl {

struct AddedToken {
  int id = -1;
  std::string content;
  bool special = false;
  bool lstrip = false, rstrip = false, single_word = false;
  bool normalized = false;  // matched in the normalized text (HF's default for non-special)
};

class ByteLevelBpe {
 public:
  // True when a parsed tokenizer.json is a byte-level one (ByteLevel decoder or
  // pre-tokenizer); Metaspace / sentencepiece-style ones are not.
  static bool is_byte_level(const nlohmann::json& tokenizer_json);
  // Every unsupported or malformed field is an Error naming `where` and the field.
  static std::unique_ptr<ByteLevelBpe> from_json(const nlohmann::json& tokenizer_json, const std::string& where);
  // From vocabulary pieces (byte-level spelling, "Ġthe"), merges "a b" by rank, and a
  // llama.cpp pre-tokenizer name. Control / UserDefined entries become added tokens
  // (Control = special); Unused entries are ids no text encodes to.
  static std::unique_ptr<ByteLevelBpe> from_vocab(const std::vector<VocabEntry>& vocab,
                                                  const std::vector<std::string>& merges,
                                                  const std::string& pre_tokenizer);
  ~ByteLevelBpe();

  // Appends the ids of `text`; parse_special=false leaves special tokens' text to the BPE.
  void encode(std::string_view text, bool parse_special, std::vector<int>& out) const;
  std::string decode(const std::vector<int>& ids, bool skip_special) const;

  int vocab_size() const { return static_cast<int>(pieces_.size()); }
  const std::string& piece(int id) const { return pieces_[static_cast<std::size_t>(id)]; }
  int piece_to_id(const std::string& piece) const;
  bool is_special(int id) const { return (flags_[static_cast<std::size_t>(id)] & kSpecial) != 0; }
  const std::string& token_bytes(int id) const { return bytes_[static_cast<std::size_t>(id)]; }
  const std::vector<AddedToken>& added_tokens() const { return added_; }
  std::vector<VocabEntry> vocabulary() const;
  std::vector<std::string> merges() const;
  std::string pre_tokenizer_name() const;
  // The post_processor adds a BOS (TemplateProcessing starting with a special token).
  bool post_processor_adds_bos() const { return post_adds_bos_; }
  // A complete tokenizer.json (HF tokenizers loads it and encodes identically); its
  // post_processor adds `bos_id` when add_bos.
  std::string to_json(bool add_bos, int bos_id) const;

 private:
  ByteLevelBpe();
  void finish();  // builds the lookup tables once vocab, merges and added tokens are set
  void encode_plain(std::string_view text, std::vector<int>& out) const;
  void encode_word(std::string_view word, std::vector<int>& out) const;
  struct Segment {
    std::uint32_t begin, end;
    int id;  // an added token, or -1 for text
  };
  struct Matcher;
  void split_added(std::string_view s, const Matcher& m, bool parse_special, std::vector<Segment>& out) const;

  static constexpr std::uint8_t kInVocab = 1, kAdded = 2, kSpecial = 4, kHole = 8;
  std::vector<std::string> pieces_;  // by id (byte-level spelling; added tokens' content)
  std::vector<std::string> bytes_;   // by id: what decoding the id gives
  std::vector<std::uint8_t> flags_;
  std::unordered_map<std::string, int> piece_ids_;
  std::vector<std::pair<int, int>> merge_list_;  // by rank, as given

  struct Tables;  // hash tables of the hot loop
  std::unique_ptr<Tables> t_;
  std::vector<AddedToken> added_;  // by id
  std::unique_ptr<Matcher> raw_matcher_, norm_matcher_;

  bpe::Normalizer normalizer_;
  bpe::PreTokenizer pre_;
  nlohmann::json normalizer_json_, pre_tokenizer_json_, post_processor_json_, decoder_json_;
  std::string unk_token_;
  int unk_id_ = -1;
  bool fuse_unk_ = false, ignore_merges_ = false, post_adds_bos_ = false;
  std::uint64_t uid_;  // tells this tokenizer's per-thread cache from another's
};

}  // namespace llmctl
