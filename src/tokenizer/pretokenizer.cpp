#include "llmctl/tokenizer/pretokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <array>
#include <cctype>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "llmctl/util/error.h"

namespace llmctl::bpe {

using nlohmann::json;

// --- UTF-8 -------------------------------------------------------------------------------

Utf8Char utf8_at(std::string_view s, std::size_t i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) return {b0, 1};
  std::uint32_t len, cp, min;
  if (b0 >= 0xC2 && b0 < 0xE0) {
    len = 2, cp = b0 & 0x1F, min = 0x80;
  } else if (b0 >= 0xE0 && b0 < 0xF0) {
    len = 3, cp = b0 & 0x0F, min = 0x800;
  } else if (b0 >= 0xF0 && b0 < 0xF5) {
    len = 4, cp = b0 & 0x07, min = 0x10000;
  } else {
    return {-1, 1};
  }
  if (i + len > s.size()) return {-1, 1};
  for (std::uint32_t k = 1; k < len; ++k) {
    const auto b = static_cast<unsigned char>(s[i + k]);
    if ((b & 0xC0) != 0x80) return {-1, 1};
    cp = (cp << 6) | (b & 0x3F);
  }
  // Overlong forms, surrogates and code points past U+10FFFF are not UTF-8.
  if (cp < min || (cp >= 0xD800 && cp < 0xE000) || cp > 0x10FFFF) return {-1, 1};
  return {static_cast<std::int32_t>(cp), len};
}

void append_utf8(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// --- GPT-2's byte-level map ---------------------------------------------------------------

namespace {

struct ByteMap {
  std::array<std::string, 256> chars;   // byte -> UTF-8 of its code point
  std::array<std::int16_t, 324> bytes;  // code point -> byte, -1 when unmapped
  ByteMap() {
    bytes.fill(-1);
    // Printable Latin-1 bytes stand for themselves; the others take U+0100 + n in order.
    auto printable = [](int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE); };
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      const int cp = printable(b) ? b : next++;
      append_utf8(chars[b], static_cast<std::uint32_t>(cp));
      bytes[cp] = static_cast<std::int16_t>(b);
    }
  }
};

const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

}  // namespace

const std::string& byte_to_chars(unsigned char b) { return byte_map().chars[b]; }

std::string bytes_to_chars(std::string_view bytes) {
  const auto& m = byte_map();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) out += m.chars[b];
  return out;
}

bool chars_to_bytes(std::string_view token, std::string& out) {
  const auto& m = byte_map();
  const std::size_t start = out.size();
  for (std::size_t i = 0; i < token.size();) {
    const auto c = utf8_at(token, i);
    if (c.cp < 0 || c.cp >= static_cast<std::int32_t>(m.bytes.size()) || m.bytes[c.cp] < 0) {
      out.resize(start);
      out.append(token);
      return false;
    }
    out += static_cast<char>(m.bytes[c.cp]);
    i += c.len;
  }
  return true;
}

// --- Normalizer ----------------------------------------------------------------------------

