#pragma once
// Text <-> token ids, with one of two backends:
//  - sentencepiece (tokenizer.model: llmctl's own tokenizers, Llama 2, Mistral);
//  - byte-level BPE from an HF tokenizer.json (GPT-2, Qwen2/2.5/3, Llama 3, SmolLM,
//    minimind), encoding exactly as HF tokenizers does.
// Special tokens (<|im_start|> ...) written inside text are matched first and mapped to
// their ids, as HF tokenizers do. encode never adds BOS/EOS: callers do (see add_bos()).
// Encoding is thread-safe.
#include <memory>
#include <string>
#include <vector>

#include "llmctl/data/jsonl.h"

namespace llmctl {

// GGUF's token type numbering, also used for sentencepiece piece types.
enum class TokenType : int { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 };

struct VocabEntry {
  std::string piece;
  float score = 0.0f;
  TokenType type = TokenType::Normal;
};

namespace detail {
class TokenizerBackend;
}

class Tokenizer {
 public:
  enum class Kind { SentencePiece, ByteLevelBpe };

  // From a directory: DIR/tokenizer.json when it is a byte-level BPE one, else
  // DIR/tokenizer.model. From a file: a tokenizer.json or a sentencepiece .model. The
  // directory's tokenizer_config.json / special_tokens_map.json give the special tokens,
  // add_bos_token and the chat template.
  static Tokenizer load(const std::string& path);
  // True when `dir` holds a tokenizer.json or a tokenizer.model.
  static bool exists_in(const std::string& dir);

  // A sentencepiece BPE tokenizer from a vocabulary (e.g. GGUF's `llama` vocab: pieces
  // with scores and types, byte pieces "<0x0A>"). add_bos() is true when bos_id >= 0.
  static Tokenizer from_sentencepiece_vocab(const std::vector<VocabEntry>& vocab, int bos_id, int eos_id, int unk_id,
                                            int pad_id, bool add_space_prefix);
  // A byte-level BPE tokenizer from a vocabulary (byte-level spelling), merges ("a b", by
  // rank) and a pre-tokenizer named as llama.cpp's `tokenizer.ggml.pre` names it: gpt2,
  // default, llama-bpe, qwen2, smollm. Control / UserDefined tokens become added tokens
  // (Control = special). add_bos() is the family's: true for llama-bpe (when bos_id >= 0).
  static Tokenizer from_byte_level_bpe(const std::vector<VocabEntry>& vocab, const std::vector<std::string>& merges,
                                       const std::string& pre_tokenizer, int bos_id, int eos_id, int pad_id);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  Kind kind() const;
  std::vector<int> encode(const std::string& text, bool parse_special = true) const;
  // BPE: the raw bytes (possibly invalid UTF-8 when ids end inside a character);
  // sentencepiece: its decode (U+FFFD for broken bytes).
  std::string decode(const std::vector<int>& ids, bool skip_special = false) const;
  std::string id_to_piece(int id) const;
  int piece_to_id(const std::string& piece) const;  // -1 when absent
  bool is_special(int id) const;
  int vocab_size() const;
  int bos_id() const { return bos_id_; }
  int eos_id() const { return eos_id_; }
  int pad_id() const { return pad_id_; }

  // Every id in order (BPE: score 0; types Normal / Control / UserDefined, Unused for ids
  // no token has).
  std::vector<VocabEntry> vocabulary() const;
  // BPE: "a b" by rank; empty for sentencepiece.
  std::vector<std::string> merges() const;
  // BPE: the llama.cpp pre-tokenizer name matching this tokenizer's pre-tokenizer; "" when
  // none does (and for sentencepiece).
  std::string pre_tokenizer_name() const;
  // Whether the model expects a BOS before a text (tokenizer_config.json add_bos_token, else
  // the tokenizer.json post_processor; sentencepiece: true when it has a BOS).
  bool add_bos() const { return add_bos_; }
  void set_add_bos(bool b) { add_bos_ = b; }  // e.g. a GGUF's tokenizer.ggml.add_bos_token
  // sentencepiece: the normalizer's add_dummy_prefix; false for BPE.
  bool add_space_prefix() const;
  // The raw bytes token `id` stands for ("<0xE4>" -> 1 byte, "▁" -> ' ', the byte-level map
  // undone; a special token -> its text).
  std::string token_bytes(int id) const;
  // tokenizer_config.json's chat_template (a string, or the "default" entry of a list);
  // kChatMLTemplate when absent.
  const std::string& chat_template() const { return chat_template_; }
  void set_chat_template(std::string t) { chat_template_ = std::move(t); }

  // Writes tokenizer.model (sentencepiece) or tokenizer.json (BPE), tokenizer_config.json and
  // special_tokens_map.json into the existing directory `dir`, each atomically.
  void save(const std::string& dir) const;

  // ChatML: <|im_start|>{role}\n{content}<|im_end|>\n ... [+ <|im_start|>assistant\n]
  static std::string render_chatml(const std::vector<Message>& messages, bool add_generation_prompt);

  // Directory where the tokenizer files were found (to copy them into model dirs); "" for
  // a tokenizer built from a vocabulary.
  const std::string& source_dir() const { return dir_; }

 private:
  Tokenizer();
  void read_config(const std::string& dir);
  std::unique_ptr<detail::TokenizerBackend> impl_;
  std::string dir_;
  std::string chat_template_;
  std::string config_json_;  // the tokenizer_config.json read at load, kept by save()
  int bos_id_ = -1, eos_id_ = -1, pad_id_ = -1, unk_id_ = -1;
  bool add_bos_ = false, add_eos_ = false;
  long long model_max_length_ = -1;
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
