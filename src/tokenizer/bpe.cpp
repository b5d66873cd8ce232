#include "llmctl/tokenizer/bpe.h"

#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <climits>
#include <cstring>

#include "llmctl/util/error.h"

namespace llmctl {

using nlohmann::json;
using bpe::utf8_at;

namespace {

constexpr int kMaxId = 1 << 24;  // larger ids in a tokenizer.json are taken for corruption

std::uint64_t hash_bytes(const char* p, std::size_t n) {
  std::uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xC2B2AE3D27D4EB4Full);
  while (n >= 8) {
    std::uint64_t v;
    std::memcpy(&v, p, 8);
    h = (h ^ v) * 0xFF51AFD7ED558CCDull;
    h ^= h >> 32;
    p += 8;
    n -= 8;
  }
  std::uint64_t v = 0;
  std::memcpy(&v, p, n);
  h = (h ^ v) * 0xC4CEB9FE1A85EC53ull;
  h ^= h >> 29;
  return h | 1;  // 0 marks an empty slot
}

std::size_t table_size(std::size_t n) {
  std::size_t cap = 16;
  while (cap < 2 * n) cap <<= 1;
  return cap;
}

// Byte strings -> ids, open addressing; looked up by string_view without allocating.
class StrIdMap {
 public:
  void reserve(std::size_t n) {
    slots_.assign(table_size(n), Slot{});
    mask_ = slots_.size() - 1;
  }
  void insert(std::string_view k, int v) {  // the first value for a key stays
    const std::uint64_t h = hash_bytes(k.data(), k.size());
    for (std::size_t i = h & mask_;; i = (i + 1) & mask_) {
      Slot& s = slots_[i];
      if (s.h == 0) {
        s = {h, static_cast<std::uint32_t>(keys_.size()), static_cast<std::uint32_t>(k.size()), v};
        keys_.append(k);
        return;
      }
      if (s.h == h && key(s) == k) return;
    }
  }
  int find(std::string_view k) const {
    if (slots_.empty()) return -1;
    const std::uint64_t h = hash_bytes(k.data(), k.size());
    for (std::size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.h == 0) return -1;
      if (s.h == h && key(s) == k) return s.value;
    }
  }

 private:
  struct Slot {
    std::uint64_t h = 0;
    std::uint32_t off = 0, len = 0;
    int value = -1;
  };
  std::string_view key(const Slot& s) const { return std::string_view(keys_).substr(s.off, s.len); }
  std::vector<Slot> slots_;
  std::string keys_;
  std::size_t mask_ = 0;
};

// (left id, right id) -> (rank, merged id).
class PairMap {
 public:
  void reserve(std::size_t n) {
    slots_.assign(table_size(n), Slot{});
    mask_ = slots_.size() - 1;
  }
  void set(int a, int b, int rank, int id) {  // a later rank replaces an earlier one, as in HF
    const std::uint64_t k = key(a, b);
    for (std::size_t i = slot(k);; i = (i + 1) & mask_) {
      Slot& s = slots_[i];
      if (s.key == kEmpty || s.key == k) {
        s = {k, rank, id};
        return;
      }
    }
  }
  bool find(int a, int b, int& rank, int& id) const {
    const std::uint64_t k = key(a, b);
    for (std::size_t i = slot(k);; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.key == k) {
        rank = s.rank;
        id = s.id;
        return true;
      }
      if (s.key == kEmpty) return false;
    }
  }

 private:
  static constexpr std::uint64_t kEmpty = ~0ull;
  static std::uint64_t key(int a, int b) {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
  }
  std::size_t slot(std::uint64_t k) const { return static_cast<std::size_t>((k * 0x9E3779B97F4A7C15ull) >> 20) & mask_; }
  struct Slot {
    std::uint64_t key = kEmpty;
    int rank = 0, id = 0;
  };
  std::vector<Slot> slots_;
  std::size_t mask_ = 0;
};

// A thread's cache of pre-token bytes -> ids. Bounded: it starts over when full, which
// keeps the frequent words of the current text without any bookkeeping per hit.
class WordCache {
 public:
  static constexpr std::size_t kSlots = 1 << 16, kMaxEntries = kSlots / 2, kMaxKey = 256;

  const int* find(std::string_view k, std::uint64_t h, std::uint32_t& n) const {
    if (slots_.empty()) return nullptr;
    for (std::size_t i = h & (kSlots - 1);; i = (i + 1) & (kSlots - 1)) {
      const Slot& s = slots_[i];
      if (s.h == 0) return nullptr;
      if (s.h == h && s.klen == k.size() && std::memcmp(keys_.data() + s.koff, k.data(), k.size()) == 0) {
        n = s.nids;
        return ids_.data() + s.ioff;
      }
    }
  }
  void insert(std::string_view k, std::uint64_t h, const int* ids, std::uint32_t n) {
    if (k.size() > kMaxKey) return;
    if (slots_.empty()) slots_.resize(kSlots);
    if (size_ >= kMaxEntries) clear();
    std::size_t i = h & (kSlots - 1);
    while (slots_[i].h != 0) i = (i + 1) & (kSlots - 1);
    slots_[i] = {h, static_cast<std::uint32_t>(keys_.size()), static_cast<std::uint32_t>(k.size()),
                 static_cast<std::uint32_t>(ids_.size()), n};
    keys_.append(k);
    ids_.insert(ids_.end(), ids, ids + n);
    ++size_;
  }
  void clear() {
    std::fill(slots_.begin(), slots_.end(), Slot{});
    keys_.clear();
    ids_.clear();
    size_ = 0;
  }