namespace {

constexpr int kNFC = UTF8PROC_STABLE | UTF8PROC_COMPOSE;
constexpr int kNFD = UTF8PROC_STABLE | UTF8PROC_DECOMPOSE;
constexpr int kNFKC = kNFC | UTF8PROC_COMPAT;
constexpr int kNFKD = kNFD | UTF8PROC_COMPAT;

// True when `cp` is left unchanged by the normal form, whatever surrounds it: such text can
// skip utf8proc (most of a Chinese / English corpus). Composition partners (combining marks,
// kana voicing marks, Hangul jamo) are outside these ranges, so they take the slow path.
bool stable_under(int form, std::int32_t cp) {
  if (form == kNFC)
    return cp < 0x300 || (cp >= 0x3000 && cp < 0x3099) || (cp >= 0x309B && cp < 0x3100) ||
           (cp >= 0x3400 && cp < 0x4DC0) || (cp >= 0x4E00 && cp < 0xA000) || (cp >= 0xAC00 && cp < 0xD7A4);
  if (form == kNFD) return cp < 0xC0;
  return cp < 0xA0;  // NFKC, NFKD: ASCII and C1 controls only (U+00A0 becomes a space)
}

void apply_form(int form, const std::string& in, std::string& out) {
  out.clear();
  bool stable = true;
  for (std::size_t i = 0; i < in.size() && stable;) {
    const auto c = utf8_at(in, i);
    stable = c.cp < 0 || stable_under(form, c.cp);  // invalid bytes are kept anyway
    i += c.len;
  }
  if (stable) {
    out = in;
    return;
  }
  // utf8proc rejects invalid UTF-8 as a whole: normalize the valid runs between bad bytes.
  auto flush = [&](std::size_t b, std::size_t e) {
    if (b == e) return;
    utf8proc_uint8_t* dst = nullptr;
    const auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(in.data() + b),
                                static_cast<utf8proc_ssize_t>(e - b), &dst, static_cast<utf8proc_option_t>(form));
    if (n < 0) throw Error(std::string("unicode normalization failed: ") + utf8proc_errmsg(n));
    out.append(reinterpret_cast<const char*>(dst), static_cast<std::size_t>(n));
    std::free(dst);
  };
  std::size_t run = 0;
  for (std::size_t i = 0; i < in.size();) {
    const auto c = utf8_at(in, i);
    if (c.cp < 0) {
      flush(run, i);
      out += in[i];
      run = i + 1;
    }
    i += c.len;
  }
  flush(run, in.size());
}

void collect_forms(const json& j, const std::string& where, std::vector<int>& forms) {
  if (j.is_null()) return;
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    throw Error(where + ": \"normalizer\" must be null or an object with a \"type\"");
  const std::string type = j["type"];
  if (type == "NFC") {
    forms.push_back(kNFC);
  } else if (type == "NFD") {
    forms.push_back(kNFD);
  } else if (type == "NFKC") {
    forms.push_back(kNFKC);
  } else if (type == "NFKD") {
    forms.push_back(kNFKD);
  } else if (type == "Sequence") {
    if (!j.contains("normalizers") || !j["normalizers"].is_array())
      throw Error(where + ": \"normalizer\" Sequence has no \"normalizers\" list");
    for (const auto& n : j["normalizers"]) collect_forms(n, where, forms);
  } else {
    throw Error(where + ": unsupported \"normalizer\" type '" + type +
                "' (supported: NFC, NFD, NFKC, NFKD, Sequence of these)");
  }
}

}  // namespace

Normalizer Normalizer::from_json(const json& j, const std::string& where) {
  Normalizer n;
  collect_forms(j, where, n.forms_);
  return n;
}

void Normalizer::apply(std::string_view in, std::string& out) const {
  out.assign(in);
  std::string tmp;
  for (int form : forms_) {
    apply_form(form, out, tmp);
    out.swap(tmp);
  }
}

// --- Regex (PCRE2) -----------------------------------------------------------------------

