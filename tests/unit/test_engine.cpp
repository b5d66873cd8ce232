// Engine correctness: block manager bookkeeping and prefix cache, scheduler preemption,
// and the end-to-end contract: greedy engine output == argmax of the plain model forward.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <random>

#include "llmctl/engine/block_manager.h"
#include "llmctl/engine/engine.h"
#include "llmctl/engine/scheduler.h"
#include "llmctl/io/model_dir.h"
#include "llmctl/serve/async_engine.h"
#include "llmctl/util/error.h"
#include "test_helpers.h"

using namespace llmctl;

namespace {

Sequence make_seq(std::int64_t id, std::vector<int> tokens) {
  Sequence s;
  s.id = id;
  s.tokens = std::move(tokens);
  s.num_prompt_tokens = static_cast<int>(s.tokens.size());
  return s;
}

std::vector<int> iota_tokens(int n, int start = 0) {
  std::vector<int> v(n);
  for (int i = 0; i < n; ++i) v[i] = start + i;
  return v;
}

// A random model with decisive logits (large init) saved as a model dir.
struct TinyModel {
  TempDir dir;
  ModelConfig cfg;
  CausalLM model{nullptr};
  explicit TinyModel(const std::string& type = "llama", int seed = 3) {
    cfg = small_config(97, 64, 4, 16, type);
    cfg.max_position_embeddings = 512;
    cfg.initializer_range = 0.3;
    cfg.eos_token_ids = {};  // run to max_new_tokens unless a test says otherwise
    torch::manual_seed(seed);
    model = CausalLM(cfg);
    save_model(model, dir.path);
    model->eval();
  }
  // Greedy continuation by repeated full forwards of the plain model.
  std::vector<int> greedy(std::vector<int> ids, int n) {
    torch::NoGradGuard ng;
    std::vector<int> out;
    for (int i = 0; i < n; ++i) {
      auto t = torch::tensor(std::vector<std::int64_t>(ids.begin(), ids.end())).unsqueeze(0);
      const int next = model->forward(t)[0][-1].argmax().item<int>();
      out.push_back(next);
      ids.push_back(next);
    }
    return out;
  }
};

SamplingParams greedy_params(int max_new) {
  SamplingParams p;
  p.temperature = 0;
  p.max_new_tokens = max_new;
  return p;
}

}  // namespace

TEST(BlockManager, AllocatesReleasesAndFindsCachedPrefixes) {
  BlockManager bm(8, 4);
  auto a = make_seq(1, iota_tokens(10));
  EXPECT_EQ(bm.acquire_prefix(a), 0);
  ASSERT_TRUE(bm.allocate_slots(a, 10));
  EXPECT_EQ(a.block_table.size(), 3u);
  EXPECT_EQ(bm.num_free_blocks(), 5);
  a.num_computed_tokens = 10;
  bm.cache_full_blocks(a);
  EXPECT_EQ(a.num_hashed_blocks, 2);  // the third block is partial
  EXPECT_TRUE(bm.check_invariants());

  // A second sequence sharing the first 9 tokens finds the two full blocks and shares them.
  auto b = make_seq(2, iota_tokens(9));
  b.tokens.push_back(50);
  b.tokens.push_back(51);
  EXPECT_EQ(bm.acquire_prefix(b), 8);
  EXPECT_EQ(b.block_table[0], a.block_table[0]);
  EXPECT_EQ(b.block_table[1], a.block_table[1]);
  ASSERT_TRUE(bm.allocate_slots(b, 3));
  EXPECT_EQ(bm.num_free_blocks(), 4);
  bm.release(a);
  EXPECT_EQ(bm.num_free_blocks(), 5);  // shared blocks still held by b
  bm.release(b);
  EXPECT_EQ(bm.num_free_blocks(), 8);
  EXPECT_TRUE(bm.check_invariants());

  // Released blocks stay cached: the same prefix hits again.
  auto c = make_seq(3, iota_tokens(12));
  EXPECT_EQ(bm.acquire_prefix(c), 8);
  // A whole-prompt hit still leaves one token to compute.
  auto d = make_seq(4, iota_tokens(8));
  EXPECT_EQ(bm.acquire_prefix(d), 4);
  bm.release(c);
  bm.release(d);
  EXPECT_TRUE(bm.check_invariants());
}