 private:
  struct Slot {
    std::uint64_t h = 0;
    std::uint32_t koff = 0, klen = 0, ioff = 0, nids = 0;
  };
  std::vector<Slot> slots_;
  std::string keys_;
  std::vector<int> ids_;
  std::size_t size_ = 0;
};

// The calling thread's cache for tokenizer `uid` (two per thread: a thread rarely
// alternates between more tokenizers than that).
WordCache& word_cache(std::uint64_t uid) {
  struct Caches {
    std::uint64_t owner[2] = {0, 0};
    WordCache cache[2];
    unsigned next = 0;
  };
  thread_local Caches c;
  for (int i = 0; i < 2; ++i)
    if (c.owner[i] == uid) return c.cache[i];
  const unsigned v = c.next++ & 1u;
  c.cache[v].clear();
  c.owner[v] = uid;
  return c.cache[v];
}

std::uint64_t next_uid() {
  static std::atomic<std::uint64_t> n{1};
  return n++;
}

// Rust regex's \s (White_Space), as HF's lstrip / rstrip use it.
bool is_space(std::int32_t cp) {
  return (cp >= 9 && cp <= 13) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
         cp == 0x3000;
}

// Rust regex's \w (letters, marks, digits, connector punctuation), as single_word uses it.
bool is_word(std::int32_t cp) {
  if (cp < 0) return false;
  if (cp < 0x80) return std::isalnum(cp) || cp == '_';
  if (cp == 0x200C || cp == 0x200D) return true;
  switch (utf8proc_category(cp)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT: case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_MN: case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_PC:
      return true;
    default:
      return false;
  }
}

// The character that ends at s[end) (an invalid byte counts as a character).
bpe::Utf8Char char_before(std::string_view s, std::size_t end) {
  std::size_t k = end - 1;
  while (k > 0 && end - k < 4 && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
  auto c = utf8_at(s, k);
  if (k + c.len != end) return {-1, 1};
  return c;
}

std::string str_field(const json& j, const char* key) {
  return j.is_object() && j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : "";
}

bool post_processor_adds_bos_of(const json& p) {
  const std::string type = str_field(p, "type");
  if (type == "Sequence" && p.contains("processors") && p["processors"].is_array()) {
    for (const auto& x : p["processors"])
      if (post_processor_adds_bos_of(x)) return true;
    return false;
  }
  if (type == "TemplateProcessing" && p.contains("single")) {
    const auto& s = p["single"];
    if (s.is_array()) return !s.empty() && s[0].is_object() && s[0].contains("SpecialToken");
    if (s.is_string()) return !s.get<std::string>().empty() && s.get<std::string>()[0] != '$';
  }
  return type == "RobertaProcessing" || type == "BertProcessing";
}

bool contains_byte_level(const json& j, const char* list_key) {
  const std::string type = str_field(j, "type");
  if (type == "ByteLevel") return true;
  if (type == "Sequence" && j.contains(list_key) && j[list_key].is_array())
    for (const auto& x : j[list_key])
      if (contains_byte_level(x, list_key)) return true;
  return false;
}

bool only_byte_level(const json& j) {
  const std::string type = str_field(j, "type");
  if (type == "ByteLevel") return true;
  if (type != "Sequence" || !j.contains("decoders") || !j["decoders"].is_array() || j["decoders"].empty()) return false;
  for (const auto& x : j["decoders"])
    if (!only_byte_level(x)) return false;
  return true;
}

json byte_level_decoder_json() {
  return {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
}

}  // namespace

struct ByteLevelBpe::Tables {
  StrIdMap raw_vocab;  // model-vocabulary tokens by their bytes
  PairMap merges;
  std::array<int, 256> byte_id{};  // the token of each single byte, -1 when absent
};

// Added tokens by first byte, longest first: the first that matches at a position is the
// leftmost-longest match HF's Aho-Corasick finds.
struct ByteLevelBpe::Matcher {
  struct Entry {
    std::string text;
    int index;  // into added_
  };
  std::vector<Entry> entries;
  std::array<std::uint32_t, 257> first{};
  bool empty() const { return entries.empty(); }
  void build() {
    std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
      const auto fa = static_cast<unsigned char>(a.text[0]), fb = static_cast<unsigned char>(b.text[0]);
      return fa != fb ? fa < fb : a.text.size() > b.text.size();
    });
    std::size_t k = 0;
    for (int b = 0; b <= 256; ++b) {
      while (k < entries.size() && static_cast<unsigned char>(entries[k].text[0]) < b) ++k;
      first[static_cast<std::size_t>(b)] = static_cast<std::uint32_t>(k);
    }
  }
};

