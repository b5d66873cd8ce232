#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "llmctl/eval/evaluate.h"
#include "llmctl/tokenizer/trainer.h"
#include "llmctl/util/fs.h"
#include "test_helpers.h"

using namespace llmctl;

TEST(Eval, ScoreIdsAgreesWithLogSoftmax) {
  torch::manual_seed(7);
  CausalLM m(small_config(30, 16, 2, 8));
  std::vector<int> ids = {3, 1, 4, 1, 5, 9, 2, 6};
  auto s = score_ids(m, ids);
  ASSERT_EQ(s.logprobs.size(), ids.size());
  EXPECT_TRUE(std::isnan(s.logprobs[0]));
  torch::NoGradGuard ng;
  auto lp = torch::log_softmax(m->forward(torch::tensor({3, 1, 4, 1, 5, 9, 2, 6}, torch::kInt64).unsqueeze(0)), -1)[0];
  for (std::size_t i = 1; i < ids.size(); ++i) EXPECT_NEAR(s.logprobs[i], lp[i - 1][ids[i]].item<double>(), 1e-6);
  for (std::size_t i = 0; i < ids.size(); ++i) EXPECT_EQ(s.argmax[i], lp[i].argmax().item<int64_t>());
}

// Perplexity over a file equals exp(mean NLL) computed by hand from per-window scores of
// the same [bos] text [eos] stream cut into seq_len windows.
TEST(Eval, PerplexityIsExpOfMeanWindowNll) {
  TempDir dir;
  train_demo_tokenizer(dir.path + "/tok", 600);
  auto tok = Tokenizer::load(dir.path + "/tok");

  write_file_atomic(dir.path + "/d.jsonl", "{\"text\": \"In the beginning was the Word.\"}\nnot json\n{\"text\": \"天地玄黄，宇宙洪荒。\"}\n");
  torch::manual_seed(8);
  CausalLM m(small_config(tok.vocab_size(), 16, 2, 8));
  PerplexityOptions po;
  po.seq_len = 8;
  po.batch_size = 3;
  po.progress = false;
  auto r = perplexity(m, tok, {dir.path + "/d.jsonl"}, po);
  EXPECT_EQ(r.malformed, 1);
  EXPECT_EQ(r.documents, 2);

  std::vector<int> stream;
  for (const char* text : {"In the beginning was the Word.", "天地玄黄，宇宙洪荒。"}) {
    stream.push_back(tok.bos_id());
    auto ids = tok.encode(text, false);
    stream.insert(stream.end(), ids.begin(), ids.end());
    stream.push_back(tok.eos_id());
  }
  double nll = 0;
  std::int64_t n = 0;
  for (std::size_t start = 0; start + 1 < stream.size(); start += 8) {
    std::vector<int> w(stream.begin() + start, stream.begin() + std::min(stream.size(), start + 8));
    if (w.size() < 2) break;
    auto s = score_ids(m, w);
    for (std::size_t i = 1; i < w.size(); ++i, ++n) nll -= s.logprobs[i];
  }
  EXPECT_EQ(r.predicted, n);
  EXPECT_NEAR(r.perplexity(), std::exp(nll / n), 1e-3 * std::exp(nll / n));
}