namespace {

// Oniguruma's \s (what HF tokenizers uses) is Unicode White_Space; PCRE2's also takes
// U+180E. Spelled out, the two engines split whitespace identically.
constexpr const char* kWhiteSpace =
    "\\t\\n\\x0B\\f\\r\\x20\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}";

std::string onig_compatible(const std::string& p) {
  std::string out;
  bool in_class = false;
  for (std::size_t i = 0; i < p.size();) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char d = p[i + 1];
      if (d == 's') {
        out += in_class ? kWhiteSpace : std::string("[") + kWhiteSpace + "]";
      } else if (d == 'S' && !in_class) {
        out += std::string("[^") + kWhiteSpace + "]";
      } else if (d == 'Q') {  // a quoted literal runs to \E untouched
        const std::size_t e = p.find("\\E", i + 2);
        const std::size_t stop = e == std::string::npos ? p.size() : e + 2;
        out.append(p, i, stop - i);
        i = stop;
        continue;
      } else {
        out += c;
        out += d;
      }
      i += 2;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      ++i;
      if (i < p.size() && p[i] == '^') out += p[i++];
      if (i < p.size() && p[i] == ']') out += p[i++];  // a leading ']' is literal
      continue;
    }
    if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {  // [:alpha:]
      const std::size_t e = p.find(":]", i + 2);
      if (e != std::string::npos) {
        out.append(p, i, e + 2 - i);
        i = e + 2;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out += c;
    ++i;
  }
  return out;
}

// Per-thread PCRE2 match state: one ovector pair is all the splitting needs.
struct MatchState {
  pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
  pcre2_match_context* context = pcre2_match_context_create(nullptr);
  pcre2_jit_stack* stack = pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, nullptr);
  MatchState() {
    if (!data || !context || !stack) throw Error("out of memory for the tokenizer's regex");
    pcre2_jit_stack_assign(context, nullptr, stack);
  }
  ~MatchState() {
    pcre2_jit_stack_free(stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
};

MatchState& match_state() {
  thread_local MatchState s;
  return s;
}

}  // namespace

struct Match {
  std::uint32_t begin, end;
  bool is_match;
};

class Regex {
 public:
  Regex(const std::string& pattern, const std::string& where) {
    int err = 0;
    PCRE2_SIZE at = 0;
    const std::string p = onig_compatible(pattern);
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(p.data()), p.size(),
                          PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &at, nullptr);
    if (!code_) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      throw Error(where + ": cannot compile regex '" + pattern + "': " + reinterpret_cast<const char*>(msg));
    }
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // the interpreter is the fallback
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // The matches and the gaps between them, covering `s` (HF's find_matches over
  // Oniguruma: an empty match right where the previous match ended is skipped).
  void find_matches(std::string_view s, std::vector<Match>& out) const {
    auto& st = match_state();
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.data);
    std::size_t prev = 0, pos = 0, last_end = std::string_view::npos;
    while (pos <= s.size()) {
      const int rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), pos, 0, st.data, st.context);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof msg);
        throw Error(std::string("tokenizer regex failed: ") + reinterpret_cast<const char*>(msg));
      }
      const std::size_t b = std::min<std::size_t>(ov[0], ov[1]), e = ov[1];
      if (b == e && e == last_end) {
        if (pos >= s.size()) break;
        pos += utf8_at(s, pos).len;
        continue;
      }
      if (prev < b) out.push_back({static_cast<std::uint32_t>(prev), static_cast<std::uint32_t>(b), false});
      out.push_back({static_cast<std::uint32_t>(b), static_cast<std::uint32_t>(e), true});
      prev = last_end = pos = e;
    }
    if (prev < s.size()) out.push_back({static_cast<std::uint32_t>(prev), static_cast<std::uint32_t>(s.size()), false});
  }

 private:
  pcre2_code* code_ = nullptr;
};

// --- Pre-tokenizer -------------------------------------------------------------------------

namespace {

enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

constexpr const char* kGpt2Regex = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr const char* kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

bool is_numeric(std::int32_t cp) {
  if (cp < 0) return false;
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  const auto cat = utf8proc_category(cp);
  return cat == UTF8PROC_CATEGORY_ND || cat == UTF8PROC_CATEGORY_NL || cat == UTF8PROC_CATEGORY_NO;
}

std::string escape_literal(const std::string& s) {
  std::string out;
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x80 && !std::isalnum(u)) out += '\\';
    out += c;
  }
  return out;
}

bool get_bool(const json& j, const char* key, bool dflt, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) return dflt;
  if (!j[key].is_boolean()) throw Error(where + ": \"" + key + "\" must be true or false");
  return j[key].get<bool>();
}

}  // namespace

struct PreTokenizer::Step {
  enum class Kind { Split, Digits, ByteLevel } kind = Kind::Split;
  std::shared_ptr<const Regex> regex;  // Split; ByteLevel with use_regex
  Behavior behavior = Behavior::Isolated;
  bool invert = false;
  bool add_prefix_space = false;  // ByteLevel