TEST(BlockManager, HashCollisionIsCheckedAgainstTokensAndLruEvicts) {
  BlockManager bm(3, 2);
  auto a = make_seq(1, {1, 2, 3, 4, 5});
  ASSERT_TRUE(bm.allocate_slots(a, 5));
  a.num_computed_tokens = 5;
  bm.cache_full_blocks(a);
  bm.release(a);
  // Different tokens: no hit.
  auto b = make_seq(2, {1, 9, 3, 4, 5});
  EXPECT_EQ(bm.acquire_prefix(b), 0);
  // Filling the pool evicts cached blocks, least recently freed first (a's tail first).
  ASSERT_TRUE(bm.allocate_slots(b, 2));
  auto c = make_seq(3, {1, 2, 3, 4, 7});
  EXPECT_EQ(bm.acquire_prefix(c), 4);  // a's first two blocks survived
  EXPECT_EQ(bm.stats().evictions, 0);   // the taken block was a's partial, unhashed tail
  bm.release(b);
  bm.release(c);
  auto d = make_seq(4, {8, 8, 8, 8, 8, 8});
  ASSERT_TRUE(bm.allocate_slots(d, 6));
  EXPECT_EQ(bm.stats().evictions, 2);
  EXPECT_FALSE(bm.allocate_slots(d, 8));  // beyond the pool: refused, nothing changed
  EXPECT_EQ(d.block_table.size(), 3u);
  EXPECT_TRUE(bm.check_invariants());
}

TEST(Scheduler, ChunksPrefillUnderTheBudgetAndPreemptsTheNewest) {
  BlockManager bm(6, 4, false);
  Scheduler sched({8, 10}, bm);
  auto a = make_seq(1, iota_tokens(14));
  auto b = make_seq(2, iota_tokens(3));
  sched.add(&a);
  sched.add(&b);
  auto batch = sched.schedule();
  ASSERT_EQ(batch.size(), 1u);  // a's first chunk takes the whole budget
  EXPECT_EQ(batch[0].num_new, 10);
  a.num_computed_tokens += 10;
  batch = sched.schedule();
  ASSERT_EQ(batch.size(), 2u);  // a's remaining 4, then b's 3
  EXPECT_EQ(batch[0].num_new, 4);
  EXPECT_EQ(batch[1].num_new, 3);
  a.num_computed_tokens += 4;
  b.num_computed_tokens += 3;
  // Both decode until the pool (6 blocks of 4) runs out; a reaches 22 tokens (6 blocks).
  for (int step = 0; step < 8; ++step) {
    a.tokens.push_back(1);
    if (b.status == SeqStatus::Running) b.tokens.push_back(1);
    batch = sched.schedule();
    ASSERT_FALSE(batch.empty());
    for (auto& s : batch) s.seq->num_computed_tokens += s.num_new;
    EXPECT_TRUE(bm.check_invariants());
  }
  EXPECT_GT(sched.num_preemptions(), 0);
  EXPECT_EQ(a.status, SeqStatus::Running);  // the oldest keeps going
  sched.remove(&a);
  sched.remove(&b);
  EXPECT_EQ(bm.num_free_blocks(), 6);
}

// A waiting request is admitted only while every running sequence keeps a free block to
// grow into: otherwise it would take the last blocks and be preempted at the next
// block boundary, its prefill wasted.
TEST(Scheduler, AdmissionLeavesEachRunningSequenceABlockToGrowInto) {
  BlockManager bm(4, 4, false);
  Scheduler sched({8, 64}, bm);
  auto a = make_seq(1, iota_tokens(8));  // 2 blocks of 4
  auto b = make_seq(2, iota_tokens(8));  // 2 more would leave a no block to grow into
  sched.add(&a);
  sched.add(&b);
  auto batch = sched.schedule();
  ASSERT_EQ(batch.size(), 1u);
  EXPECT_EQ(batch[0].seq, &a);
  EXPECT_EQ(b.status, SeqStatus::Waiting);
  a.num_computed_tokens += 8;
  sched.remove(&a);  // a finishes: b runs with the whole pool
  batch = sched.schedule();
  ASSERT_EQ(batch.size(), 1u);
  EXPECT_EQ(batch[0].seq, &b);
  // One block more: a keeps one after b's admission, so both start together.
  BlockManager bm2(5, 4, false);
  Scheduler sched2({8, 64}, bm2);
  auto c = make_seq(3, iota_tokens(8)), d = make_seq(4, iota_tokens(8));
  sched2.add(&c);
  sched2.add(&d);
  EXPECT_EQ(sched2.schedule().size(), 2u);
  sched.remove(&b);
  sched2.remove(&c);
  sched2.remove(&d);
  EXPECT_EQ(bm.num_free_blocks(), 4);
  EXPECT_EQ(bm2.num_free_blocks(), 5);
}

