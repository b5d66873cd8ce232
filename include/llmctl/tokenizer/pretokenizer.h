#pragma once
// The text pipeline of a byte-level BPE tokenizer, configured from an HF tokenizer.json:
//  - GPT-2's byte <-> unicode map (every byte gets a printable code point, so any byte
//    string is a vocabulary string);
//  - the normalizer (Unicode normal forms through utf8proc);
//  - the pre-tokenizer (Split / Digits / ByteLevel, regexes through PCRE2), with HF
//    tokenizers' exact splitting rules, so the pre-tokens (and so the ids) are the same.
// Text that is not valid UTF-8 never fails: invalid bytes are characters of their own that
// no regex class matches, and normalizers leave them as they are.
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace llmctl::bpe {

// --- UTF-8 -------------------------------------------------------------------------------

// The code point at s[i] and its length in bytes; an invalid or truncated sequence is one
// byte long with code point -1.
struct Utf8Char {
  std::int32_t cp;
  std::uint32_t len;
};
Utf8Char utf8_at(std::string_view s, std::size_t i);
void append_utf8(std::string& out, std::uint32_t cp);

// --- GPT-2's byte-level map ---------------------------------------------------------------

// UTF-8 of the code point byte `b` is mapped to ("Ġ" for ' ').
const std::string& byte_to_chars(unsigned char b);
std::string bytes_to_chars(std::string_view bytes);
// HF's ByteLevel decoder for one token: its bytes when every character is in the map, else
// the token's own UTF-8 (an added token such as "<｜end▁of▁sentence｜>" stays as written).
// Returns false in the second case.
bool chars_to_bytes(std::string_view token, std::string& out);

// --- Normalizer ----------------------------------------------------------------------------

class Normalizer {
 public:
  // From tokenizer.json's "normalizer": null, NFC, NFD, NFKC, NFKD or a Sequence of them.
  // `where` names the file for errors.
  static Normalizer from_json(const nlohmann::json& j, const std::string& where);
  bool identity() const { return forms_.empty(); }
  // out = normalize(in). Invalid UTF-8 bytes are kept in place.
  void apply(std::string_view in, std::string& out) const;

 private:
  std::vector<int> forms_;  // utf8proc option sets, applied in order
};

// --- Pre-tokenizer -------------------------------------------------------------------------

struct Range {
  std::uint32_t begin, end;
};

class Regex;

class PreTokenizer {
 public:
  // From tokenizer.json's "pre_tokenizer": ByteLevel, or a Sequence of Split / Digits steps
  // ending in ByteLevel. `where` names the file for errors.
  static PreTokenizer from_json(const nlohmann::json& j, const std::string& where);
  PreTokenizer();
  PreTokenizer(PreTokenizer&&) noexcept;
  PreTokenizer& operator=(PreTokenizer&&) noexcept;
  ~PreTokenizer();

  // Splits `text` into pre-tokens: byte ranges into `buf`, which holds `text` with the
  // spaces ByteLevel(add_prefix_space) inserts. Thread-safe.
  void split(std::string_view text, std::string& buf, std::vector<Range>& out) const;

 private:
  struct Step;
  std::vector<Step> steps_;  // the last one is ByteLevel
};

// The pre-tokenizer (and normalizer) JSON of a llama.cpp `tokenizer.ggml.pre` name: "gpt2" /
// "default", "llama-bpe", "qwen2", "smollm". `ignore_merges` is set as the family's
// tokenizer.json sets it. Unknown name: Error listing the known ones.
struct PreTokenizerPreset {
  std::string pre_tokenizer_json;  // JSON text (nlohmann stays out of this header)
  std::string normalizer_json;     // "null" when none
  bool ignore_merges = false;
};
PreTokenizerPreset pre_tokenizer_preset(const std::string& name);
// The llama.cpp name of a tokenizer.json pre_tokenizer, "" when it is none of the presets.
std::string pre_tokenizer_preset_name(const nlohmann::json& pre_tokenizer);

}  // namespace llmctl::bpe