ByteLevelBpe::ByteLevelBpe() : t_(std::make_unique<Tables>()), uid_(next_uid()) {}
ByteLevelBpe::~ByteLevelBpe() = default;

bool ByteLevelBpe::is_byte_level(const json& j) {
  if (!j.is_object()) return false;
  return (j.contains("decoder") && contains_byte_level(j["decoder"], "decoders")) ||
         (j.contains("pre_tokenizer") && contains_byte_level(j["pre_tokenizer"], "pretokenizers"));
}

// --- Loading -----------------------------------------------------------------------------

std::unique_ptr<ByteLevelBpe> ByteLevelBpe::from_json(const json& j, const std::string& where) {
  auto fail = [&](const std::string& msg) { return Error(where + ": " + msg); };
  if (!j.is_object()) throw fail("not a tokenizer.json object");
  if (!j.contains("model") || !j["model"].is_object()) throw fail("missing \"model\" object");
  const json& m = j["model"];
  const std::string type = m.contains("type") ? (m["type"].is_string() ? m["type"].get<std::string>() : "?")
                                              : (m.contains("merges") ? "BPE" : "");
  if (type != "BPE")
    throw fail("\"model.type\" is '" + type + "': only BPE tokenizer.json files are supported (byte-level BPE)");
  std::unique_ptr<ByteLevelBpe> t(new ByteLevelBpe());

  // Options that change the algorithm: only the byte-level BPE ones are accepted.
  if (m.contains("dropout") && !m["dropout"].is_null() && !(m["dropout"].is_number() && m["dropout"].get<double>() == 0.0))
    throw fail("\"model.dropout\" is set: BPE dropout is not supported");
  for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (m.contains(k) && !m[k].is_null() && !(m[k].is_string() && m[k].get<std::string>().empty()))
      throw fail(std::string("\"model.") + k + "\" is not supported (must be null)");
  if (m.contains("byte_fallback") && !m["byte_fallback"].is_null() && m["byte_fallback"] != false)
    throw fail("\"model.byte_fallback\": true is not supported for a byte-level BPE");
  auto get_bool = [&](const json& o, const char* k, bool dflt, const std::string& field) {
    if (!o.contains(k) || o[k].is_null()) return dflt;
    if (!o[k].is_boolean()) throw fail("\"" + field + "\" must be true or false");
    return o[k].get<bool>();
  };
  t->fuse_unk_ = get_bool(m, "fuse_unk", false, "model.fuse_unk");
  t->ignore_merges_ = get_bool(m, "ignore_merges", false, "model.ignore_merges");

  // Vocabulary.
  if (!m.contains("vocab") || !m["vocab"].is_object()) throw fail("\"model.vocab\" must be an object {token: id}");
  std::unordered_map<std::string, int> vocab;
  vocab.reserve(m["vocab"].size());
  int max_id = -1;
  for (const auto& [piece, v] : m["vocab"].items()) {
    if (!v.is_number_integer() || v.get<std::int64_t>() < 0 || v.get<std::int64_t>() >= kMaxId)
      throw fail("\"model.vocab\": the id of '" + piece + "' is not an integer in [0, " + std::to_string(kMaxId) + ")");
    const int id = v.get<int>();
    vocab.emplace(piece, id);
    max_id = std::max(max_id, id);
  }

  // Added tokens.
  std::vector<AddedToken> added;
  if (j.contains("added_tokens") && !j["added_tokens"].is_null()) {
    if (!j["added_tokens"].is_array()) throw fail("\"added_tokens\" must be a list");
    for (std::size_t i = 0; i < j["added_tokens"].size(); ++i) {
      const json& a = j["added_tokens"][i];
      const std::string field = "added_tokens[" + std::to_string(i) + "]";
      if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() || !a.contains("content") ||
          !a["content"].is_string())
        throw fail("\"" + field + "\" must be an object with an integer \"id\" and a string \"content\"");
      AddedToken at;
      const auto id = a["id"].get<std::int64_t>();
      if (id < 0 || id >= kMaxId) throw fail("\"" + field + ".id\" is out of range");
      at.id = static_cast<int>(id);
      at.content = a["content"].get<std::string>();
      if (at.content.empty()) throw fail("\"" + field + ".content\" is empty");
      at.special = get_bool(a, "special", false, field + ".special");
      at.lstrip = get_bool(a, "lstrip", false, field + ".lstrip");
      at.rstrip = get_bool(a, "rstrip", false, field + ".rstrip");
      at.single_word = get_bool(a, "single_word", false, field + ".single_word");
      at.normalized = get_bool(a, "normalized", !at.special, field + ".normalized");
      auto it = vocab.find(at.content);
      if (it != vocab.end() && it->second != at.id)
        throw fail("\"" + field + "\": '" + at.content + "' has id " + std::to_string(at.id) +
                   " but \"model.vocab\" gives it " + std::to_string(it->second));
      max_id = std::max(max_id, at.id);
      added.push_back(std::move(at));
    }
  }
  if (max_id < 0) throw fail("\"model.vocab\" is empty");
  // Ids are dense in real files; a few gaps are fine, a huge id is a broken file (and would
  // make us allocate for it).
  if (static_cast<std::size_t>(max_id) >= 2 * (vocab.size() + added.size()) + 1024)
    throw fail("token id " + std::to_string(max_id) + " is far beyond the " + std::to_string(vocab.size() + added.size()) +
               " tokens (\"model.vocab\" / \"added_tokens\" ids must be dense)");

  t->pieces_.assign(static_cast<std::size_t>(max_id) + 1, std::string());
  t->flags_.assign(t->pieces_.size(), kHole);
  for (const auto& [piece, id] : vocab) {
    auto& slot = t->pieces_[static_cast<std::size_t>(id)];
    if (t->flags_[static_cast<std::size_t>(id)] != kHole)
      throw fail("\"model.vocab\": '" + slot + "' and '" + piece + "' share id " + std::to_string(id));
    slot = piece;
    t->flags_[static_cast<std::size_t>(id)] = kInVocab;
  }
  for (const auto& a : added) {
    const auto id = static_cast<std::size_t>(a.id);
    if ((t->flags_[id] & kAdded) != 0) throw fail("\"added_tokens\": two tokens have id " + std::to_string(a.id));
    if ((t->flags_[id] & kInVocab) != 0 && t->pieces_[id] != a.content)
      throw fail("\"added_tokens\": id " + std::to_string(a.id) + " ('" + a.content + "') is already '" +
                 t->pieces_[id] + "' in \"model.vocab\"");
    t->pieces_[id] = a.content;
    t->flags_[id] = static_cast<std::uint8_t>((t->flags_[id] & kInVocab) | kAdded | (a.special ? kSpecial : 0));
  }
  std::sort(added.begin(), added.end(), [](const AddedToken& a, const AddedToken& b) { return a.id < b.id; });
  t->added_ = std::move(added);

  // Merges: "a b" strings (exactly one space, as HF reads them) or [a, b] pairs.
  if (!m.contains("merges") || !m["merges"].is_array()) throw fail("\"model.merges\" must be a list");
  const json& merges = m["merges"];
  t->merge_list_.reserve(merges.size());
  for (std::size_t r = 0; r < merges.size(); ++r) {
    const json& x = merges[r];
    const std::string field = "\"model.merges[" + std::to_string(r) + "]\"";
    std::string a, b;
    if (x.is_string()) {
      const std::string s = x.get<std::string>();
      const std::size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
        throw fail(field + " ('" + s + "') is not two tokens separated by one space");
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (x.is_array() && x.size() == 2 && x[0].is_string() && x[1].is_string()) {
      a = x[0].get<std::string>();
      b = x[1].get<std::string>();
    } else {
      throw fail(field + " must be \"a b\" or [\"a\", \"b\"]");
    }
    auto ia = vocab.find(a), ib = vocab.find(b), iab = vocab.find(a + b);
    for (const auto* miss : {ia == vocab.end() ? &a : nullptr, ib == vocab.end() ? &b : nullptr})
      if (miss) throw fail(field + " refers to '" + *miss + "', which is not in \"model.vocab\"");
    if (iab == vocab.end()) throw fail(field + ": the merged token '" + a + b + "' is not in \"model.vocab\"");
    t->merge_list_.emplace_back(ia->second, ib->second);
  }
  if (m.contains("unk_token") && m["unk_token"].is_string()) {
    t->unk_token_ = m["unk_token"].get<std::string>();
    auto it = vocab.find(t->unk_token_);
    t->unk_id_ = it == vocab.end() ? -1 : it->second;  // HF only fails when it is needed
  }

  // The text pipeline.
  t->normalizer_json_ = j.contains("normalizer") ? j["normalizer"] : json(nullptr);
  t->normalizer_ = bpe::Normalizer::from_json(t->normalizer_json_, where);
  t->pre_tokenizer_json_ = j.contains("pre_tokenizer") ? j["pre_tokenizer"] : json(nullptr);
  t->pre_ = bpe::PreTokenizer::from_json(t->pre_tokenizer_json_, where);
  t->decoder_json_ = j.contains("decoder") ? j["decoder"] : json(nullptr);
  if (!only_byte_level(t->decoder_json_))
    throw fail("\"decoder\" must be ByteLevel for a byte-level BPE (got " + t->decoder_json_.dump() + ")");
  t->post_processor_json_ = j.contains("post_processor") ? j["post_processor"] : json(nullptr);
  t->post_adds_bos_ = post_processor_adds_bos_of(t->post_processor_json_);
  t->finish();
  return t;
}