  void find_matches(std::string_view s, std::vector<Match>& out) const {
    if (kind != Kind::Digits) return regex->find_matches(s, out);
    // Each numeric character is a match of its own (Contiguous merges neighbours later).
    std::size_t prev = 0;
    for (std::size_t i = 0; i < s.size();) {
      const auto c = utf8_at(s, i);
      if (is_numeric(c.cp)) {
        if (prev < i) out.push_back({static_cast<std::uint32_t>(prev), static_cast<std::uint32_t>(i), false});
        out.push_back({static_cast<std::uint32_t>(i), static_cast<std::uint32_t>(i + c.len), true});
        prev = i + c.len;
      }
      i += c.len;
    }
    if (prev < s.size()) out.push_back({static_cast<std::uint32_t>(prev), static_cast<std::uint32_t>(s.size()), false});
  }

  // HF's SplitDelimiterBehavior applied to `m` (offsets relative to `base`); keeps the
  // non-empty pieces.
  void split(std::string_view s, std::uint32_t base, std::vector<Match>& m, std::vector<Range>& out) const {
    m.clear();
    find_matches(s, m);
    if (invert)
      for (auto& x : m) x.is_match = !x.is_match;
    auto push = [&](std::uint32_t b, std::uint32_t e) {
      if (b < e) out.push_back({base + b, base + e});
    };
    switch (behavior) {
      case Behavior::Isolated:
        for (const auto& x : m) push(x.begin, x.end);
        break;
      case Behavior::Removed:
        for (const auto& x : m)
          if (!x.is_match) push(x.begin, x.end);
        break;
      case Behavior::Contiguous:
      case Behavior::MergedWithPrevious: {
        // Folded in place: a piece joins the previous one (Contiguous: runs of matches;
        // MergedWithPrevious: a match joins whatever precedes it).
        std::size_t n = 0;
        bool prev_match = false;
        for (std::size_t i = 0; i < m.size(); ++i) {
          const bool join = behavior == Behavior::Contiguous ? m[i].is_match == prev_match
                                                               : m[i].is_match && !prev_match;
          if (join && n > 0) {
            m[n - 1].end = m[i].end;
          } else {
            m[n++] = m[i];
          }
          prev_match = m[i].is_match;
        }
        for (std::size_t i = 0; i < n; ++i) push(m[i].begin, m[i].end);
        break;
      }
      case Behavior::MergedWithNext: {
        // The mirror image: walk backwards, a match joins the piece that follows it.
        std::size_t n = m.size();
        std::size_t w = m.size();
        bool prev_match = false;
        for (std::size_t i = n; i-- > 0;) {
          if (m[i].is_match && !prev_match && w < n) {
            m[w].begin = m[i].begin;
          } else {
            m[--w] = m[i];
          }
          prev_match = m[i].is_match;
        }
        for (std::size_t i = w; i < n; ++i) push(m[i].begin, m[i].end);
        break;
      }
    }
  }
};

PreTokenizer::PreTokenizer() = default;
PreTokenizer::PreTokenizer(PreTokenizer&&) noexcept = default;
PreTokenizer& PreTokenizer::operator=(PreTokenizer&&) noexcept = default;
PreTokenizer::~PreTokenizer() = default;

