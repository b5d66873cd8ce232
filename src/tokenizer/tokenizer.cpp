#include "llmctl/tokenizer/tokenizer.h"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <filesystem>

#include "llmctl/util/error.h"

namespace llmctl {

const char* const kChatMLTemplate =
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const std::vector<std::string>& tokenizer_file_names() {
  static const std::vector<std::string> names = {"tokenizer.model", "tokenizer_config.json",
                                                 "special_tokens_map.json"};
  return names;
}

Tokenizer::Tokenizer() : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

bool Tokenizer::exists_in(const std::string& dir) {
  return std::filesystem::exists(std::filesystem::path(dir) / "tokenizer.model");
}

Tokenizer Tokenizer::load(const std::string& path) {
  namespace fs = std::filesystem;
  fs::path file = fs::is_directory(path) ? fs::path(path) / "tokenizer.model" : fs::path(path);
  if (!fs::exists(file)) throw Error("no tokenizer: " + file.string() + " does not exist");
  Tokenizer t;
  auto st = t.sp_->Load(file.string());
  if (!st.ok()) throw Error("cannot load tokenizer " + file.string() + ": " + st.ToString());
  t.dir_ = file.parent_path().string();
  t.bos_id_ = t.sp_->bos_id();
  t.eos_id_ = t.sp_->eos_id();
  t.pad_id_ = t.sp_->pad_id() >= 0 ? t.sp_->pad_id() : t.sp_->unk_id();
  for (int id = 0; id < t.sp_->GetPieceSize(); ++id)
    if (t.sp_->IsControl(id) || t.sp_->IsUnknown(id))
      if (!t.sp_->IdToPiece(id).empty()) t.specials_.emplace_back(t.sp_->IdToPiece(id), id);
  // Longest first, so a special token that is a prefix of another never wins.
  std::sort(t.specials_.begin(), t.specials_.end(),
            [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  return t;
}

std::vector<int> Tokenizer::encode(const std::string& text, bool parse_special) const {
  std::vector<int> out, part;
  auto encode_plain = [&](std::size_t begin, std::size_t end) {
    if (end <= begin) return;
    auto st = sp_->Encode(std::string_view(text).substr(begin, end - begin), &part);
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
  return out;
}

std::string Tokenizer::decode(const std::vector<int>& ids, bool skip_special) const {
  std::string out;
  std::vector<int> run;
  auto flush = [&] {
    if (run.empty()) return;
    std::string s;
    auto st = sp_->Decode(run, &s);
    if (!st.ok()) throw Error("tokenizer: " + st.ToString());
    out += s;
    run.clear();
  };
  const int n = sp_->GetPieceSize();
  for (int id : ids) {
    if (id < 0 || id >= n) throw Error("token id " + std::to_string(id) + " is outside the vocabulary (size " + std::to_string(n) + ")");
    if (is_special(id)) {
      flush();
      if (!skip_special) out += sp_->IdToPiece(id);
    } else {
      run.push_back(id);
    }
  }
  flush();
  return out;
}

std::string Tokenizer::id_to_piece(int id) const {
  if (id < 0 || id >= sp_->GetPieceSize()) throw Error("token id " + std::to_string(id) + " is outside the vocabulary");
  return sp_->IdToPiece(id);
}

int Tokenizer::piece_to_id(const std::string& piece) const {
  int id = sp_->PieceToId(piece);
  return (id == sp_->unk_id() && piece != sp_->IdToPiece(id)) ? -1 : id;
}

bool Tokenizer::is_special(int id) const {
  return sp_->IsControl(id) || sp_->IsUnknown(id);
}

int Tokenizer::vocab_size() const { return sp_->GetPieceSize(); }

std::string Tokenizer::render_chatml(const std::vector<Message>& messages, bool add_generation_prompt) {
  std::string s;
  for (const auto& m : messages) s += std::string(kImStart) + m.role + "\n" + m.content + kImEnd + "\n";
  if (add_generation_prompt) s += std::string(kImStart) + "assistant\n";
  return s;
}

}  // namespace llmctl