std::unique_ptr<ByteLevelBpe> ByteLevelBpe::from_vocab(const std::vector<VocabEntry>& vocab,
                                                       const std::vector<std::string>& merges,
                                                       const std::string& pre_tokenizer) {
  const auto preset = bpe::pre_tokenizer_preset(pre_tokenizer);
  const std::string where = "byte-level BPE vocabulary";
  if (vocab.empty()) throw Error(where + ": the vocabulary is empty");
  std::unique_ptr<ByteLevelBpe> t(new ByteLevelBpe());
  t->ignore_merges_ = preset.ignore_merges;
  t->pieces_.resize(vocab.size());
  t->flags_.assign(vocab.size(), kHole);
  std::unordered_map<std::string, int> ids;
  ids.reserve(vocab.size());
  for (std::size_t i = 0; i < vocab.size(); ++i) {
    const auto& e = vocab[i];
    const int id = static_cast<int>(i);
    t->pieces_[i] = e.piece;
    if (e.type == TokenType::Unused) continue;
    if (e.piece.empty()) throw Error(where + ": token " + std::to_string(i) + " is empty");
    if (e.type == TokenType::Control || e.type == TokenType::UserDefined) {
      AddedToken a;
      a.id = id;
      a.content = e.piece;
      a.special = e.type == TokenType::Control;
      t->added_.push_back(a);
      t->flags_[i] = static_cast<std::uint8_t>(kAdded | (a.special ? kSpecial : 0));
    } else {
      if (!ids.emplace(e.piece, id).second)
        throw Error(where + ": '" + e.piece + "' appears twice (ids " + std::to_string(ids[e.piece]) + " and " +
                    std::to_string(i) + ")");
      t->flags_[i] = kInVocab;
    }
  }
  std::unordered_map<std::string, int> added_ids;  // a text must name one id (HF maps content -> id)
  for (const auto& a : t->added_) {
    auto it = ids.find(a.content);
    if (it != ids.end())
      throw Error(where + ": '" + a.content + "' is both token " + std::to_string(it->second) + " and token " +
                  std::to_string(a.id));
    if (!added_ids.emplace(a.content, a.id).second)
      throw Error(where + ": '" + a.content + "' appears twice (ids " + std::to_string(added_ids[a.content]) + " and " +
                  std::to_string(a.id) + ")");
  }
  t->merge_list_.reserve(merges.size());
  for (std::size_t r = 0; r < merges.size(); ++r) {
    const std::string& s = merges[r];
    const std::size_t sp = s.find(' ', 1);  // from 1: a token may itself be a space
    const std::string field = "merge " + std::to_string(r) + " ('" + s + "')";
    if (sp == std::string::npos) throw Error(where + ": " + field + " is not two tokens separated by a space");
    const std::string a = s.substr(0, sp), b = s.substr(sp + 1);
    auto ia = ids.find(a), ib = ids.find(b);
    if (ia == ids.end() || ib == ids.end())
      throw Error(where + ": " + field + " refers to '" + (ia == ids.end() ? a : b) + "', which is not in the vocabulary");
    if (!ids.count(a + b)) throw Error(where + ": " + field + ": the merged token '" + a + b + "' is not in the vocabulary");
    t->merge_list_.emplace_back(ia->second, ib->second);
  }
  t->normalizer_json_ = json::parse(preset.normalizer_json);
  t->normalizer_ = bpe::Normalizer::from_json(t->normalizer_json_, where);
  t->pre_tokenizer_json_ = json::parse(preset.pre_tokenizer_json);
  t->pre_ = bpe::PreTokenizer::from_json(t->pre_tokenizer_json_, where);
  t->decoder_json_ = byte_level_decoder_json();
  t->finish();
  return t;
}

