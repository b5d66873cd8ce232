#include <gtest/gtest.h>

#include "llmctl/tokenizer/chat_format.h"
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