TEST(Engine, GreedyBatchEqualsModelArgmaxAndEachPromptAlone) {
  TinyModel tm;
  EngineConfig ec;
  ec.block_size = 4;
  ec.num_blocks = 64;
  ec.max_num_batched_tokens = 16;  // forces chunked prefill mixed with decodes
  std::vector<std::vector<int>> prompts = {{5, 6, 7}, iota_tokens(21, 10), {42}, iota_tokens(9, 60)};
  const int n_new = 12;
  Engine batched(tm.dir.path, ec);
  batched.touch_kv_cache();  // as bench does: faulting the pool in changes nothing
  auto outs = batched.generate(prompts, greedy_params(n_new));
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    const auto expected = tm.greedy(prompts[i], n_new);
    EXPECT_EQ(outs[i].output_token_ids, expected) << "prompt " << i;
    EXPECT_EQ(outs[i].finish_reason, "length");
    Engine alone(tm.dir.path, ec);
    EXPECT_EQ(alone.generate({prompts[i]}, greedy_params(n_new))[0].output_token_ids, expected);
  }
  EXPECT_EQ(batched.num_free_blocks(), batched.num_blocks());
}

// The same batch on a GPU (CUDA paged attention, chunked prefill mixed with decodes): the
// tokens of the plain model's argmax, run on the GPU too (torch ops, no paged cache).
TEST(EngineCuda, GreedyBatchEqualsModelArgmax) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU on this machine";
  TinyModel tm;
  auto plain = load_model(tm.dir.path, torch::kCUDA, torch::kFloat32);
  plain->eval();
  auto greedy_on_gpu = [&](std::vector<int> ids, int n) {
    torch::NoGradGuard ng;
    std::vector<int> out;
    for (int i = 0; i < n; ++i) {
      const auto t = torch::tensor(std::vector<std::int64_t>(ids.begin(), ids.end())).unsqueeze(0).cuda();
      out.push_back(plain->forward(t)[0][-1].argmax().item<int>());
      ids.push_back(out.back());
    }
    return out;
  };
  EngineConfig ec;
  ec.device = "cuda";
  ec.block_size = 4;
  ec.num_blocks = 64;
  ec.max_num_batched_tokens = 16;
  std::vector<std::vector<int>> prompts = {{5, 6, 7}, iota_tokens(21, 10), {42}, iota_tokens(9, 60)};
  const int n_new = 12;
  Engine engine(tm.dir.path, ec);
  const auto outs = engine.generate(prompts, greedy_params(n_new));
  for (std::size_t i = 0; i < prompts.size(); ++i)
    EXPECT_EQ(outs[i].output_token_ids, greedy_on_gpu(prompts[i], n_new)) << "prompt " << i;
  EXPECT_EQ(engine.num_free_blocks(), engine.num_blocks());
}

TEST(Engine, QwenFamiliesMatchTheirPlainForward) {
  for (const std::string type : {"qwen2", "qwen3"}) {
    TinyModel tm(type, 5);
    EngineConfig ec;
    ec.block_size = 8;
    ec.num_blocks = 16;
    Engine e(tm.dir.path, ec);
    const auto prompt = iota_tokens(11, 3);
    EXPECT_EQ(e.generate({prompt}, greedy_params(10))[0].output_token_ids, tm.greedy(prompt, 10)) << type;
  }
}

// Two engines on one model (blocks of 4 tokens), recording every logits row they sample
// from: `warm` gets earlier requests whose blocks it caches, `cold` does not.
struct WarmAndCold {
  TinyModel tm;
  static EngineConfig config() {
    EngineConfig ec;
    ec.block_size = 4;
    ec.num_blocks = 64;
    return ec;
  }
  Engine warm{tm.dir.path, config()}, cold{tm.dir.path, config()};
  std::vector<std::vector<float>> warm_logits, cold_logits;
  WarmAndCold() {
    warm.set_logits_observer([this](std::int64_t, const float* l, int v) { warm_logits.emplace_back(l, l + v); });
    cold.set_logits_observer([this](std::int64_t, const float* l, int v) { cold_logits.emplace_back(l, l + v); });
  }
};

TEST(Engine, PromptPrefixHitIsBitIdenticalToAColdRun) {
  WarmAndCold e;
  const auto system = iota_tokens(22, 1);  // a shared "system prompt": 5 full blocks + 2
  e.warm.generate({system}, greedy_params(1));
  auto prompt = system;
  for (int t : {80, 81, 82, 83, 84, 85, 86}) prompt.push_back(t);
  e.warm_logits.clear();
  auto hit = e.warm.generate({prompt}, greedy_params(4))[0];
  EXPECT_EQ(hit.num_cached_prompt_tokens, 20);
  auto ref = e.cold.generate({prompt}, greedy_params(4))[0];
  EXPECT_EQ(ref.num_cached_prompt_tokens, 0);
  EXPECT_EQ(hit.output_token_ids, ref.output_token_ids);
  EXPECT_EQ(e.warm_logits, e.cold_logits);  // bit for bit, every step
}