void ByteLevelBpe::finish() {
  const std::size_t n = pieces_.size();
  bytes_.assign(n, std::string());
  piece_ids_.clear();
  piece_ids_.reserve(n);
  std::size_t in_vocab = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if (flags_[i] & kHole) continue;
    bpe::chars_to_bytes(pieces_[i], bytes_[i]);
    if (flags_[i] & kInVocab) ++in_vocab;
  }
  auto& t = *t_;
  t.raw_vocab.reserve(in_vocab);
  for (std::size_t i = 0; i < n; ++i)
    if (flags_[i] & kInVocab) {
      std::string raw;
      // Tokens spelled outside the byte map can never be a pre-token's bytes.
      if (bpe::chars_to_bytes(pieces_[i], raw)) t.raw_vocab.insert(raw, static_cast<int>(i));
      piece_ids_.emplace(pieces_[i], static_cast<int>(i));
    }
  for (const auto& a : added_) piece_ids_[a.content] = a.id;  // HF looks added tokens up first
  for (int b = 0; b < 256; ++b) {
    const char c = static_cast<char>(b);
    t.byte_id[static_cast<std::size_t>(b)] = t.raw_vocab.find(std::string_view(&c, 1));
  }
  t.merges.reserve(merge_list_.size());
  for (std::size_t r = 0; r < merge_list_.size(); ++r) {
    const auto [a, b] = merge_list_[r];
    // The merged id: the token spelled as the two pieces joined.
    const int id = piece_ids_.at(pieces_[static_cast<std::size_t>(a)] + pieces_[static_cast<std::size_t>(b)]);
    t.merges.set(a, b, static_cast<int>(r), id);
  }
  raw_matcher_ = std::make_unique<Matcher>();
  norm_matcher_ = std::make_unique<Matcher>();
  for (std::size_t i = 0; i < added_.size(); ++i) {
    const auto& a = added_[i];
    if (a.normalized) {
      std::string text;
      normalizer_.apply(a.content, text);
      if (!text.empty()) norm_matcher_->entries.push_back({text, static_cast<int>(i)});
    } else {
      raw_matcher_->entries.push_back({a.content, static_cast<int>(i)});
    }
  }
  raw_matcher_->build();
  norm_matcher_->build();
}