PreTokenizer PreTokenizer::from_json(const json& j, const std::string& where) {
  PreTokenizer p;
  std::vector<Step> steps;
  if (j.is_null())
    throw Error(where + ": \"pre_tokenizer\" is null; a byte-level BPE needs a ByteLevel pre-tokenizer");
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    throw Error(where + ": \"pre_tokenizer\" must be an object with a \"type\"");
  auto add = [&](auto&& self, const json& s) -> void {
    if (!s.is_object() || !s.contains("type") || !s["type"].is_string())
      throw Error(where + ": every \"pre_tokenizer\" step must be an object with a \"type\"");
    const std::string type = s["type"];
    Step st;
    if (type == "Sequence") {
      if (!s.contains("pretokenizers") || !s["pretokenizers"].is_array())
        throw Error(where + ": \"pre_tokenizer\" Sequence has no \"pretokenizers\" list");
      for (const auto& x : s["pretokenizers"]) self(self, x);
      return;
    } else if (type == "ByteLevel") {
      st.kind = Step::Kind::ByteLevel;
      st.add_prefix_space = get_bool(s, "add_prefix_space", true, where + ": pre_tokenizer ByteLevel");
      if (get_bool(s, "use_regex", true, where + ": pre_tokenizer ByteLevel"))
        st.regex = std::make_shared<const Regex>(kGpt2Regex, where);
    } else if (type == "Split") {
      st.kind = Step::Kind::Split;
      const std::string w = where + ": pre_tokenizer Split";
      if (!s.contains("pattern") || !s["pattern"].is_object())
        throw Error(w + ": \"pattern\" must be {\"Regex\": ...} or {\"String\": ...}");
      const auto& pat = s["pattern"];
      if (pat.contains("Regex") && pat["Regex"].is_string()) {
        st.regex = std::make_shared<const Regex>(pat["Regex"].get<std::string>(), w);
      } else if (pat.contains("String") && pat["String"].is_string()) {
        st.regex = std::make_shared<const Regex>(escape_literal(pat["String"].get<std::string>()), w);
      } else {
        throw Error(w + ": \"pattern\" must be {\"Regex\": ...} or {\"String\": ...}");
      }
      const std::string b = s.contains("behavior") && s["behavior"].is_string() ? s["behavior"].get<std::string>() : "";
      if (b == "Isolated") st.behavior = Behavior::Isolated;
      else if (b == "Removed") st.behavior = Behavior::Removed;
      else if (b == "MergedWithPrevious") st.behavior = Behavior::MergedWithPrevious;
      else if (b == "MergedWithNext") st.behavior = Behavior::MergedWithNext;
      else if (b == "Contiguous") st.behavior = Behavior::Contiguous;
      else
        throw Error(w + ": \"behavior\" must be Isolated, Removed, MergedWithPrevious, MergedWithNext or Contiguous, not '" +
                    b + "'");
      st.invert = get_bool(s, "invert", false, w);
    } else if (type == "Digits") {
      st.kind = Step::Kind::Digits;
      st.behavior = get_bool(s, "individual_digits", false, where + ": pre_tokenizer Digits") ? Behavior::Isolated
                                                                                             : Behavior::Contiguous;
    } else {
      throw Error(where + ": unsupported \"pre_tokenizer\" type '" + type +
                  "' (supported: ByteLevel, Split, Digits, Sequence of these)");
    }
    steps.push_back(std::move(st));
  };
  add(add, j);
  for (std::size_t i = 0; i < steps.size(); ++i) {
    const bool byte_level = steps[i].kind == Step::Kind::ByteLevel;
    if (byte_level != (i + 1 == steps.size()))
      throw Error(where + ": \"pre_tokenizer\" must end in ByteLevel (and have it only there) for a byte-level BPE");
  }
  p.steps_ = std::move(steps);
  return p;
}

void PreTokenizer::split(std::string_view text, std::string& buf, std::vector<Range>& out) const {
  thread_local std::vector<Range> next;
  thread_local std::vector<Match> matches;
  thread_local std::string spaced;
  buf.assign(text);
  out.clear();
  if (!text.empty()) out.push_back({0, static_cast<std::uint32_t>(text.size())});
  for (const auto& st : steps_) {
    if (st.kind == Step::Kind::ByteLevel && st.add_prefix_space) {
      // Each piece that does not start with a space gets one (HF adds it per split).
      spaced.clear();
      for (auto& r : out) {
        const std::uint32_t b = static_cast<std::uint32_t>(spaced.size());
        if (buf[r.begin] != ' ') spaced += ' ';
        spaced.append(buf, r.begin, r.end - r.begin);
        r = {b, static_cast<std::uint32_t>(spaced.size())};
      }
      buf.swap(spaced);
    }
    if (!st.regex && st.kind != Step::Kind::Digits) continue;
    next.clear();
    for (const auto& r : out)
      st.split(std::string_view(buf).substr(r.begin, r.end - r.begin), r.begin, matches, next);
    out.swap(next);
  }
}