TEST(Engine, NextTurnReusesTheAnswerBlocks) {
  // Turn one's answer was computed one token per decode step; the cold run computes the
  // same positions in one prefill. The packed GEMM computes a row the same way in any
  // batch, but decode attention has its own kernel (other summation order): equal to
  // rounding.
  WarmAndCold e;
  auto turn1 = iota_tokens(18, 1);
  auto first = e.warm.generate({turn1}, greedy_params(6))[0];
  auto turn2 = turn1;
  turn2.insert(turn2.end(), first.output_token_ids.begin(), first.output_token_ids.end());
  for (int t : {70, 71, 72, 73, 74}) turn2.push_back(t);
  e.warm_logits.clear();
  auto second = e.warm.generate({turn2}, greedy_params(5))[0];
  EXPECT_EQ(second.num_cached_prompt_tokens, 20);  // 5 full blocks of 4 out of 29 tokens
  auto ref = e.cold.generate({turn2}, greedy_params(5))[0];
  EXPECT_EQ(second.output_token_ids, ref.output_token_ids);
  ASSERT_EQ(e.warm_logits.size(), e.cold_logits.size());
  for (std::size_t i = 0; i < e.warm_logits.size(); ++i)
    for (std::size_t j = 0; j < e.warm_logits[i].size(); ++j)
      ASSERT_NEAR(e.warm_logits[i][j], e.cold_logits[i][j], 1e-4) << "step " << i << " token " << j;
}

TEST(Engine, ThousandRandomRequestsWithCancellationsLeakNoBlocks) {
  TinyModel tm;
  EngineConfig ec;
  ec.block_size = 4;
  ec.num_blocks = 40;  // small: forces preemption
  ec.max_num_seqs = 8;
  ec.max_num_batched_tokens = 32;
  Engine e(tm.dir.path, ec);
  std::mt19937 rng(7);
  std::vector<std::int64_t> live;
  int submitted = 0, finished = 0, cancelled = 0;
  while (submitted < 1000 || e.has_unfinished()) {
    while (submitted < 1000 && e.num_unfinished() < 12) {
      std::vector<int> prompt(1 + rng() % 30);
      for (auto& t : prompt) t = static_cast<int>(rng() % 8);  // few distinct ids: many prefix hits
      SamplingParams p;
      p.temperature = 0.8f;
      p.seed = rng();
      p.max_new_tokens = 1 + static_cast<int>(rng() % 20);
      live.push_back(e.add_request(prompt, p));
      ++submitted;
    }
    for (auto& o : e.step()) finished += o.finished;
    if (rng() % 5 == 0 && !live.empty()) {
      auto id = live[rng() % live.size()];
      if (e.cancel(id).finished) ++cancelled;
    }
    ASSERT_TRUE(e.check_block_invariants());
  }
  EXPECT_EQ(finished + cancelled, 1000);
  EXPECT_GT(cancelled, 0);
  EXPECT_GT(e.stats().preemptions, 0);
  EXPECT_GT(e.stats().prefix_hit_tokens, 0);
  EXPECT_EQ(e.num_free_blocks(), e.num_blocks());
}

TEST(Engine, SameSeedSameTokensAndRejectsImpossibleRequests) {
  TinyModel tm;
  EngineConfig ec;
  ec.block_size = 4;
  ec.num_blocks = 32;
  Engine e(tm.dir.path, ec);
  SamplingParams p;
  p.temperature = 1.0f;
  p.seed = 1234;
  p.max_new_tokens = 16;
  auto a = e.generate({{1, 2, 3}}, p)[0].output_token_ids;
  auto b = e.generate({{1, 2, 3}}, p)[0].output_token_ids;
  EXPECT_EQ(a, b);
  EXPECT_ERROR_MENTIONS((e.add_request({}, p)), "empty");
  EXPECT_ERROR_MENTIONS((e.add_request({1, 500}, p)), "vocabulary");
  EXPECT_ERROR_MENTIONS((e.add_request(std::vector<int>(200, 1), p)), "limit");  // 32 blocks x 4 = 128 tokens
}

// --- AsyncEngine: the server's engine thread -----------------------------------------------