// --- Encoding ----------------------------------------------------------------------------

void ByteLevelBpe::split_added(std::string_view s, const Matcher& m, bool parse_special,
                               std::vector<Segment>& out) const {
  out.clear();
  std::size_t start = 0, i = 0;
  const std::size_t n = s.size();
  while (!m.empty() && i < n) {
    const auto fb = static_cast<unsigned char>(s[i]);
    const Matcher::Entry* hit = nullptr;
    for (std::uint32_t k = m.first[fb]; k < m.first[fb + 1u]; ++k)
      if (s.compare(i, m.entries[k].text.size(), m.entries[k].text) == 0) {
        hit = &m.entries[k];
        break;
      }
    if (!hit) {
      ++i;
      continue;
    }
    const AddedToken& a = added_[static_cast<std::size_t>(hit->index)];
    std::size_t b = i, e = i + hit->text.size();
    i = e;  // like Aho-Corasick, the scan goes on after the match even when it is dropped
    if (!parse_special && a.special) continue;
    if (a.single_word && ((b > 0 && is_word(char_before(s, b).cp)) || (e < n && is_word(utf8_at(s, e).cp)))) continue;
    if (a.lstrip) {
      while (b > start) {
        const auto c = char_before(s, b);
        if (!is_space(c.cp)) break;
        b -= c.len;
      }
    }
    if (a.rstrip) {
      while (e < n) {
        const auto c = utf8_at(s, e);
        if (!is_space(c.cp)) break;
        e += c.len;
      }
      i = e;
    }
    if (start < b) out.push_back({static_cast<std::uint32_t>(start), static_cast<std::uint32_t>(b), -1});
    out.push_back({static_cast<std::uint32_t>(b), static_cast<std::uint32_t>(e), a.id});
    start = e;
  }
  if (start < n) out.push_back({static_cast<std::uint32_t>(start), static_cast<std::uint32_t>(n), -1});
}

void ByteLevelBpe::encode(std::string_view text, bool parse_special, std::vector<int>& out) const {
  thread_local std::vector<Segment> segs, sub;
  thread_local std::string norm;
  split_added(text, *raw_matcher_, parse_special, segs);
  for (const auto& s : segs) {
    if (s.id >= 0) {
      out.push_back(s.id);
      continue;
    }
    const std::string_view piece = text.substr(s.begin, s.end - s.begin);
    if (normalizer_.identity() && norm_matcher_->empty()) {
      encode_plain(piece, out);
      continue;
    }
    normalizer_.apply(piece, norm);
    split_added(norm, *norm_matcher_, parse_special, sub);
    for (const auto& u : sub) {
      if (u.id >= 0)
        out.push_back(u.id);
      else
        encode_plain(std::string_view(norm).substr(u.begin, u.end - u.begin), out);
    }
  }
}

void ByteLevelBpe::encode_plain(std::string_view text, std::vector<int>& out) const {
  thread_local std::string buf;
  thread_local std::vector<bpe::Range> pieces;
  pre_.split(text, buf, pieces);
  for (const auto& r : pieces) encode_word(std::string_view(buf).substr(r.begin, r.end - r.begin), out);
}

namespace {

struct Symbol {
  int id, prev, next;
  int rank, merged;  // of the pair this symbol starts (scan); `dead` marks merged-away ones
  bool dead;
};

// Words up to this many bytes merge by rescanning cached pair ranks (cheaper than a heap);
// longer ones use HF's priority queue. Both merge the lowest rank first, leftmost on ties.
constexpr std::size_t kScanMax = 48;

}  // namespace