// --- llama.cpp pre-tokenizer names ------------------------------------------------------

namespace {

// Field readers that never throw on a wrong type (the caller only compares).
std::string str_or(const json& j, const char* key) {
  return j.is_object() && j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : "";
}
bool bool_or(const json& j, const char* key, bool dflt) {
  return j.is_object() && j.contains(key) && j[key].is_boolean() ? j[key].get<bool>() : dflt;
}

json byte_level_json(bool use_regex) {
  return {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", use_regex}};
}

json split_then_byte_level(const char* regex) {
  return {{"type", "Sequence"},
          {"pretokenizers",
           {{{"type", "Split"}, {"pattern", {{"Regex", regex}}}, {"behavior", "Isolated"}, {"invert", false}},
            byte_level_json(false)}}};
}

// The steps of a pre_tokenizer with Sequence nesting removed.
void flatten(const json& j, std::vector<json>& out) {
  if (str_or(j, "type") == "Sequence" && j.contains("pretokenizers") && j["pretokenizers"].is_array()) {
    for (const auto& s : j["pretokenizers"]) flatten(s, out);
  } else {
    out.push_back(j);
  }
}

bool is_byte_level_step(const json& s, bool use_regex) {
  return str_or(s, "type") == "ByteLevel" && !bool_or(s, "add_prefix_space", true) &&
         bool_or(s, "use_regex", true) == use_regex;
}

bool is_split_step(const json& s, const char* regex) {
  return str_or(s, "type") == "Split" && str_or(s, "behavior") == "Isolated" && !bool_or(s, "invert", false) &&
         s.contains("pattern") && str_or(s["pattern"], "Regex") == regex;
}

}  // namespace

PreTokenizerPreset pre_tokenizer_preset(const std::string& name) {
  PreTokenizerPreset p;
  json pre, norm;  // norm stays null unless the family normalizes
  if (name == "gpt2" || name == "default") {
    pre = byte_level_json(true);
  } else if (name == "llama-bpe") {
    pre = split_then_byte_level(kLlama3Regex);
    p.ignore_merges = true;  // Llama 3's tokenizer.json sets it
  } else if (name == "qwen2") {
    pre = split_then_byte_level(kQwen2Regex);
    norm = {{"type", "NFC"}};
  } else if (name == "smollm") {
    pre = {{"type", "Sequence"}, {"pretokenizers", {{{"type", "Digits"}, {"individual_digits", true}}, byte_level_json(true)}}};
  } else {
    throw Error("unknown byte-level BPE pre-tokenizer '" + name + "' (known: gpt2, default, llama-bpe, qwen2, smollm)");
  }
  p.pre_tokenizer_json = pre.dump();
  p.normalizer_json = norm.dump();
  return p;
}

std::string pre_tokenizer_preset_name(const json& pre_tokenizer) {
  std::vector<json> s;
  flatten(pre_tokenizer, s);
  if (s.size() == 1 && is_byte_level_step(s[0], true)) return "gpt2";
  if (s.size() == 2 && is_byte_level_step(s[1], false)) {
    if (is_split_step(s[0], kQwen2Regex)) return "qwen2";
    if (is_split_step(s[0], kLlama3Regex)) return "llama-bpe";
  }
  if (s.size() == 2 && is_byte_level_step(s[1], true) && str_or(s[0], "type") == "Digits" &&
      bool_or(s[0], "individual_digits", false))
    return "smollm";
  return "";
}

}  // namespace llmctl::bpe