namespace {

// Reads a handle's events until every sequence has finished (bounded).
std::vector<serve::SeqEvent> drain(serve::RequestHandle& h) {
  std::vector<serve::SeqEvent> all;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  int finished = 0;
  while (finished < h.size() && std::chrono::steady_clock::now() < deadline)
    for (auto& ev : h.wait(std::chrono::milliseconds(100))) {
      finished += ev.finished;
      all.push_back(std::move(ev));
    }
  EXPECT_EQ(finished, h.size()) << "requests did not finish";
  return all;
}

std::unique_ptr<Engine> tiny_engine(const TinyModel& m, int max_num_seqs = 8) {
  EngineConfig c;
  c.num_blocks = 64;
  c.max_num_seqs = max_num_seqs;
  return std::make_unique<Engine>(m.dir.path, c);
}

}  // namespace

TEST(AsyncEngine, StreamsTheSameTokensAsThePlainModelWithLogprobs) {
  TinyModel m;
  serve::AsyncEngine engine(tiny_engine(m), {});
  engine.start();
  const std::vector<std::vector<int>> prompts = {{1, 2, 3}, {4, 5, 6, 7, 8}};
  auto h = engine.submit(prompts, {greedy_params(6), greedy_params(6)}, 2);
  std::vector<std::vector<int>> got(2);
  for (const auto& ev : drain(*h)) {
    got[ev.index].insert(got[ev.index].end(), ev.token_ids.begin(), ev.token_ids.end());
    ASSERT_EQ(ev.logprobs.size(), ev.token_ids.size());
    for (std::size_t k = 0; k < ev.logprobs.size(); ++k) {
      ASSERT_EQ(ev.logprobs[k].top.size(), 2u);
      EXPECT_EQ(ev.logprobs[k].top[0].first, ev.token_ids[k]);  // greedy takes the most likely
      EXPECT_LE(ev.logprobs[k].logprob, 0.0f);
    }
    if (ev.finished) {
      EXPECT_EQ(ev.finish_reason, "length");
      EXPECT_EQ(ev.completion_tokens, 6);
    }
  }
  EXPECT_EQ(got[0], m.greedy(prompts[0], 6));
  EXPECT_EQ(got[1], m.greedy(prompts[1], 6));
  EXPECT_EQ(engine.in_flight(), 0);
}

TEST(AsyncEngine, CancelFreesBlocksAndOverloadIsRefused) {
  TinyModel m;
  serve::AsyncEngine engine(tiny_engine(m, 1), {/*max_queue=*/1, /*request_timeout_s=*/600});
  engine.start();
  auto a = engine.submit({{1, 2, 3}}, {greedy_params(400)}, -1);
  auto b = engine.submit({{4, 5, 6}}, {greedy_params(400)}, -1);
  try {
    engine.submit({{7}}, {greedy_params(4)}, -1);
    ADD_FAILURE() << "a third sequence was admitted beyond max_num_seqs 1 + max_queue 1";
  } catch (const serve::Overloaded& e) {
    EXPECT_FALSE(e.draining);
  }
  while (a->wait(std::chrono::milliseconds(100)).empty()) {
  }
  engine.cancel(a);
  engine.cancel(b);
  bool saw_cancel = false;
  for (const auto& ev : drain(*a)) saw_cancel |= ev.finished && ev.finish_reason == "cancelled";
  drain(*b);
  EXPECT_TRUE(saw_cancel);
  EXPECT_TRUE(engine.wait_idle(std::chrono::seconds(10)));
  for (int i = 0; i < 100 && engine.metrics().blocks_used != 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(engine.metrics().blocks_used, 0);
  EXPECT_EQ(engine.metrics().m.finished.at("cancelled"), 2);

  engine.begin_drain();
  try {
    engine.submit({{7}}, {greedy_params(4)}, -1);
    ADD_FAILURE() << "admitted while draining";
  } catch (const serve::Overloaded& e) {
    EXPECT_TRUE(e.draining);
  }
}

TEST(AsyncEngine, RequestsPastTheirDeadlineEndWithTimeout) {
  TinyModel m;
  // 5 ms: far less than 480 decode steps take on any machine (0.05 s was not, unloaded)
  serve::AsyncEngine engine(tiny_engine(m), {/*max_queue=*/4, /*request_timeout_s=*/0.005});
  engine.start();
  auto h = engine.submit({{1, 2}}, {greedy_params(480)}, -1);
  const auto evs = drain(*h);
  ASSERT_FALSE(evs.empty());
  EXPECT_EQ(evs.back().finish_reason, "timeout");
  EXPECT_LT(evs.back().completion_tokens, 480);
}
