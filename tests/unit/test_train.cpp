// Training: SFT masks, pretrain packing, the LR schedule, resume equality, NaN stop and
// malformed data. Tiny models on the CPU; every run takes well under a second per step.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "llmctl/data/dataset.h"
#include "llmctl/tokenizer/chat_format.h"
#include "llmctl/train/schedule.h"
#include "llmctl/train/trainer.h"
#include "llmctl/util/error.h"
#include "test_helpers.h"

namespace fs = std::filesystem;
using namespace llmctl;

namespace {

// One tokenizer for the whole file (training one takes a second or two).
const std::string& shared_tokenizer() {
  static TempDir dir;
  static bool trained = false;
  if (!trained) {
    train_demo_tokenizer(dir.path + "/tok", 600);
    trained = true;
  }
  static const std::string path = dir.path + "/tok";
  return path;
}

std::string write_text(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
  return path;
}

// A config file for a 2-layer, 32-wide model over the shared tokenizer's vocabulary.
std::string tiny_config(const std::string& dir) {
  auto c = small_config(600, 32, 4, 8);
  c.max_position_embeddings = 128;
  return write_text(dir + "/tiny.json", c.to_json().dump());
}

TrainOptions tiny_run(const std::string& dir, const std::string& out) {
  TrainOptions o;
  o.mode = SampleMode::Pretrain;
  o.data = {source_dir() + "/dataset/samples/pretrain_sample.jsonl"};
  o.tokenizer = shared_tokenizer();
  o.model_config = tiny_config(dir);
  o.out_dir = out;
  o.seq_len = 16;
  o.batch_size = 4;
  o.max_steps = 6;
  o.lr = 3e-3;
  o.warmup_steps = 2;
  o.dtype = "f32";
  o.threads = 1;
  o.progress = false;
  o.keep_last = 0;
  return o;
}

std::vector<nlohmann::json> read_metrics(const std::string& path) {
  std::vector<nlohmann::json> v;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) v.push_back(nlohmann::json::parse(line));
  return v;
}

}  // namespace

// The training targets of a rendered sample, decoded in order.
static std::string learned_text(const Tokenizer& tok, const std::vector<std::int32_t>& ids,
                         const std::vector<std::uint8_t>& mask) {
  std::vector<int> learned;
  for (std::size_t i = 0; i < ids.size(); ++i)
    if (mask[i]) learned.push_back(ids[i]);
  return tok.decode(learned);
}

TEST(SftMask, OnlyAssistantContentAndItsImEndAreTargets) {
  auto tok = Tokenizer::load(shared_tokenizer());
  std::vector<Message> conv = {{"system", "You are helpful."},
                               {"user", "Say amen."},
                               {"assistant", "Amen."},
                               {"user", "Again?"},
                               {"assistant", "Amen and amen."}};
  std::vector<std::int32_t> ids;
  std::vector<std::uint8_t> mask;
  render_sft_sample(tok, conv, 1000, ids, mask);
  ASSERT_EQ(ids.size(), mask.size());
  // The whole sample is exactly the ChatML rendering.
  EXPECT_EQ(tok.decode(std::vector<int>(ids.begin(), ids.end())), Tokenizer::render_chatml(conv, false));
  // The masked tokens, in order, spell the two answers each closed by <|im_end|>.
  EXPECT_EQ(learned_text(tok, ids, mask), "Amen.<|im_end|>Amen and amen.<|im_end|>");
  // Every target run starts right after "<|im_start|>assistant\n" and ends on <|im_end|>.
  const auto header = tok.encode("assistant\n", false);
  for (std::size_t i = 1; i < ids.size(); ++i) {
    if (mask[i] && !mask[i - 1]) {
      ASSERT_GE(i, header.size() + 1);
      EXPECT_EQ(ids[i - header.size() - 1], tok.bos_id());
      EXPECT_TRUE(std::equal(header.begin(), header.end(), ids.begin() + static_cast<long>(i - header.size())));
    }
    if (!mask[i] && mask[i - 1]) {
      EXPECT_EQ(ids[i - 1], tok.eos_id());
    }
  }
  // The generation prompt of the first turn is the training prefix up to the answer.
  auto prompt = render_generation_prompt(tok, {conv[0], conv[1]});
  ASSERT_LT(prompt.size(), ids.size());
  EXPECT_TRUE(std::equal(prompt.begin(), prompt.end(), ids.begin()));
  EXPECT_EQ(mask[prompt.size()], 1);
  EXPECT_EQ(mask[prompt.size() - 1], 0);
}

