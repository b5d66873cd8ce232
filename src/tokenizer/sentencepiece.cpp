// The sentencepiece backend (tokenizer.model), and sentencepiece models built from a
// vocabulary (GGUF's `llama` vocab). Debian ships no sentencepiece_model.pb.h, so the
// ModelProto is read and written here in protobuf's wire format (field numbers from
// sentencepiece_model.proto).
#include <sentencepiece_processor.h>

#include <algorithm>
#include <cstring>

#include "backend.h"
#include "llmctl/util/error.h"

namespace llmctl::detail {

namespace {

// --- protobuf wire format ------------------------------------------------------------------

enum Wire { kVarint = 0, kFixed64 = 1, kLen = 2, kFixed32 = 5 };

void put_varint(std::string& out, std::uint64_t v) {
  while (v >= 0x80) {
    out += static_cast<char>((v & 0x7F) | 0x80);
    v >>= 7;
  }
  out += static_cast<char>(v);
}
void put_tag(std::string& out, int field, Wire w) { put_varint(out, (static_cast<std::uint64_t>(field) << 3) | w); }
void put_int(std::string& out, int field, std::int64_t v) {  // int32 / enum / bool
  put_tag(out, field, kVarint);
  put_varint(out, static_cast<std::uint64_t>(v));  // negative: ten bytes, as protobuf does
}
void put_bytes(std::string& out, int field, std::string_view s) {
  put_tag(out, field, kLen);
  put_varint(out, s.size());
  out.append(s);
}
void put_float(std::string& out, int field, float f) {
  put_tag(out, field, kFixed32);
  char b[4];
  std::memcpy(b, &f, 4);  // little-endian, as on every machine llmctl runs on
  out.append(b, 4);
}

// Reads one message's fields; malformed input ends the walk with ok=false.
class ProtoReader {
 public:
  explicit ProtoReader(std::string_view s) : p_(s.data()), end_(s.data() + s.size()) {}
  bool ok = true;
  // Next field; false at the end (or on a malformed field).
  bool next(int& field, Wire& wire) {
    if (p_ >= end_ || !ok) return false;
    const std::uint64_t tag = varint();
    field = static_cast<int>(tag >> 3);
    wire = static_cast<Wire>(tag & 7);
    return ok;
  }
  std::uint64_t varint() {
    std::uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p_ >= end_) break;
      const auto b = static_cast<unsigned char>(*p_++);
      v |= static_cast<std::uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    ok = false;
    return 0;
  }
  std::string_view bytes() {
    const std::uint64_t n = varint();
    if (!ok || n > static_cast<std::uint64_t>(end_ - p_)) {
      ok = false;
      return {};
    }
    std::string_view s(p_, n);
    p_ += n;
    return s;
  }
  float fixed32() {
    float f = 0;
    if (end_ - p_ < 4) {
      ok = false;
      return f;
    }
    std::memcpy(&f, p_, 4);
    p_ += 4;
    return f;
  }
  void skip(Wire w) {
    switch (w) {
      case kVarint: varint(); break;
      case kLen: bytes(); break;
      case kFixed32: p_ = end_ - p_ < 4 ? (ok = false, end_) : p_ + 4; break;
      case kFixed64: p_ = end_ - p_ < 8 ? (ok = false, end_) : p_ + 8; break;
      default: ok = false;
    }
  }