void ByteLevelBpe::encode_word(std::string_view word, std::vector<int>& out) const {
  if (word.empty()) return;
  WordCache& cache = word_cache(uid_);
  const std::uint64_t h = hash_bytes(word.data(), word.size());
  std::uint32_t cached = 0;
  if (const int* ids = cache.find(word, h, cached)) {
    out.insert(out.end(), ids, ids + cached);
    return;
  }
  const std::size_t start = out.size();
  const Tables& t = *t_;
  if (ignore_merges_) {
    const int id = t.raw_vocab.find(word);
    if (id >= 0) {
      out.push_back(id);
      cache.insert(word, h, &out[start], 1);
      return;
    }
  }
  // One symbol per byte; bytes without a token become the unknown token (fused when
  // fuse_unk) or are dropped, as HF does.
  thread_local std::vector<Symbol> sy;
  sy.clear();
  bool unk_pending = false;
  auto push = [&](int id) { sy.push_back({id, static_cast<int>(sy.size()) - 1, static_cast<int>(sy.size()) + 1, INT_MAX, -1, false}); };
  for (unsigned char b : word) {
    const int id = t.byte_id[b];
    if (id >= 0) {
      if (unk_pending) push(unk_id_);
      unk_pending = false;
      push(id);
    } else if (unk_id_ >= 0) {
      if (unk_pending && !fuse_unk_) push(unk_id_);
      unk_pending = true;
    }
  }
  if (unk_pending) push(unk_id_);
  if (sy.empty()) return;
  sy.back().next = -1;

  if (sy.size() <= kScanMax) {
    auto rank_pair = [&](int i) {
      Symbol& s = sy[static_cast<std::size_t>(i)];
      if (s.next < 0 || !t.merges.find(s.id, sy[static_cast<std::size_t>(s.next)].id, s.rank, s.merged)) s.rank = INT_MAX;
    };
    for (int i = 0; i >= 0; i = sy[static_cast<std::size_t>(i)].next) rank_pair(i);
    for (;;) {
      int best = INT_MAX, bi = -1;
      for (int i = 0; i >= 0; i = sy[static_cast<std::size_t>(i)].next)
        if (sy[static_cast<std::size_t>(i)].rank < best) best = sy[static_cast<std::size_t>(i)].rank, bi = i;
      if (bi < 0) break;
      Symbol& s = sy[static_cast<std::size_t>(bi)];
      const Symbol& r = sy[static_cast<std::size_t>(s.next)];
      s.id = s.merged;
      s.next = r.next;
      if (s.next >= 0) sy[static_cast<std::size_t>(s.next)].prev = bi;
      rank_pair(bi);
      if (s.prev >= 0) rank_pair(s.prev);
    }
  } else {
    struct Cand {
      int rank, pos, id;
      bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    thread_local std::vector<Cand> heap;
    heap.clear();
    auto consider = [&](int pos) {
      const Symbol& s = sy[static_cast<std::size_t>(pos)];
      int rank, id;
      if (s.next >= 0 && t.merges.find(s.id, sy[static_cast<std::size_t>(s.next)].id, rank, id)) {
        heap.push_back({rank, pos, id});
        std::push_heap(heap.begin(), heap.end(), std::greater<Cand>());
      }
    };
    for (int i = 0; i >= 0; i = sy[static_cast<std::size_t>(i)].next) consider(i);
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end(), std::greater<Cand>());
      const Cand c = heap.back();
      heap.pop_back();
      Symbol& s = sy[static_cast<std::size_t>(c.pos)];
      if (s.dead || s.next < 0) continue;
      int rank, id;
      // A stale entry: the pair at this position changed since it was queued.
      if (!t.merges.find(s.id, sy[static_cast<std::size_t>(s.next)].id, rank, id) || id != c.id) continue;
      Symbol& r = sy[static_cast<std::size_t>(s.next)];
      r.dead = true;
      s.id = id;
      s.next = r.next;
      if (s.next >= 0) sy[static_cast<std::size_t>(s.next)].prev = c.pos;
      if (s.prev >= 0) consider(s.prev);
      consider(c.pos);
    }
  }
  for (int i = 0; i >= 0; i = sy[static_cast<std::size_t>(i)].next) out.push_back(sy[static_cast<std::size_t>(i)].id);
  cache.insert(word, h, &out[start], static_cast<std::uint32_t>(out.size() - start));
}

// --- Decoding and queries ----------------------------------------------------------------

std::string ByteLevelBpe::decode(const std::vector<int>& ids, bool skip_special) const {
  std::string out;
  const int n = vocab_size();
  for (int id : ids) {
    if (id < 0 || id >= n)
      throw Error("token id " + std::to_string(id) + " is outside the vocabulary (size " + std::to_string(n) + ")");
    if (skip_special && is_special(id)) continue;
    out += bytes_[static_cast<std::size_t>(id)];
  }
  return out;
}

int ByteLevelBpe::piece_to_id(const std::string& piece) const {
  auto it = piece_ids_.find(piece);
  return it == piece_ids_.end() ? -1 : it->second;
}

std::vector<VocabEntry> ByteLevelBpe::vocabulary() const {
  std::vector<VocabEntry> v(pieces_.size());
  for (std::size_t i = 0; i < pieces_.size(); ++i) {
    auto& e = v[i];
    const auto f = flags_[i];
    if (f & kHole) {
      // llama.cpp's name for an id no token has.
      e.piece = pieces_[i].empty() ? "[PAD" + std::to_string(i) + "]" : pieces_[i];
      e.type = TokenType::Unused;
    } else {
      e.piece = pieces_[i];
      e.type = (f & kSpecial) ? TokenType::Control : (f & kAdded) ? TokenType::UserDefined : TokenType::Normal;
    }
  }
  return v;
}