TEST(SftMask, RightTruncationKeepsThePrefix) {
  auto tok = Tokenizer::load(shared_tokenizer());
  std::vector<Message> conv = {{"user", "Tell me a long story."}, {"assistant", std::string(400, 'a')}};
  std::vector<std::int32_t> full, cut;
  std::vector<std::uint8_t> mfull, mcut;
  render_sft_sample(tok, conv, 100000, full, mfull);
  render_sft_sample(tok, conv, 20, cut, mcut);
  ASSERT_EQ(cut.size(), 20u);
  EXPECT_TRUE(std::equal(cut.begin(), cut.end(), full.begin()));
  EXPECT_TRUE(std::equal(mcut.begin(), mcut.end(), mfull.begin()));
}

// The shared tokenizer plus Llama 3's header and end-of-turn tokens, with Llama 3's template.
static Tokenizer llama3_tokenizer() {
  auto base = Tokenizer::load(shared_tokenizer());
  auto vocab = base.vocabulary();
  for (const char* s : {"<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"})
    vocab.push_back({s, 0.0f, TokenType::Control});
  const int bos = static_cast<int>(vocab.size()) - 4, eot = static_cast<int>(vocab.size()) - 1;
  auto tok = Tokenizer::from_sentencepiece_vocab(vocab, bos, eot, base.piece_to_id("<unk>") >= 0 ? base.piece_to_id("<unk>") : base.pad_id(), base.pad_id(), false);
  tok.set_chat_template("{{ bos_token }}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
                        "{{ message['content'] | trim }}<|eot_id|>");
  return tok;
}

TEST(SftMask, FollowsTheTokenizersChatFormat) {
  auto tok = llama3_tokenizer();
  std::vector<Message> conv = {{"user", "Say amen."}, {"assistant", " Amen. "}, {"user", "Again?"},
                               {"assistant", "Amen and amen."}};
  std::vector<std::int32_t> ids;
  std::vector<std::uint8_t> mask;
  render_sft_sample(tok, conv, 1000, ids, mask);
  ASSERT_EQ(ids.size(), mask.size());
  EXPECT_EQ(tok.decode(std::vector<int>(ids.begin(), ids.end())), render_chat(conv, ChatFormat::Llama3, false));
  EXPECT_EQ(ids[0], tok.piece_to_id("<|begin_of_text|>"));
  EXPECT_EQ(learned_text(tok, ids, mask), "Amen.<|eot_id|>Amen and amen.<|eot_id|>");
  auto prompt = render_generation_prompt(tok, {conv[0]});
  EXPECT_EQ(tok.decode(prompt), render_chat({conv[0]}, ChatFormat::Llama3, true));
  EXPECT_TRUE(std::equal(prompt.begin(), prompt.end(), ids.begin()));
  EXPECT_EQ(mask[prompt.size()], 1);
}

TEST(SftMask, ATokenizerWithoutTheEndOfTurnTokenIsRefused) {
  TempDir dir;
  auto tok = Tokenizer::load(shared_tokenizer());
  tok.set_chat_template("<|start_header_id|>{{ role }}<|end_header_id|>");  // Llama 3, but no <|eot_id|>
  const auto file = write_text(dir.path + "/sft.jsonl",
                               "{\"conversations\": [{\"role\": \"user\", \"content\": \"hi\"}, "
                               "{\"role\": \"assistant\", \"content\": \"hello\"}]}\n");
  EXPECT_ERROR_MENTIONS(load_or_tokenize({file}, tok, SampleMode::Sft, 64, dir.path + "/cache", 1, false),
                        "<|eot_id|>");
}