 private:
  const char* p_;
  const char* end_;
};

struct ParsedModel {
  std::vector<VocabEntry> pieces;
  bool add_dummy_prefix = true;  // the proto2 default
};

ParsedModel parse_model_proto(std::string_view proto) {
  ParsedModel m;
  ProtoReader r(proto);
  int field;
  Wire wire;
  while (r.next(field, wire)) {
    if (field == 1 && wire == kLen) {
      ProtoReader p(r.bytes());
      VocabEntry e;
      while (p.next(field, wire)) {
        if (field == 1 && wire == kLen) e.piece = std::string(p.bytes());
        else if (field == 2 && wire == kFixed32) e.score = p.fixed32();
        else if (field == 3 && wire == kVarint) e.type = static_cast<TokenType>(p.varint());
        else p.skip(wire);
      }
      if (!p.ok) r.ok = false;
      m.pieces.push_back(std::move(e));
    } else if (field == 3 && wire == kLen) {
      ProtoReader n(r.bytes());
      while (n.next(field, wire)) {
        if (field == 3 && wire == kVarint) m.add_dummy_prefix = n.varint() != 0;
        else n.skip(wire);
      }
    } else {
      r.skip(wire);
    }
  }
  if (!r.ok) throw Error("sentencepiece model: malformed ModelProto");
  return m;
}

// The byte a byte piece ("<0xE4>") stands for, or -1.
int piece_byte(const std::string& piece) {
  if (piece.size() != 6 || piece.compare(0, 3, "<0x") != 0 || piece[5] != '>') return -1;
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  const int hi = hex(piece[3]), lo = hex(piece[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

// --- the backend ---------------------------------------------------------------------------

class SentencePieceBackend : public TokenizerBackend {
 public:
  SentencePieceBackend(const std::string& serialized, const std::string& what) {
    auto st = sp_.LoadFromSerializedProto(serialized);
    if (!st.ok()) throw Error("cannot load tokenizer " + what + ": " + st.ToString());
    init();
  }
  explicit SentencePieceBackend(const std::string& file) {
    auto st = sp_.Load(file);
    if (!st.ok()) throw Error("cannot load tokenizer " + file + ": " + st.ToString());
    init();
  }

  Tokenizer::Kind kind() const override { return Tokenizer::Kind::SentencePiece; }

  void encode(std::string_view text, bool parse_special, std::vector<int>& out) const override {
    std::vector<int> part;
    auto encode_plain = [&](std::size_t begin, std::size_t end) {
      if (end <= begin) return;
      auto st = sp_.Encode(text.substr(begin, end - begin), &part);
      if (!st.ok()) throw Error("tokenizer: " + st.ToString());
      out.insert(out.end(), part.begin(), part.end());
    };
    std::size_t plain_start = 0, i = 0;
    while (parse_special && i < text.size()) {
      const std::pair<std::string, int>* hit = nullptr;
      if (text[i] == '<')  // every special token starts with '<'; skip the scan otherwise
        for (const auto& sp : specials_)
          if (text.compare(i, sp.first.size(), sp.first) == 0) {
            hit = &sp;
            break;
          }
      if (!hit) {
        ++i;
        continue;
      }
      encode_plain(plain_start, i);
      out.push_back(hit->second);
      i += hit->first.size();
      plain_start = i;
    }
    encode_plain(plain_start, text.size());
  }

  std::string decode(const std::vector<int>& ids, bool skip_special) const override {
    std::string out;
    std::vector<int> run;
    auto flush = [&] {
      if (run.empty()) return;
      std::string s;
      auto st = sp_.Decode(run, &s);
      if (!st.ok()) throw Error("tokenizer: " + st.ToString());
      out += s;
      run.clear();
    };
    const int n = vocab_size();
    for (int id : ids) {
      if (id < 0 || id >= n)
        throw Error("token id " + std::to_string(id) + " is outside the vocabulary (size " + std::to_string(n) + ")");
      if (is_special(id)) {
        flush();
        if (!skip_special) out += sp_.IdToPiece(id);
      } else {
        run.push_back(id);
      }
    }
    flush();
    return out;
  }

  int vocab_size() const override { return sp_.GetPieceSize(); }
  std::string id_to_piece(int id) const override { return sp_.IdToPiece(id); }
  int piece_to_id(const std::string& piece) const override {
    const int id = sp_.PieceToId(piece);
    return (id == sp_.unk_id() && piece != sp_.IdToPiece(id)) ? -1 : id;
  }
  bool is_special(int id) const override { return sp_.IsControl(id) || sp_.IsUnknown(id); }

  std::string token_bytes(int id) const override {
    const std::string& piece = sp_.IdToPiece(id);
    if (sp_.IsByte(id)) {
      const int b = piece_byte(piece);
      if (b >= 0) return std::string(1, static_cast<char>(b));
    }
    if (is_special(id)) return piece;
    std::string out;
    static const std::string marker = "\xE2\x96\x81";  // ▁ stands for a space
    for (std::size_t i = 0; i < piece.size();) {
      if (piece.compare(i, marker.size(), marker) == 0) {
        out += ' ';
        i += marker.size();
      } else {
        out += piece[i++];
      }
    }
    return out;
  }

  std::vector<VocabEntry> vocabulary() const override { return model_.pieces; }
  std::vector<std::string> merges() const override { return {}; }
  std::string pre_tokenizer_name() const override { return ""; }
  bool add_space_prefix() const override { return model_.add_dummy_prefix; }
  std::vector<AddedToken> added_tokens() const override {
    std::vector<AddedToken> out;
    for (std::size_t i = 0; i < model_.pieces.size(); ++i) {
      const auto type = model_.pieces[i].type;
      if (type != TokenType::Control && type != TokenType::Unknown && type != TokenType::UserDefined) continue;
      AddedToken a;
      a.id = static_cast<int>(i);
      a.content = model_.pieces[i].piece;
      a.special = type != TokenType::UserDefined;
      out.push_back(std::move(a));
    }
    return out;
  }
  Ids model_ids() const override {
    Ids ids;
    ids.bos = sp_.bos_id();
    ids.eos = sp_.eos_id();
    ids.unk = sp_.unk_id();
    ids.pad = sp_.pad_id() >= 0 ? sp_.pad_id() : sp_.unk_id();
    return ids;
  }
  bool model_adds_bos() const override { return sp_.bos_id() >= 0; }  // LlamaTokenizer's default
  std::pair<std::string, std::string> model_file(bool, int) const override {
    return {"tokenizer.model", sp_.serialized_model_proto()};
  }

 private:
  void init() {
    model_ = parse_model_proto(sp_.serialized_model_proto());
    if (static_cast<int>(model_.pieces.size()) != sp_.GetPieceSize())
      throw Error("sentencepiece model: the ModelProto lists " + std::to_string(model_.pieces.size()) +
                  " pieces but the model has " + std::to_string(sp_.GetPieceSize()));
    for (int id = 0; id < sp_.GetPieceSize(); ++id)
      if (is_special(id) && !sp_.IdToPiece(id).empty()) specials_.emplace_back(sp_.IdToPiece(id), id);
    // Longest first, so a special token that is a prefix of another never wins.
    std::sort(specials_.begin(), specials_.end(),
              [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  }

  sentencepiece::SentencePieceProcessor sp_;
  ParsedModel model_;
  std::vector<std::pair<std::string, int>> specials_;
};

}  // namespace

std::unique_ptr<TokenizerBackend> load_sentencepiece(const std::string& file) {
  return std::make_unique<SentencePieceBackend>(file);
}

std::unique_ptr<TokenizerBackend> sentencepiece_from_vocab(const std::vector<VocabEntry>& vocab, int bos_id, int eos_id,
                                                           int unk_id, int pad_id, bool add_space_prefix) {
  const int n = static_cast<int>(vocab.size());
  const std::string what = "sentencepiece vocabulary";
  if (n == 0) throw Error(what + ": the vocabulary is empty");
  for (const auto& [name, id] : {std::pair<const char*, int>{"bos", bos_id}, {"eos", eos_id}, {"unk", unk_id}, {"pad", pad_id}})
    if (id < -1 || id >= n)
      throw Error(what + ": " + name + " id " + std::to_string(id) + " is outside the vocabulary (size " +
                  std::to_string(n) + ")");
  // sentencepiece needs exactly one unknown piece: the unk id's, or the vocabulary's own.
  int unk = unk_id;
  if (unk < 0)
    for (int i = 0; i < n && unk < 0; ++i)
      if (vocab[static_cast<std::size_t>(i)].type == TokenType::Unknown) unk = i;
  if (unk < 0) throw Error(what + ": no unknown token (sentencepiece needs one)");
  bool bytes = false;
  std::string proto;
  for (int i = 0; i < n; ++i) {
    const auto& e = vocab[static_cast<std::size_t>(i)];
    TokenType type = e.type;
    if (i == unk) type = TokenType::Unknown;
    else if (type == TokenType::Unknown) type = TokenType::Control;  // a second <unk>: keep it out of text
    else if (i == bos_id || i == eos_id || i == pad_id) type = TokenType::Control;
    if (static_cast<int>(type) < 1 || static_cast<int>(type) > 6) type = TokenType::Normal;
    bytes = bytes || type == TokenType::Byte;
    std::string piece;
    put_bytes(piece, 1, e.piece);
    put_float(piece, 2, e.score);
    put_int(piece, 3, static_cast<int>(type));
    put_bytes(proto, 1, piece);
  }
  auto piece_or = [&](int id, const char* fallback) {
    return id >= 0 ? vocab[static_cast<std::size_t>(id)].piece : std::string(fallback);
  };
  std::string trainer;
  put_int(trainer, 3, 2);  // model_type = BPE
  put_int(trainer, 4, n);  // vocab_size
  put_int(trainer, 35, bytes ? 1 : 0);  // byte_fallback
  put_int(trainer, 40, unk);
  put_int(trainer, 41, bos_id);
  put_int(trainer, 42, eos_id);
  put_int(trainer, 43, pad_id);
  // sentencepiece finds bos/eos/pad by these pieces; absent ids get a name no piece has.
  put_bytes(trainer, 45, piece_or(unk, "<unk>"));
  put_bytes(trainer, 46, piece_or(bos_id, "\x01<no bos>"));
  put_bytes(trainer, 47, piece_or(eos_id, "\x01<no eos>"));
  put_bytes(trainer, 48, piece_or(pad_id, "\x01<no pad>"));
  put_bytes(proto, 2, trainer);
  std::string normalizer;
  put_bytes(normalizer, 1, "identity");
  put_int(normalizer, 3, add_space_prefix ? 1 : 0);
  put_int(normalizer, 4, 0);  // remove_extra_whitespaces
  put_int(normalizer, 5, 1);  // escape_whitespaces
  put_bytes(proto, 3, normalizer);
  return std::make_unique<SentencePieceBackend>(proto, what);
}

}  // namespace llmctl::detail
