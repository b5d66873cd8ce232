#include "llmctl/tokenizer/tokenizer.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "backend.h"
#include "llmctl/tokenizer/bpe.h"
#include "llmctl/tokenizer/chat_format.h"
#include "llmctl/util/error.h"
#include "llmctl/util/fs.h"

namespace llmctl {

namespace fs = std::filesystem;
using nlohmann::json;

const char* const kChatMLTemplate =
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const std::vector<std::string>& tokenizer_file_names() {
  static const std::vector<std::string> names = {"tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                                                 "special_tokens_map.json", "chat_template.jinja"};
  return names;
}

namespace detail {
namespace {

class BpeBackend : public TokenizerBackend {
 public:
  explicit BpeBackend(std::unique_ptr<ByteLevelBpe> bpe) : bpe_(std::move(bpe)) {}
  Tokenizer::Kind kind() const override { return Tokenizer::Kind::ByteLevelBpe; }
  void encode(std::string_view text, bool parse_special, std::vector<int>& out) const override {
    bpe_->encode(text, parse_special, out);
  }
  std::string decode(const std::vector<int>& ids, bool skip_special) const override {
    return bpe_->decode(ids, skip_special);
  }
  int vocab_size() const override { return bpe_->vocab_size(); }
  std::string id_to_piece(int id) const override { return bpe_->piece(id); }
  int piece_to_id(const std::string& piece) const override { return bpe_->piece_to_id(piece); }
  bool is_special(int id) const override { return bpe_->is_special(id); }
  std::string token_bytes(int id) const override { return bpe_->token_bytes(id); }
  std::vector<VocabEntry> vocabulary() const override { return bpe_->vocabulary(); }
  std::vector<std::string> merges() const override { return bpe_->merges(); }
  std::string pre_tokenizer_name() const override { return bpe_->pre_tokenizer_name(); }
  bool add_space_prefix() const override { return false; }
  std::vector<AddedToken> added_tokens() const override { return bpe_->added_tokens(); }
  Ids model_ids() const override { return {}; }
  bool model_adds_bos() const override { return bpe_->post_processor_adds_bos(); }
  std::pair<std::string, std::string> model_file(bool add_bos, int bos_id) const override {
    return {"tokenizer.json", bpe_->to_json(add_bos, bos_id)};
  }

 private:
  std::unique_ptr<ByteLevelBpe> bpe_;
};

}  // namespace

std::unique_ptr<TokenizerBackend> bpe_backend(std::unique_ptr<ByteLevelBpe> bpe) {
  return std::make_unique<BpeBackend>(std::move(bpe));
}

}  // namespace detail

namespace {

json read_json_file(const fs::path& p) {
  auto j = json::parse(read_file(p.string()), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) throw Error(p.string() + ": not valid JSON");
  return j;
}

// A special-token entry of tokenizer_config.json / special_tokens_map.json: "<s>" or
// {"content": "<s>", ...}; "" when absent.
std::string token_text(const json& cfg, const char* key) {
  if (!cfg.is_object() || !cfg.contains(key)) return "";
  const json& v = cfg[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return "";
}

}  // namespace

Tokenizer::Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

bool Tokenizer::exists_in(const std::string& dir) {
  return fs::exists(fs::path(dir) / "tokenizer.json") || fs::exists(fs::path(dir) / "tokenizer.model");
}

Tokenizer Tokenizer::load(const std::string& path) {
  Tokenizer t;
  fs::path dir;
  auto load_json = [&](const fs::path& file, bool required) {
    json j = read_json_file(file);
    if (!ByteLevelBpe::is_byte_level(j)) {
      if (required)
        throw Error(file.string() + ": not a byte-level BPE tokenizer.json (no ByteLevel decoder or pre_tokenizer); "
                    "use its tokenizer.model");
      return false;
    }
    t.impl_ = detail::bpe_backend(ByteLevelBpe::from_json(j, file.string()));
    return true;
  };
  if (fs::is_directory(path)) {
    dir = path;
    const fs::path json_file = dir / "tokenizer.json", model_file = dir / "tokenizer.model";
    // Llama 2 / Mistral ship a sentencepiece-style tokenizer.json next to the
    // tokenizer.model: that one is read through sentencepiece itself.
    const bool has_json = fs::exists(json_file), has_model = fs::exists(model_file);
    if (!(has_json && load_json(json_file, !has_model))) {
      if (!has_model)
        throw Error("no tokenizer in " + dir.string() + ": looked for tokenizer.json (byte-level BPE) and tokenizer.model");
      t.impl_ = detail::load_sentencepiece(model_file.string());
    }
  } else {
    const fs::path file(path);
    if (!fs::exists(file)) throw Error("no tokenizer: " + file.string() + " does not exist");
    dir = file.has_parent_path() ? file.parent_path() : fs::path(".");
    if (file.extension() == ".json")
      load_json(file, true);
    else
      t.impl_ = detail::load_sentencepiece(file.string());
  }
  t.dir_ = dir.string();
  const auto ids = t.impl_->model_ids();
  t.bos_id_ = ids.bos;
  t.eos_id_ = ids.eos;
  t.pad_id_ = ids.pad;
  t.unk_id_ = ids.unk;
  t.add_bos_ = t.impl_->model_adds_bos();
  t.read_config(t.dir_);
  return t;
}

void Tokenizer::read_config(const std::string& dir) {
  chat_template_ = kChatMLTemplate;
  if (dir.empty()) return;
  const fs::path cfg_file = fs::path(dir) / "tokenizer_config.json";
  const fs::path map_file = fs::path(dir) / "special_tokens_map.json";
  json cfg = json::object(), map = json::object();
  if (fs::exists(cfg_file)) {
    cfg = read_json_file(cfg_file);
    if (!cfg.is_object()) throw Error(cfg_file.string() + ": not a JSON object");
    config_json_ = cfg.dump();
  }
  if (fs::exists(map_file)) map = read_json_file(map_file);

  // chat_template: a string, or a list of {name, template} with a "default"; newer
  // transformers keep it in chat_template.jinja instead.
  const fs::path jinja = fs::path(dir) / "chat_template.jinja";
  // (without either, the ChatML default stays)
  if (auto t = chat_template_of(cfg); !t.empty())
    chat_template_ = std::move(t);
  else if (fs::exists(jinja))
    chat_template_ = read_file(jinja.string());
  if (cfg.contains("add_bos_token") && cfg["add_bos_token"].is_boolean()) add_bos_ = cfg["add_bos_token"].get<bool>();
  if (cfg.contains("add_eos_token") && cfg["add_eos_token"].is_boolean()) add_eos_ = cfg["add_eos_token"].get<bool>();
  if (cfg.contains("model_max_length") && cfg["model_max_length"].is_number_integer()) {
    const auto n = cfg["model_max_length"].get<long long>();
    if (n > 0 && n < (1LL << 40)) model_max_length_ = n;  // HF writes 1e30 for "no limit"
  }
  // sentencepiece names its own special ids; a tokenizer.json's come from these files.
  if (kind() == Kind::ByteLevelBpe) {
    auto id_of = [&](const char* key) {
      std::string s = token_text(cfg, key);
      if (s.empty()) s = token_text(map, key);
      return s.empty() ? -1 : piece_to_id(s);
    };
    bos_id_ = id_of("bos_token");
    eos_id_ = id_of("eos_token");
    pad_id_ = id_of("pad_token");
    unk_id_ = id_of("unk_token");
  }
}

Tokenizer Tokenizer::from_sentencepiece_vocab(const std::vector<VocabEntry>& vocab, int bos_id, int eos_id, int unk_id,
                                              int pad_id, bool add_space_prefix) {
  Tokenizer t;
  t.impl_ = detail::sentencepiece_from_vocab(vocab, bos_id, eos_id, unk_id, pad_id, add_space_prefix);
  t.bos_id_ = bos_id;
  t.eos_id_ = eos_id;
  t.pad_id_ = pad_id;
  t.unk_id_ = t.impl_->model_ids().unk;
  t.add_bos_ = bos_id >= 0;
  t.chat_template_ = kChatMLTemplate;
  return t;
}

Tokenizer Tokenizer::from_byte_level_bpe(const std::vector<VocabEntry>& vocab, const std::vector<std::string>& merges,
                                         const std::string& pre_tokenizer, int bos_id, int eos_id, int pad_id) {
  const int n = static_cast<int>(vocab.size());
  for (const auto& [name, id] : {std::pair<const char*, int>{"bos", bos_id}, {"eos", eos_id}, {"pad", pad_id}})
    if (id < -1 || id >= n)
      throw Error(std::string("byte-level BPE vocabulary: ") + name + " id " + std::to_string(id) +
                  " is outside the vocabulary (size " + std::to_string(n) + ")");
  Tokenizer t;
  t.impl_ = detail::bpe_backend(ByteLevelBpe::from_vocab(vocab, merges, pre_tokenizer));
  t.bos_id_ = bos_id;
  t.eos_id_ = eos_id;
  t.pad_id_ = pad_id;
  // Of these families only Llama 3 puts a BOS before every text (its post_processor).
  t.add_bos_ = pre_tokenizer == "llama-bpe" && bos_id >= 0;
  t.chat_template_ = kChatMLTemplate;
  return t;
}

Tokenizer::Kind Tokenizer::kind() const { return impl_->kind(); }

std::vector<int> Tokenizer::encode(const std::string& text, bool parse_special) const {
  std::vector<int> out;
  impl_->encode(text, parse_special, out);
  return out;
}

std::string Tokenizer::decode(const std::vector<int>& ids, bool skip_special) const {
  return impl_->decode(ids, skip_special);
}

std::string Tokenizer::id_to_piece(int id) const {
  if (id < 0 || id >= vocab_size()) throw Error("token id " + std::to_string(id) + " is outside the vocabulary");
  return impl_->id_to_piece(id);
}

int Tokenizer::piece_to_id(const std::string& piece) const { return impl_->piece_to_id(piece); }

bool Tokenizer::is_special(int id) const { return id >= 0 && id < vocab_size() && impl_->is_special(id); }

int Tokenizer::vocab_size() const { return impl_->vocab_size(); }

std::vector<VocabEntry> Tokenizer::vocabulary() const { return impl_->vocabulary(); }
std::vector<std::string> Tokenizer::merges() const { return impl_->merges(); }
std::string Tokenizer::pre_tokenizer_name() const { return impl_->pre_tokenizer_name(); }
bool Tokenizer::add_space_prefix() const { return impl_->add_space_prefix(); }

std::string Tokenizer::token_bytes(int id) const {
  if (id < 0 || id >= vocab_size()) throw Error("token id " + std::to_string(id) + " is outside the vocabulary");
  return impl_->token_bytes(id);
}

void Tokenizer::save(const std::string& dir) const {
  if (!fs::is_directory(dir)) throw Error("cannot save the tokenizer: " + dir + " is not a directory");
  const auto [name, contents] = impl_->model_file(add_bos_, bos_id_);
  write_file_atomic((fs::path(dir) / name).string(), contents);

  // tokenizer_config.json: what was read at load (unknown keys kept), with the fields llmctl
  // knows set from this tokenizer.
  json cfg = json::object();
  if (!config_json_.empty()) cfg = json::parse(config_json_);
  const bool bpe = kind() == Kind::ByteLevelBpe;
  if (!cfg.contains("tokenizer_class") || !cfg["tokenizer_class"].is_string())
    cfg["tokenizer_class"] = bpe ? "PreTrainedTokenizerFast" : "LlamaTokenizer";
  cfg.erase("tokenizer_file");  // a path on the machine that wrote it
  json smap = json::object();
  for (const auto& [key, id] : {std::pair<const char*, int>{"bos_token", bos_id_},
                                {"eos_token", eos_id_},
                                {"pad_token", pad_id_},
                                {"unk_token", unk_id_}}) {
    if (id >= 0 && id < vocab_size()) {
      cfg[key] = smap[key] = impl_->id_to_piece(id);
    } else {
      cfg[key] = nullptr;
    }
  }
  cfg["add_bos_token"] = add_bos_;
  cfg["add_eos_token"] = add_eos_;
  if (model_max_length_ > 0) cfg["model_max_length"] = model_max_length_;
  if (!cfg.contains("clean_up_tokenization_spaces")) cfg["clean_up_tokenization_spaces"] = false;
  // sentencepiece encodes the text after a special token with its own dummy prefix, which
  // is what transformers calls legacy.
  if (!bpe && !cfg.contains("legacy")) cfg["legacy"] = true;
  json decoder = json::object();
  for (const auto& a : impl_->added_tokens())
    decoder[std::to_string(a.id)] = {{"content", a.content}, {"lstrip", a.lstrip}, {"normalized", a.normalized},
                                     {"rstrip", a.rstrip},   {"single_word", a.single_word}, {"special", a.special}};
  cfg["added_tokens_decoder"] = decoder;
  cfg["chat_template"] = chat_template_;
  const auto dump = [](const json& j) { return j.dump(2, ' ', false, json::error_handler_t::replace) + "\n"; };
  write_file_atomic((fs::path(dir) / "tokenizer_config.json").string(), dump(cfg));
  write_file_atomic((fs::path(dir) / "special_tokens_map.json").string(), dump(smap));
}

std::string Tokenizer::render_chatml(const std::vector<Message>& messages, bool add_generation_prompt) {
  std::string s;
  for (const auto& m : messages) s += std::string(kImStart) + m.role + "\n" + m.content + kImEnd + "\n";
  if (add_generation_prompt) s += std::string(kImStart) + "assistant\n";
  return s;
}

}  // namespace llmctl