TEST(Packing, WindowsOverlapByOneTokenAndFollowTheDocuments) {
  TempDir dir;
  auto tok = Tokenizer::load(shared_tokenizer());
  const auto file = write_text(dir.path + "/p.jsonl",
                               "{\"text\": \"In the beginning God created the heaven and the earth.\"}\n"
                               "{\"text\": \"And the earth was without form, and void.\"}\n"
                               "{\"text\": \"And God said, Let there be light: and there was light.\"}\n");
  const std::int64_t L = 8;
  auto d = load_or_tokenize({file}, tok, SampleMode::Pretrain, L, dir.path + "/cache", 2, false);
  // The stream is [bos] doc [eos] for each document in file order.
  std::vector<std::int32_t> expect;
  for (const char* t : {"In the beginning God created the heaven and the earth.",
                        "And the earth was without form, and void.",
                        "And God said, Let there be light: and there was light."}) {
    expect.push_back(tok.bos_id());
    for (int id : tok.encode(t, false)) expect.push_back(id);
    expect.push_back(tok.eos_id());
  }
  EXPECT_EQ(d.tokens, expect);
  EXPECT_EQ(d.documents, 3u);
  // Windows of L + 1 starting every L tokens: every token but the first is a target
  // exactly once; the tail shorter than a window is dropped.
  ASSERT_EQ(d.size(), (expect.size() - 1) / L);
  for (std::size_t i = 0; i < d.size(); ++i) {
    EXPECT_EQ(d.begin[i], i * L);
    EXPECT_EQ(d.length[i], L + 1);
  }
  // Cached: the second call reads the same samples back.
  auto again = load_or_tokenize({file}, tok, SampleMode::Pretrain, L, dir.path + "/cache", 1, false);
  EXPECT_EQ(again.tokens, d.tokens);
  EXPECT_EQ(again.begin, d.begin);
  EXPECT_EQ(fs::directory_iterator(dir.path + "/cache") != fs::directory_iterator(), true);
}

TEST(Data, MalformedLinesAreCountedNotFatal) {
  TempDir dir;
  auto tok = Tokenizer::load(shared_tokenizer());
  const auto file = write_text(dir.path + "/bad.jsonl",
                               "{\"conversations\": [{\"role\": \"user\", \"content\": \"hi\"}, "
                               "{\"role\": \"assistant\", \"content\": \"hello\"}]}\n"
                               "{not json\n"
                               "{\"conversations\": \"wrong type\"}\n"
                               "\n"
                               "{\"conversations\": [{\"role\": \"user\", \"content\": \"bye\"}, "
                               "{\"role\": \"assistant\", \"content\": \"farewell\"}]}\n");
  auto d = load_or_tokenize({file}, tok, SampleMode::Sft, 64, dir.path + "/cache", 1, false);
  EXPECT_EQ(d.size(), 2u);
  EXPECT_EQ(d.malformed, 2u);
  // Nothing usable at all is one clear error.
  const auto empty = write_text(dir.path + "/empty.jsonl", "{oops\n");
  EXPECT_ERROR_MENTIONS(load_or_tokenize({empty}, tok, SampleMode::Sft, 64, dir.path + "/cache", 1, false),
                        "no training samples");
}

TEST(Schedule, WarmupCosineAndFloor) {
  LrSchedule s{1e-3, 0.1, 10, 110};
  EXPECT_NEAR(s.at(0), 1e-4, 1e-12);    // warmup starts at peak / warmup
  EXPECT_NEAR(s.at(9), 1e-3, 1e-12);    // and reaches the peak
  EXPECT_NEAR(s.at(10), 1e-3, 1e-12);   // cosine starts at the peak
  EXPECT_NEAR(s.at(60), 0.55e-3, 1e-12);  // half-way: midpoint of peak and floor
  EXPECT_NEAR(s.at(110), 1e-4, 1e-12);  // the floor
  EXPECT_NEAR(s.at(500), 1e-4, 1e-12);  // and it stays there
  for (int i = 11; i < 110; ++i) EXPECT_LT(s.at(i), s.at(i - 1));
  // Without warmup it is minimind's formula lr * (0.1 + 0.45 * (1 + cos(pi t / T))).
  LrSchedule m{5e-4, 0.1, 0, 1000};
  for (int t : {0, 1, 250, 500, 999})
    EXPECT_NEAR(m.at(t), 5e-4 * (0.1 + 0.45 * (1 + std::cos(M_PI * t / 1000.0))), 1e-15);
}