std::vector<std::string> ByteLevelBpe::merges() const {
  std::vector<std::string> out;
  out.reserve(merge_list_.size());
  for (const auto& [a, b] : merge_list_)
    out.push_back(pieces_[static_cast<std::size_t>(a)] + " " + pieces_[static_cast<std::size_t>(b)]);
  return out;
}

std::string ByteLevelBpe::pre_tokenizer_name() const { return bpe::pre_tokenizer_preset_name(pre_tokenizer_json_); }

// --- Saving ------------------------------------------------------------------------------

std::string ByteLevelBpe::to_json(bool add_bos, int bos_id) const {
  using ojson = nlohmann::ordered_json;
  auto ordered = [](const json& j) { return ojson::parse(j.dump()); };
  ojson out;
  out["version"] = "1.0";
  out["truncation"] = nullptr;
  out["padding"] = nullptr;
  ojson added = ojson::array();
  for (const auto& a : added_)
    added.push_back({{"id", a.id}, {"content", a.content}, {"single_word", a.single_word}, {"lstrip", a.lstrip},
                     {"rstrip", a.rstrip}, {"normalized", a.normalized}, {"special", a.special}});
  out["added_tokens"] = added;
  out["normalizer"] = ordered(normalizer_json_);
  out["pre_tokenizer"] = ordered(pre_tokenizer_json_);
  if (add_bos == post_adds_bos_ && !post_processor_json_.is_null()) {
    out["post_processor"] = ordered(post_processor_json_);
  } else if (add_bos && bos_id >= 0 && bos_id < vocab_size()) {
    const std::string& bos = pieces_[static_cast<std::size_t>(bos_id)];
    auto special = [&](int type_id) { return ojson{{"SpecialToken", {{"id", bos}, {"type_id", type_id}}}}; };
    auto seq = [](const char* id, int type_id) { return ojson{{"Sequence", {{"id", id}, {"type_id", type_id}}}}; };
    out["post_processor"] = {{"type", "TemplateProcessing"},
                             {"single", {special(0), seq("A", 0)}},
                             {"pair", {special(0), seq("A", 0), special(1), seq("B", 1)}},
                             {"special_tokens", {{bos, {{"id", bos}, {"ids", {bos_id}}, {"tokens", {bos}}}}}}};
  } else {
    out["post_processor"] = nullptr;
  }
  out["decoder"] = ordered(decoder_json_.is_null() ? byte_level_decoder_json() : decoder_json_);

  // HF gives an added token that is not in the model's vocab the next free id (past the
  // vocab and the added tokens so far). When that reproduces our ids, added tokens stay
  // out of the vocab (as in Qwen2's or Llama 3's file); otherwise all go in, which pins
  // their ids.
  std::vector<bool> in_vocab(pieces_.size());
  std::size_t vocab_count = 0, max_vocab_id = 0;
  for (std::size_t i = 0; i < pieces_.size(); ++i)
    if (flags_[i] & kInVocab) in_vocab[i] = true, ++vocab_count, max_vocab_id = i;
  bool sequential = vocab_count == max_vocab_id + 1;
  std::size_t next = vocab_count;
  for (const auto& a : added_) {
    if (in_vocab[static_cast<std::size_t>(a.id)]) continue;
    sequential = sequential && static_cast<std::size_t>(a.id) == next++;
  }
  if (!sequential)
    for (const auto& a : added_) in_vocab[static_cast<std::size_t>(a.id)] = true;

  ojson model;
  model["type"] = "BPE";
  model["dropout"] = nullptr;
  model["unk_token"] = unk_token_.empty() ? ojson(nullptr) : ojson(unk_token_);
  model["continuing_subword_prefix"] = nullptr;
  model["end_of_word_suffix"] = nullptr;
  model["fuse_unk"] = fuse_unk_;
  model["byte_fallback"] = false;
  model["ignore_merges"] = ignore_merges_;
  ojson vocab = ojson::object();
  for (std::size_t i = 0; i < pieces_.size(); ++i)
    if (in_vocab[i]) vocab[pieces_[i]] = i;
  model["vocab"] = std::move(vocab);
  // "a b" strings read in every tokenizers version; pairs only when a token has a space.
  bool spaces = false;
  for (const auto& [a, b] : merge_list_)
    spaces = spaces || pieces_[static_cast<std::size_t>(a)].find(' ') != std::string::npos ||
             pieces_[static_cast<std::size_t>(b)].find(' ') != std::string::npos;
  ojson merges = ojson::array();
  for (const auto& [a, b] : merge_list_) {
    const auto& pa = pieces_[static_cast<std::size_t>(a)];
    const auto& pb = pieces_[static_cast<std::size_t>(b)];
    if (spaces)
      merges.push_back({pa, pb});
    else
      merges.push_back(pa + " " + pb);
  }
  model["merges"] = std::move(merges);
  out["model"] = std::move(model);
  return out.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
}

}  // namespace llmctl
