#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <random>
#include <sstream>
#include <thread>

#include "llmctl/engine/text_stream.h"
#include "llmctl/tokenizer/chat_format.h"
#include "llmctl/tokenizer/pretokenizer.h"
#include "llmctl/tokenizer/tokenizer.h"
#include "llmctl/tokenizer/trainer.h"
#include "llmctl/util/error.h"
#include "test_helpers.h"

using namespace llmctl;


TEST(Tokenizer, SpecialTokensHaveFixedIds) {
  const auto& t = demo_tokenizer();
  EXPECT_EQ(t.piece_to_id("<|endoftext|>"), 0);
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_id(), 2);
  EXPECT_EQ(t.pad_id(), 0);
  EXPECT_EQ(t.encode("<|im_start|>user\nhi<|im_end|>").front(), 1);
  EXPECT_EQ(t.encode("<|im_start|>user\nhi<|im_end|>").back(), 2);
  auto plain = t.encode("<|im_start|>", /*parse_special=*/false);
  EXPECT_GT(plain.size(), 1u);
  for (int id : plain) EXPECT_FALSE(t.is_special(id));
}

TEST(Tokenizer, DecodeEncodeIsIdentityOnAnyText) {
  const auto& t = demo_tokenizer();
  const std::vector<std::string> samples = {
      "In the beginning God created the heaven and the earth.",
      "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
      "mixed 中文 and English, digits 1234567890 and 3.14159",
      "emoji 😀🎉👩‍👩‍👧 and symbols ∑∫√ ✓",
      "  leading spaces, trailing spaces   ",
      "tabs\tand\nnew\n\nlines\r\n",
      "def f(x):\n    return x ** 2  # code\n",
      "special <|im_start|>inside<|im_end|> text<|endoftext|>",
      "\xE2\x80\x8B zero-width and \xC2\xA0 nbsp",
      "",
  };
  for (const auto& s : samples) EXPECT_EQ(t.decode(t.encode(s)), s) << s;
}

TEST(Tokenizer, DigitsAreSplit) {
  const auto& t = demo_tokenizer();
  auto ids = t.encode("2024");
  EXPECT_EQ(ids.size(), 4u);
}

TEST(Tokenizer, SkipSpecialAndBadIds) {
  const auto& t = demo_tokenizer();
  auto ids = t.encode("<|im_start|>hi<|im_end|>");
  EXPECT_EQ(t.decode(ids, /*skip_special=*/true), "hi");
  EXPECT_THROW(t.decode({t.vocab_size()}), Error);
  EXPECT_THROW(t.decode({-1}), Error);
}