TEST(Train, LossFallsAndTheRunDirIsComplete) {
  TempDir dir;
  auto o = tiny_run(dir.path, dir.path + "/run");
  o.max_steps = 12;
  o.save_every = 5;
  o.keep_last = 1;
  auto r = train(o);
  auto m = read_metrics(o.out_dir + "/metrics.jsonl");
  ASSERT_EQ(m.size(), 12u);
  EXPECT_LT(m.back()["loss"].get<double>(), m.front()["loss"].get<double>());
  EXPECT_EQ(r.steps, 12);
  for (const char* f : {"final/config.json", "final/model.safetensors", "final/tokenizer.model", "loss_curve.svg",
                        "train_config.json", "checkpoint-12/optimizer.pt", "checkpoint-12/trainer_state.json"})
    EXPECT_TRUE(fs::exists(o.out_dir + "/" + f)) << f;
  // --keep-last 1: the step-5 and step-10 checkpoints are gone.
  EXPECT_FALSE(fs::exists(o.out_dir + "/checkpoint-5"));
  EXPECT_FALSE(fs::exists(o.out_dir + "/checkpoint-10"));
  EXPECT_FALSE(fs::exists(o.out_dir + "/final/optimizer.pt"));
}

TEST(Train, ResumeMatchesAnUninterruptedRunStepForStep) {
  TempDir dir;
  // Uninterrupted: 6 steps, checkpoints every 3.
  auto full = tiny_run(dir.path, dir.path + "/full");
  full.save_every = 3;
  train(full);
  const auto want = read_metrics(full.out_dir + "/metrics.jsonl");
  ASSERT_EQ(want.size(), 6u);

  // "Killed" after step 3: a run dir holding only what existed at that moment.
  const std::string cut = dir.path + "/cut";
  fs::create_directories(cut);
  fs::copy(full.out_dir + "/checkpoint-3", cut + "/checkpoint-3", fs::copy_options::recursive);
  fs::copy(full.out_dir + "/cache", cut + "/cache", fs::copy_options::recursive);
  {
    std::ofstream m(cut + "/metrics.jsonl");
    for (int i = 0; i < 4; ++i) m << want[i].dump() << "\n";  // plus a line past the checkpoint
  }
  auto resumed = tiny_run(dir.path, cut);
  resumed.save_every = 3;
  resumed.resume = true;
  train(resumed);
  const auto got = read_metrics(cut + "/metrics.jsonl");
  ASSERT_EQ(got.size(), 6u);
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(got[i]["step"], want[i]["step"]);
    EXPECT_DOUBLE_EQ(got[i]["lr"].get<double>(), want[i]["lr"].get<double>());
    EXPECT_NEAR(got[i]["loss"].get<double>(), want[i]["loss"].get<double>(), 1e-6) << "step " << i + 1;
  }
  // Resuming with another global batch would change the data order: refused.
  auto other = tiny_run(dir.path, cut);
  other.resume = true;
  other.batch_size = 2;
  EXPECT_ERROR_MENTIONS(train(other), "global batch");
}

TEST(Train, NonFiniteLossStopsAndNamesTheLastGoodCheckpoint) {
  TempDir dir;
  auto o = tiny_run(dir.path, dir.path + "/run");
  o.max_steps = 20;
  o.save_every = 1;
  o.warmup_steps = 0;
  o.grad_clip = 1e30;
  o.lr = 1e25;  // the first update blows the weights up; the next loss is not finite
  try {
    train(o);
    FAIL() << "expected a non-finite loss error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("training stopped"), std::string::npos) << msg;
    EXPECT_NE(msg.find("checkpoint-1"), std::string::npos) << msg;
  }
  EXPECT_TRUE(fs::exists(o.out_dir + "/checkpoint-1/model.safetensors"));
  EXPECT_FALSE(fs::exists(o.out_dir + "/final"));
}

TEST(Train, BadOptionsAreClearErrors) {
  TempDir dir;
  auto o = tiny_run(dir.path, dir.path + "/run");
  o.seq_len = 100000;
  EXPECT_ERROR_MENTIONS(train(o), "max_position_embeddings");
  o = tiny_run(dir.path, dir.path + "/run2");
  o.resume = true;
  EXPECT_ERROR_MENTIONS(train(o), "no checkpoint");
  o = tiny_run(dir.path, dir.path + "/run3");
  o.tokenizer.clear();
  EXPECT_ERROR_MENTIONS(train(o), "--tokenizer");
}

TEST(Train, EpochOrderIsASeededPermutation) {
  auto a = epoch_order(100, 7, 0), b = epoch_order(100, 7, 0), c = epoch_order(100, 7, 1);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  std::sort(c.begin(), c.end());
  for (std::uint64_t i = 0; i < 100; ++i) EXPECT_EQ(c[i], i);
}