TEST(Tokenizer, ChatML) {
  std::vector<Message> msgs = {{"system", "S"}, {"user", "U"}};
  EXPECT_EQ(Tokenizer::render_chatml(msgs, true),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n");
}

TEST(TokenizerTrainer, RejectsBadOptionsAndEmptyInput) {
  TempDir dir;
  TokenizerTrainOptions opt;
  opt.out_dir = dir.path + "/tok";
  opt.progress = false;
  EXPECT_ERROR_MENTIONS(train_tokenizer(opt), "--data");
  write_file_atomic(dir.path + "/empty.jsonl", "{\"x\": 1}\n");
  opt.inputs = {dir.path + "/empty.jsonl"};
  opt.model_type = "wordpiece";
  EXPECT_ERROR_MENTIONS(train_tokenizer(opt), "--model-type");
  opt.model_type = "bpe";
  opt.vocab_size = 10;
  EXPECT_ERROR_MENTIONS(train_tokenizer(opt), "--vocab-size");
}

TEST(TokenizerTrainer, UnigramWorksAndMissingTokenizerIsAnError) {
  TempDir dir;
  train_demo_tokenizer(dir.path + "/uni", 800, "unigram");
  auto t = Tokenizer::load(dir.path + "/uni");
  std::string s = "Unigram 单字 round trip 42";
  EXPECT_EQ(t.decode(t.encode(s)), s);
  EXPECT_ERROR_MENTIONS(Tokenizer::load(dir.path + "/none"), "none");
}

TEST(ChatFormat, DetectedFromTheModelsChatTemplate) {
  TempDir dir;
  auto write = [&](const std::string& body) { llmctl::write_file_atomic(dir.path + "/tokenizer_config.json", body); };
  EXPECT_EQ(llmctl::detect_chat_format(dir.path), llmctl::ChatFormat::ChatML);  // no file: llmctl's own
  write(R"({"chat_template": "{% for m in messages %}<|im_start|>{{ m.role }}..."})");
  EXPECT_EQ(llmctl::detect_chat_format(dir.path), llmctl::ChatFormat::ChatML);
  write(R"({"chat_template": "{{ bos_token }}{% for m in messages %}[INST] {{ m.content }} [/INST]..."})");
  EXPECT_EQ(llmctl::detect_chat_format(dir.path), llmctl::ChatFormat::Llama2);
  write(R"({"chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": "[INST]"}]})");
  EXPECT_EQ(llmctl::detect_chat_format(dir.path), llmctl::ChatFormat::Llama2);
  write("{not json");
  EXPECT_EQ(llmctl::detect_chat_format(dir.path), llmctl::ChatFormat::ChatML);
}

TEST(ChatFormat, RendersEachFamilyTurnByTurn) {
  using llmctl::ChatFormat;
  using llmctl::render_chat;
  const std::vector<llmctl::Message> conv = {
      {"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello."}, {"user", "2+2?"}};
  EXPECT_EQ(render_chat(conv, ChatFormat::Llama2, true),
            "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello. </s><s>[INST] 2+2? [/INST]");
  EXPECT_EQ(render_chat(conv, ChatFormat::ChatML, true),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
            "Hello.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n");
  // Turn by turn: rendering the pieces and joining them (with the answer's end of turn)
  // gives the whole conversation, which is what lets chat grow its history as tokens.
  for (auto f : {ChatFormat::ChatML, ChatFormat::Llama2}) {
    const auto& info = llmctl::chat_format_info(f);
    std::string pieces = render_chat({conv[0], conv[1]}, f, true) + (f == ChatFormat::Llama2 ? " " : "") + "Hello." +
                         (f == ChatFormat::Llama2 ? " " : "") + info.end_token + info.after_end +
                         render_chat({conv[3]}, f, true);
    EXPECT_EQ(pieces, render_chat(conv, f, true)) << info.name;
  }
}

// --- Byte-level BPE (tokenizer.json) -------------------------------------------------------

namespace {

using nlohmann::json;
const std::string G = llmctl::bpe::byte_to_chars(' ');  // "Ġ"

using Merges = std::vector<std::pair<std::string, std::string>>;

Merges default_merges() {
  return {{"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}, {G, "w"}, {"o", "r"}, {G + "w", "or"},
          {"l", "d"}, {G + "wor", "ld"}, {"a", "b"}, {"b", "c"}, {G, "h"}, {G + "h", "ello"}, {"e", "llo"}, {"ll", "o"},
          {"1", "2"}, {"12", "3"}, {"4", "5"}};
}

// A tiny byte-level BPE tokenizer.json: the 256 byte tokens (id = byte value), tokens made
// by `merges` in order, then added tokens.
json tiny_bpe(const Merges& merges = default_merges(), json pre_tokenizer = nullptr) {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[llmctl::bpe::byte_to_chars(static_cast<unsigned char>(b))] = b;
  int next = 256;
  json m = json::array();
  for (const auto& [a, b] : merges) {
    m.push_back(a + " " + b);
    if (!vocab.contains(a + b)) vocab[a + b] = next++;
  }
  auto added = [&](const char* content, bool special, bool lstrip = false, bool rstrip = false, bool single = false) {
    return json{{"id", next++},          {"content", content}, {"single_word", single}, {"lstrip", lstrip},
                {"rstrip", rstrip},      {"normalized", !special}, {"special", special}};
  };
  json tokens = json::array();
  for (const char* s : {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}) tokens.push_back(added(s, true));
  tokens.push_back(added("<mask>", true, true, true));
  tokens.push_back(added("wd", false, false, false, true));
  tokens.push_back(added("<|a|>", false));
  tokens.push_back(added("<|a|>b", false));
  if (pre_tokenizer.is_null())
    pre_tokenizer = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  return {{"version", "1.0"},
          {"added_tokens", tokens},
          {"normalizer", nullptr},
          {"pre_tokenizer", pre_tokenizer},
          {"post_processor", nullptr},
          {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
          {"model",
           {{"type", "BPE"},
            {"dropout", nullptr},
            {"unk_token", nullptr},
            {"continuing_subword_prefix", nullptr},
            {"end_of_word_suffix", nullptr},
            {"fuse_unk", false},
            {"byte_fallback", false},
            {"ignore_merges", false},
            {"vocab", vocab},
            {"merges", m}}}};
}

std::string write_tokenizer(const std::string& dir, const json& j, const std::string& config = "") {
  std::filesystem::create_directories(dir);
  write_file_atomic(dir + "/tokenizer.json", j.dump());
  if (!config.empty()) write_file_atomic(dir + "/tokenizer_config.json", config);
  return dir;
}

Tokenizer tiny_tokenizer(const TempDir& d, const Merges& merges = default_merges(), json pre = nullptr) {
  return Tokenizer::load(write_tokenizer(d.path + "/tiny", tiny_bpe(merges, std::move(pre))));
}

std::vector<int> ids_of(const Tokenizer& t, std::initializer_list<const char*> pieces) {
  std::vector<int> v;
  for (const char* p : pieces) {
    v.push_back(t.piece_to_id(p));
    EXPECT_GE(v.back(), 0) << p;
  }
  return v;
}

const std::vector<std::string> kMixedTexts = {
    "hello world",
    " hello  world   ",
    "床前明月光，疑是地上霜。",
    "emoji 😀🎉👩‍👩‍👧 and ∑∫√",
    "def f(x):\n    return x ** 2  # code\n\t\ttabs\r\n",
    "digits 1234567890 3.14159 and 'quotes' it's we'll",
    "Ωμέγα Привет مرحبا नमस्ते 한국어",
    "<|im_start|>user\nhi<|im_end|>\n",
    "",
};

}  // namespace

TEST(TokenizerBpe, MergesApplyByRank) {
  TempDir d;
  auto t = tiny_tokenizer(d);
  EXPECT_EQ(t.kind(), Tokenizer::Kind::ByteLevelBpe);
  EXPECT_EQ(t.encode("hello"), ids_of(t, {"hello"}));
  EXPECT_EQ(t.encode("hello world"), ids_of(t, {"hello", (G + "world").c_str()}));
  // "a b" ranks before "b c": "abc" -> ab c. Reversed ranks -> a bc.
  EXPECT_EQ(t.encode("abc"), ids_of(t, {"ab", "c"}));
  TempDir d2;
  auto r = tiny_tokenizer(d2, {{"b", "c"}, {"a", "b"}});
  EXPECT_EQ(r.encode("abc"), ids_of(r, {"a", "bc"}));
  // Lowest rank first, not left to right: "h e" (rank 0) wins over "Ġ h" (rank 11), so
  // "Ġhello" is never reached.
  EXPECT_EQ(t.encode(" hello"), ids_of(t, {G.c_str(), "hello"}));
  // Long words take the priority-queue path: same merges as short ones.
  std::string long_word;
  std::vector<int> want;
  for (int i = 0; i < 30; ++i) {
    long_word += "hello";
    want.push_back(t.piece_to_id("hello"));
  }
  EXPECT_EQ(t.encode(long_word), want);
  EXPECT_EQ(t.merges().front(), "h e");
  EXPECT_EQ(t.merges().size(), default_merges().size());
}

TEST(TokenizerBpe, AddedTokensAreMatchedFirst) {
  TempDir d;
  auto t = tiny_tokenizer(d);
  const int start = t.piece_to_id("<|im_start|>"), end = t.piece_to_id("<|im_end|>");
  ASSERT_GE(start, 256);
  auto ids = t.encode("<|im_start|>user\nhello<|im_end|>");
  EXPECT_EQ(ids.front(), start);
  EXPECT_EQ(ids.back(), end);
  EXPECT_EQ(ids[ids.size() - 2], t.piece_to_id("hello"));
  EXPECT_TRUE(t.is_special(start));
  EXPECT_FALSE(t.is_special(t.piece_to_id("wd")));
  EXPECT_FALSE(t.is_special(t.piece_to_id("hello")));
  EXPECT_EQ(t.decode(ids, /*skip_special=*/true), "user\nhello");
  EXPECT_EQ(t.decode(ids), "<|im_start|>user\nhello<|im_end|>");
  // Not parsed: the special token's text goes through the BPE.
  auto plain = t.encode("<|im_start|>", /*parse_special=*/false);
  EXPECT_GT(plain.size(), 1u);
  for (int id : plain) EXPECT_FALSE(t.is_special(id));
  // Leftmost-longest.
  EXPECT_EQ(t.encode("x<|a|>b"), ids_of(t, {"x", "<|a|>b"}));
  EXPECT_EQ(t.encode("x<|a|>c"), ids_of(t, {"x", "<|a|>", "c"}));
  // lstrip / rstrip take the whitespace around the token.
  EXPECT_EQ(t.encode("a  <mask>  b"), ids_of(t, {"a", "<mask>", "b"}));
  // single_word: only between non-word characters.
  EXPECT_EQ(t.encode("a wd b"), ids_of(t, {"a", G.c_str(), "wd", G.c_str(), "b"}));
  EXPECT_EQ(t.encode("awd"), ids_of(t, {"a", "w", "d"}));
  EXPECT_EQ(t.encode("wd_"), ids_of(t, {"w", "d", "_"}));
  // A non-special added token survives skip_special.
  EXPECT_EQ(t.decode(t.encode("a wd"), true), "a wd");
  EXPECT_EQ(t.token_bytes(start), "<|im_start|>");
  EXPECT_EQ(t.token_bytes(t.piece_to_id(G + "world")), " world");
}

TEST(TokenizerBpe, ByteLevelRoundTripOfAnyBytes) {
  TempDir d;
  auto t = tiny_tokenizer(d);
  for (const auto& s : kMixedTexts) EXPECT_EQ(t.decode(t.encode(s)), s) << s;
  // Invalid UTF-8 (lone continuation bytes, truncated sequences, overlong forms, 0xFF)
  // encodes and decodes back byte for byte.
  const std::vector<std::string> bad = {"\x80", "a\xE4\xBD", "\xC0\xAF x", "\xFF\xFE hi \xED\xA0\x80", "\xF0\x9F\x98"};
  for (const auto& s : bad) EXPECT_EQ(t.decode(t.encode(s)), s);
  std::mt19937 rng(3);
  for (int i = 0; i < 300; ++i) {
    std::string s(rng() % 40, '\0');
    for (auto& c : s) c = static_cast<char>(rng());
    EXPECT_EQ(t.decode(t.encode(s)), s);
  }
  EXPECT_THROW(t.decode({t.vocab_size()}), Error);
  EXPECT_THROW(t.decode({-1}), Error);
}

TEST(TokenizerBpe, SplitBehaviorsFollowHF) {
  // Merges across every boundary, so the ids show where the pre-tokenizer split.
  const Merges m = {{"a", "-"}, {"-", "b"}, {"-", "-"}, {"a", "b"}, {"a--", "b"}, {"a-", "-"}};
  auto encode = [&](const std::string& behavior, bool invert, const std::string& text) {
    json pre = {{"type", "Sequence"},
                {"pretokenizers",
                 {{{"type", "Split"}, {"pattern", {{"String", "-"}}}, {"behavior", behavior}, {"invert", invert}},
                  {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
    TempDir d;
    auto t = tiny_tokenizer(d, m, pre);
    std::vector<std::string> pieces;
    for (int id : t.encode(text)) pieces.push_back(t.id_to_piece(id));
    return pieces;
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(encode("Isolated", false, "a-b"), (V{"a", "-", "b"}));
  EXPECT_EQ(encode("Removed", false, "a-b"), (V{"a", "b"}));
  EXPECT_EQ(encode("MergedWithPrevious", false, "a-b"), (V{"a-", "b"}));
  EXPECT_EQ(encode("MergedWithNext", false, "a-b"), (V{"a", "-b"}));
  EXPECT_EQ(encode("Contiguous", false, "a--b"), (V{"a", "--", "b"}));
  EXPECT_EQ(encode("Isolated", false, "a--b"), (V{"a", "-", "-", "b"}));
  EXPECT_EQ(encode("MergedWithPrevious", false, "a--b"), (V{"a-", "-", "b"}));
  EXPECT_EQ(encode("MergedWithNext", false, "a--b"), (V{"a", "-", "-b"}));
  // Inverted: the "-" are the gaps, the rest the matches.
  EXPECT_EQ(encode("MergedWithPrevious", true, "a-b"), (V{"a", "-b"}));
  EXPECT_EQ(encode("Removed", true, "a-b"), (V{"-"}));
}

TEST(TokenizerBpe, MalformedTokenizerJsonIsAClearError) {
  TempDir d;
  const std::string dir = d.path + "/bad";
  std::filesystem::create_directories(dir);
  auto load_with = [&](const std::string& text) {
    write_file_atomic(dir + "/tokenizer.json", text);
    return Tokenizer::load(dir);
  };
  auto with = [&](auto edit) {
    json j = tiny_bpe();
    edit(j);
    return j.dump();
  };
  EXPECT_ERROR_MENTIONS(load_with("{\"model\": [1, 2"), "tokenizer.json: not valid JSON");
  EXPECT_ERROR_MENTIONS(load_with(with([](json& j) { j.erase("model"); })), "\"model\"");
  EXPECT_ERROR_MENTIONS(load_with(with([](json& j) { j["model"]["type"] = "WordPiece"; })), "WordPiece");
  EXPECT_ERROR_MENTIONS(load_with(with([](json& j) { j["model"]["merges"].push_back("h zz"); })), "'zz'");
  EXPECT_ERROR_MENTIONS(load_with(with([](json& j) { j["model"]["merges"].push_back("h e x"); })), "model.merges[");
  EXPECT_ERROR_MENTIONS(load_with(with([](json& j) { j["normalizer"] = {{"type", "Lowercase"}}; })), "Lowercase");
  EXPECT_ERROR_MENTIONS(load_with(with([](json& j) { j["normalizer"] = {{"type", "Lowercase"}}; })), "\"normalizer\"");
  EXPECT_ERROR_MENTIONS(load_with(with([](json& j) { j["model"]["byte_fallback"] = true; })), "byte_fallback");
  EXPECT_ERROR_MENTIONS(load_with(with([](json& j) { j["model"]["continuing_subword_prefix"] = "##"; })),
                        "continuing_subword_prefix");
  EXPECT_ERROR_MENTIONS(load_with(with([](json& j) { j["model"]["vocab"]["hello"] = -3; })), "model.vocab");
  EXPECT_ERROR_MENTIONS(load_with(with([](json& j) { j["decoder"] = {{"type", "ByteLevel"}}; j["pre_tokenizer"] = {{"type", "Whitespace"}}; })),
                        "Whitespace");
  EXPECT_ERROR_MENTIONS(load_with(with([](json& j) {
                          j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}};
                        })),
                        "(unclosed");
  EXPECT_ERROR_MENTIONS(load_with(with([](json& j) { j["added_tokens"][0]["id"] = 5; })), "added_tokens");
  // The message names the file.
  EXPECT_ERROR_MENTIONS(load_with(with([](json& j) { j["model"]["type"] = "Unigram"; })), dir + "/tokenizer.json");
}

TEST(TokenizerBpe, LoadRulesPickTheRightFile) {
  TempDir d;
  EXPECT_FALSE(Tokenizer::exists_in(d.path));
  EXPECT_ERROR_MENTIONS(Tokenizer::load(d.path), "tokenizer.model");
  // A sentencepiece-style tokenizer.json (Llama 2): the tokenizer.model next to it is used.
  const std::string sp_dir = d.path + "/llama2";
  train_demo_tokenizer(sp_dir, 400);
  write_file_atomic(sp_dir + "/tokenizer.json",
                    R"({"model": {"type": "BPE", "vocab": {}, "merges": []}, "pre_tokenizer": {"type": "Metaspace"},
                        "decoder": {"type": "Sequence", "decoders": [{"type": "ByteFallback"}]}})");
  EXPECT_TRUE(Tokenizer::exists_in(sp_dir));
  EXPECT_EQ(Tokenizer::load(sp_dir).kind(), Tokenizer::Kind::SentencePiece);
  std::filesystem::remove(sp_dir + "/tokenizer.model");
  EXPECT_ERROR_MENTIONS(Tokenizer::load(sp_dir), "not a byte-level BPE");
  // A path to the tokenizer.json itself.
  const std::string dir = write_tokenizer(d.path + "/bpe", tiny_bpe());
  EXPECT_TRUE(Tokenizer::exists_in(dir));
  auto t = Tokenizer::load(dir + "/tokenizer.json");
  EXPECT_EQ(t.kind(), Tokenizer::Kind::ByteLevelBpe);
  EXPECT_EQ(t.source_dir(), dir);
}

TEST(TokenizerBpe, SpecialIdsAndTemplateComeFromTheConfig) {
  TempDir d;
  auto t0 = Tokenizer::load(write_tokenizer(d.path + "/none", tiny_bpe()));
  EXPECT_EQ(t0.bos_id(), -1);
  EXPECT_EQ(t0.eos_id(), -1);
  EXPECT_EQ(t0.pad_id(), -1);
  EXPECT_FALSE(t0.add_bos());
  EXPECT_EQ(t0.chat_template(), kChatMLTemplate);
  EXPECT_EQ(t0.pre_tokenizer_name(), "gpt2");
  EXPECT_FALSE(t0.add_space_prefix());

  const std::string cfg = R"({"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>", "special": true},
      "add_bos_token": true, "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]})";
  const std::string dir = write_tokenizer(d.path + "/cfg", tiny_bpe(), cfg);
  write_file_atomic(dir + "/special_tokens_map.json", R"({"pad_token": "<|endoftext|>"})");
  auto t = Tokenizer::load(dir);
  EXPECT_EQ(t.bos_id(), t.piece_to_id("<|im_start|>"));
  EXPECT_EQ(t.eos_id(), t.piece_to_id("<|im_end|>"));
  EXPECT_EQ(t.pad_id(), t.piece_to_id("<|endoftext|>"));
  EXPECT_TRUE(t.add_bos());
  EXPECT_EQ(t.chat_template(), "D");
  // Llama 3 style: the post_processor adds the BOS.
  json j = tiny_bpe();
  j["post_processor"] = {{"type", "Sequence"},
                         {"processors",
                          {{{"type", "ByteLevel"}},
                           {{"type", "TemplateProcessing"},
                            {"single", {{{"SpecialToken", {{"id", "<|im_start|>"}, {"type_id", 0}}}},
                                        {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}}}}}};
  EXPECT_TRUE(Tokenizer::load(write_tokenizer(d.path + "/post", j)).add_bos());
}

TEST(TokenizerBpe, SaveThenLoadEncodesIdentically) {
  TempDir d;
  const std::string cfg = R"({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
      "model_max_length": 4096, "chat_template": "{{ x }}", "custom_key": 7})";
  json j = tiny_bpe();
  j["normalizer"] = {{"type", "NFKC"}};
  auto t = Tokenizer::load(write_tokenizer(d.path + "/src", j, cfg));
  const std::string out = d.path + "/out";
  std::filesystem::create_directories(out);
  t.save(out);
  auto u = Tokenizer::load(out);
  EXPECT_EQ(u.kind(), Tokenizer::Kind::ByteLevelBpe);
  for (const auto& s : kMixedTexts) {
    EXPECT_EQ(u.encode(s), t.encode(s)) << s;
    EXPECT_EQ(u.encode(s, false), t.encode(s, false)) << s;
  }
  EXPECT_EQ(t.encode("ﬁ①"), t.encode("fi1"));  // NFKC kept
  EXPECT_EQ(u.vocab_size(), t.vocab_size());
  EXPECT_EQ(u.merges(), t.merges());
  EXPECT_EQ(u.bos_id(), t.bos_id());
  EXPECT_EQ(u.eos_id(), t.eos_id());
  EXPECT_EQ(u.pad_id(), t.pad_id());
  EXPECT_EQ(u.chat_template(), "{{ x }}");
  for (int id = 0; id < t.vocab_size(); ++id) ASSERT_EQ(u.id_to_piece(id), t.id_to_piece(id)) << id;
  const auto written = json::parse(read_file(out + "/tokenizer_config.json"));
  EXPECT_EQ(written["custom_key"], 7);
  EXPECT_EQ(written["model_max_length"], 4096);
  EXPECT_EQ(written["tokenizer_class"], "PreTrainedTokenizerFast");
  EXPECT_EQ(written["added_tokens_decoder"][std::to_string(t.bos_id())]["special"], true);
  EXPECT_EQ(json::parse(read_file(out + "/special_tokens_map.json"))["eos_token"], "<|im_end|>");
}

TEST(TokenizerBpe, FromByteLevelBpeRoundTrip) {
  TempDir d;
  auto t = tiny_tokenizer(d);
  auto v = t.vocabulary();
  ASSERT_EQ(static_cast<int>(v.size()), t.vocab_size());
  EXPECT_EQ(v[static_cast<std::size_t>(t.piece_to_id("<|im_end|>"))].type, TokenType::Control);
  EXPECT_EQ(v[static_cast<std::size_t>(t.piece_to_id("wd"))].type, TokenType::UserDefined);
  EXPECT_EQ(v[static_cast<std::size_t>(t.piece_to_id("hello"))].type, TokenType::Normal);
  const int bos = t.piece_to_id("<|im_start|>"), eos = t.piece_to_id("<|im_end|>"), pad = t.piece_to_id("<|endoftext|>");
  auto u = Tokenizer::from_byte_level_bpe(v, t.merges(), t.pre_tokenizer_name(), bos, eos, pad);
  EXPECT_EQ(u.kind(), Tokenizer::Kind::ByteLevelBpe);
  EXPECT_EQ(u.bos_id(), bos);
  EXPECT_EQ(u.source_dir(), "");
  for (const auto& s : kMixedTexts) EXPECT_EQ(u.encode(s), t.encode(s)) << s;
  EXPECT_EQ(u.decode(u.encode("<|im_start|>hi"), true), "hi");
  EXPECT_ERROR_MENTIONS(Tokenizer::from_byte_level_bpe(v, t.merges(), "gpt5", -1, -1, -1), "llama-bpe");
  auto bad = t.merges();
  bad.push_back("zz q");
  EXPECT_ERROR_MENTIONS(Tokenizer::from_byte_level_bpe(v, bad, "gpt2", -1, -1, -1), "'zz'");
  // Saved and reloaded: same ids, and the added tokens keep their ids.
  const std::string out = d.path + "/saved";
  std::filesystem::create_directories(out);
  u.save(out);
  auto w = Tokenizer::load(out);
  for (const auto& s : kMixedTexts) EXPECT_EQ(w.encode(s), t.encode(s)) << s;
  EXPECT_EQ(w.bos_id(), bos);
  EXPECT_EQ(w.eos_id(), eos);
  EXPECT_EQ(w.pad_id(), pad);
}

TEST(TokenizerBpe, PresetPreTokenizers) {
  // Named presets build the family's pipeline, and a tokenizer.json with it gets the name back.
  TempDir d;
  auto t = tiny_tokenizer(d);
  for (const char* name : {"gpt2", "llama-bpe", "qwen2", "smollm"}) {
    auto u = Tokenizer::from_byte_level_bpe(t.vocabulary(), t.merges(), name, -1, -1, -1);
    EXPECT_EQ(u.pre_tokenizer_name(), name);
    const std::string out = d.path + "/" + name;
    std::filesystem::create_directories(out);
    u.save(out);
    EXPECT_EQ(Tokenizer::load(out).pre_tokenizer_name(), name);
  }
  EXPECT_EQ(Tokenizer::from_byte_level_bpe(t.vocabulary(), t.merges(), "default", -1, -1, -1).pre_tokenizer_name(), "gpt2");
  auto count = [&](const char* name, const std::string& s) {
    return Tokenizer::from_byte_level_bpe(t.vocabulary(), t.merges(), name, -1, -1, -1).encode(s).size();
  };
  // Digits: GPT-2 keeps "4512" one pre-token (45 12), Llama 3 groups by three (45 1 | 2),
  // SmolLM splits every digit.
  EXPECT_EQ(count("gpt2", "4512"), 2u);
  EXPECT_EQ(count("llama-bpe", "4512"), 3u);
  EXPECT_EQ(count("smollm", "4512"), 4u);
  // Qwen2 normalizes to NFC: "e" + combining acute becomes one 2-byte character.
  EXPECT_EQ(count("qwen2", "e\xCC\x81"), 2u);
  EXPECT_EQ(count("gpt2", "e\xCC\x81"), 3u);
}

TEST(TokenizerBpe, IgnoreMergesEmitsWholeWords) {
  // "hello" is in the vocab; with merges that cannot reach it, only ignore_merges finds it.
  json j = tiny_bpe({{"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}});
  j["model"]["merges"] = json::array({"h e"});
  TempDir d;
  auto plain = Tokenizer::load(write_tokenizer(d.path + "/a", j));
  EXPECT_EQ(plain.encode("hello").size(), 4u);  // he l l o
  j["model"]["ignore_merges"] = true;
  auto ignore = Tokenizer::load(write_tokenizer(d.path + "/b", j));
  EXPECT_EQ(ignore.encode("hello"), ids_of(ignore, {"hello"}));
  EXPECT_EQ(ignore.encode("hellohe").size(), 5u);  // not in the vocab: merges (he l l o he)
}

TEST(TokenizerBpe, ConcurrentEncodesAgree) {
  TempDir d;
  auto t = tiny_tokenizer(d);
  std::vector<std::vector<int>> want;
  for (const auto& s : kMixedTexts) want.push_back(t.encode(s));
  std::vector<std::thread> threads;
  std::atomic<int> bad{0};
  for (int k = 0; k < 4; ++k)
    threads.emplace_back([&] {
      for (int round = 0; round < 200; ++round)
        for (std::size_t i = 0; i < kMixedTexts.size(); ++i)
          if (t.encode(kMixedTexts[i]) != want[i]) ++bad;
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
}

TEST(TokenizerBpe, StreamHoldsCharactersSplitOverTokens) {
  TempDir d;
  auto t = tiny_tokenizer(d);
  const auto ids = t.encode("你");  // three byte tokens
  ASSERT_EQ(ids.size(), 3u);
  TextStream ts(t, {});
  EXPECT_EQ(ts.push(ids[0]).text, "");
  EXPECT_EQ(ts.push(ids[1]).text, "");
  EXPECT_EQ(ts.push(ids[2]).text, "你");
  const auto all = t.encode("hello 世界 <|im_end|> 🙂!");
  TextStream s2(t, {});
  std::string out;
  for (int id : all) out += s2.push(id).text;
  out += s2.finish();
  EXPECT_EQ(out, t.decode(all, true));
}

TEST(Tokenizer, FromSentencepieceVocabRoundTrip) {
  const auto& t = demo_tokenizer();
  EXPECT_EQ(t.kind(), Tokenizer::Kind::SentencePiece);
  EXPECT_TRUE(t.merges().empty());
  EXPECT_EQ(t.pre_tokenizer_name(), "");
  auto v = t.vocabulary();
  ASSERT_EQ(static_cast<int>(v.size()), t.vocab_size());
  EXPECT_EQ(v[1].type, TokenType::Control);
  EXPECT_EQ(v[3 + 0x0A].piece, "<0x0A>");
  EXPECT_EQ(v[3 + 0x0A].type, TokenType::Byte);
  EXPECT_EQ(t.token_bytes(3 + 0xE4), "\xE4");
  EXPECT_EQ(t.token_bytes(1), "<|im_start|>");
  auto u = Tokenizer::from_sentencepiece_vocab(v, t.bos_id(), t.eos_id(), 0, t.pad_id(), t.add_space_prefix());
  EXPECT_EQ(u.kind(), Tokenizer::Kind::SentencePiece);
  const std::vector<std::string> samples = {"In the beginning God created the heaven and the earth.",
                                            "床前明月光，疑是地上霜。", "emoji 😀🎉 and ∑∫√", "  two  spaces ",
                                            "<|im_start|>user\nhi<|im_end|>", "tabs\tand\nnew\n\nlines\r\n"};
  for (const auto& s : samples) {
    EXPECT_EQ(u.encode(s), t.encode(s)) << s;
    EXPECT_EQ(u.decode(u.encode(s)), s);
  }
  EXPECT_EQ(u.bos_id(), t.bos_id());
  // Saved and loaded back.
  TempDir d;
  u.save(d.path);
  auto w = Tokenizer::load(d.path);
  for (const auto& s : samples) EXPECT_EQ(w.encode(s), t.encode(s)) << s;
  EXPECT_EQ(w.bos_id(), t.bos_id());
  EXPECT_EQ(w.eos_id(), t.eos_id());
  const auto cfg = nlohmann::json::parse(read_file(d.path + "/tokenizer_config.json"));
  EXPECT_EQ(cfg["bos_token"], "<|im_start|>");
  EXPECT_EQ(cfg["tokenizer_class"], "LlamaTokenizer");
  EXPECT_ERROR_MENTIONS(Tokenizer::from_sentencepiece_vocab(v, 99999, -1, 0, -1, true), "bos");
}

// Re-saves a tokenizer for tests/python/test_tokenizer_json.py (which checks that HF loads
// what save() writes): LLMCTL_RESAVE=SRC:DST[:rebuild] loads SRC, optionally rebuilds it
// through vocabulary()/merges()/pre_tokenizer_name() as a GGUF import would, saves to DST.
TEST(TokenizerBpe, ResaveForPythonTests) {
  const char* env = std::getenv("LLMCTL_RESAVE");
  if (!env) GTEST_SKIP() << "LLMCTL_RESAVE not set";
  std::string spec = env;
  const auto c1 = spec.find(':'), c2 = spec.find(':', c1 + 1);
  const std::string src = spec.substr(0, c1), dst = spec.substr(c1 + 1, c2 == std::string::npos ? c2 : c2 - c1 - 1);
  auto t = Tokenizer::load(src);
  std::filesystem::create_directories(dst);
  if (c2 != std::string::npos) {
    auto u = Tokenizer::from_byte_level_bpe(t.vocabulary(), t.merges(), t.pre_tokenizer_name(), t.bos_id(),
                                            t.eos_id(), t.pad_id());
    u.save(dst);
  } else {
    t.save(dst);
  }
}

// Encode throughput for tools/bench/tokenizer_throughput.py (not a test):
// LLMCTL_TOKENIZER_BENCH=DIR|FILE|THREADS encodes every line of FILE (its "text" field for
// JSON lines) twice on THREADS threads that live through both passes (the per-thread word
// caches start empty in the first, "cold", pass) and prints one LLMCTL_BENCH JSON line.
TEST(TokenizerBpe, ThroughputForBenchScript) {
  const char* env = std::getenv("LLMCTL_TOKENIZER_BENCH");
  if (!env) GTEST_SKIP() << "LLMCTL_TOKENIZER_BENCH not set";
  const std::string spec = env;
  const auto a = spec.find('|'), b = spec.find('|', a + 1);
  ASSERT_NE(b, std::string::npos) << "LLMCTL_TOKENIZER_BENCH=DIR|FILE|THREADS";
  const auto t = Tokenizer::load(spec.substr(0, a));
  const std::string file = spec.substr(a + 1, b - a - 1);
  const int threads = std::max(1, std::stoi(spec.substr(b + 1)));
  std::vector<std::string> docs;
  std::size_t bytes = 0;
  {
    std::istringstream in(read_file(file));
    for (std::string line; std::getline(in, line);) {
      if (!line.empty() && line[0] == '{') {
        auto j = nlohmann::json::parse(line, nullptr, false);
        if (!j.is_discarded() && j.contains("text") && j["text"].is_string()) line = j["text"].get<std::string>();
      }
      bytes += line.size();
      docs.push_back(std::move(line));
    }
  }
  std::atomic<int> arrived{0};
  std::vector<double> secs(2 * static_cast<std::size_t>(threads));
  std::atomic<std::size_t> tokens{0};
  auto worker = [&](int k) {
    for (int pass = 0; pass < 2; ++pass) {
      // Both passes start together on every thread.
      arrived.fetch_add(1);
      while (arrived.load() < threads * (pass + 1)) std::this_thread::yield();
      const auto t0 = std::chrono::steady_clock::now();
      std::size_t n = 0;
      for (std::size_t i = static_cast<std::size_t>(k); i < docs.size(); i += static_cast<std::size_t>(threads))
        n += t.encode(docs[i]).size();
      secs[static_cast<std::size_t>(2 * k + pass)] =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (pass == 0) tokens += n;
    }
  };
  std::vector<std::thread> pool;
  for (int k = 0; k < threads; ++k) pool.emplace_back(worker, k);
  for (auto& th : pool) th.join();
  double cold = 0, warm = 0;
  for (int k = 0; k < threads; ++k) {
    cold = std::max(cold, secs[static_cast<std::size_t>(2 * k)]);
    warm = std::max(warm, secs[static_cast<std::size_t>(2 * k + 1)]);
  }
  std::printf("LLMCTL_BENCH {\"threads\": %d, \"docs\": %zu, \"bytes\": %zu, \"tokens\": %zu, \"cold_s\": %.4f, \"warm_s\": %.4f}\n",
              threads, docs.size(), bytes, tokens.load(), cold, warm);
}
