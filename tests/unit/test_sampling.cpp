#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>

#include "llmctl/engine/sampling.h"
#include "llmctl/engine/text_stream.h"
#include "llmctl/tokenizer/tokenizer.h"
#include "llmctl/util/error.h"
#include "test_helpers.h"

using namespace llmctl;

namespace {

std::vector<float> random_logits(int vocab, std::uint64_t seed, float scale = 2.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n(0.0f, scale);
  std::vector<float> v(static_cast<std::size_t>(vocab));
  for (auto& x : v) x = n(rng);
  return v;
}

// softmax(logits / t) in double, the reference the filters are checked against.
std::vector<double> softmax(const std::vector<float>& logits, double t = 1.0) {
  const double mx = *std::max_element(logits.begin(), logits.end());
  std::vector<double> p(logits.size());
  double z = 0;
  for (std::size_t i = 0; i < p.size(); ++i) z += p[i] = std::exp((logits[i] - mx) / t);
  for (auto& x : p) x /= z;
  return p;
}

std::vector<int> support(const std::vector<float>& dist) {
  std::vector<int> s;
  for (std::size_t i = 0; i < dist.size(); ++i)
    if (dist[i] > 0.0f) s.push_back(static_cast<int>(i));
  return s;
}

// Ids sorted by probability, highest first.
std::vector<int> by_prob(const std::vector<double>& p) {
  std::vector<int> order(p.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return p[a] > p[b]; });
  return order;
}

// Reference top-p over `p` (already renormalised): smallest prefix of the sorted order
// whose mass reaches top_p.
std::vector<int> reference_top_p(const std::vector<double>& p, double top_p) {
  std::vector<int> keep;
  double mass = 0;
  for (int id : by_prob(p)) {
    if (mass >= top_p) break;
    keep.push_back(id);
    mass += p[static_cast<std::size_t>(id)];
  }
  std::sort(keep.begin(), keep.end());
  return keep;
}

int sample(std::vector<float> logits, const SamplingParams& p, const TokenHistory& h, std::mt19937_64& rng) {
  return sample_token(logits.data(), static_cast<int>(logits.size()), p, h, rng);
}

std::vector<float> dist(const std::vector<float>& logits, const SamplingParams& p, const TokenHistory& h = {}) {
  return sampling_distribution(logits.data(), static_cast<int>(logits.size()), p, h);
}

}  // namespace

TEST(Sampling, GreedyIsArgmax) {
  SamplingParams p;
  p.temperature = 0.0f;
  TokenHistory h;
  std::mt19937_64 rng(1);
  for (std::uint64_t seed = 0; seed < 20; ++seed) {
    auto logits = random_logits(6400, seed);
    const int expect = static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    EXPECT_EQ(sample(logits, p, h, rng), expect);
    auto d = dist(logits, p);
    EXPECT_EQ(support(d), std::vector<int>{expect});
    EXPECT_EQ(d[static_cast<std::size_t>(expect)], 1.0f);
  }
  // top-k 1 is greedy at any temperature.
  SamplingParams k1;
  k1.top_k = 1;
  auto logits = random_logits(500, 7);
  EXPECT_EQ(sample(logits, k1, h, rng), std::max_element(logits.begin(), logits.end()) - logits.begin());
}

TEST(Sampling, NonFiniteLogitsNeverWin) {
  std::vector<float> logits = {NAN, -INFINITY, 0.5f, NAN, 0.25f};
  SamplingParams p;
  TokenHistory h;
  std::mt19937_64 rng(3);
  for (int i = 0; i < 200; ++i) {
    const int t = sample(logits, p, h, rng);
    EXPECT_TRUE(t == 2 || t == 4) << t;
  }
  auto d = dist(logits, p);
  EXPECT_EQ(support(d), (std::vector<int>{2, 4}));
  p.temperature = 0.0f;
  EXPECT_EQ(sample(logits, p, h, rng), 2);
}

TEST(Sampling, PenaltiesFollowTheReferenceFormulas) {
  const int vocab = 12;
  auto logits = random_logits(vocab, 11);
  logits[3] = 2.0f;   // prompt only, positive
  logits[4] = -1.5f;  // prompt only, negative
  logits[5] = 1.0f;   // prompt and output
  logits[7] = -0.5f;  // output only, 3 times
  TokenHistory h;
  h.set_prompt({4, 3, 5, 3, 5});
  EXPECT_EQ(h.prompt_unique, (std::vector<int>{3, 4, 5}));
  for (int id : {5, 7, 7, 7}) h.add_output(id);

  SamplingParams p;
  p.repetition_penalty = 1.3f;
  p.presence_penalty = 0.5f;
  p.frequency_penalty = 0.25f;

  // Reference: repetition once per id seen anywhere, then presence + frequency * count on
  // output ids.
  std::vector<float> ref = logits;
  for (int id : {3, 4, 5, 7}) ref[id] = ref[id] > 0 ? ref[id] / 1.3f : ref[id] * 1.3f;
  ref[5] -= 0.5f + 0.25f * 1;
  ref[7] -= 0.5f + 0.25f * 3;

  const auto got = dist(logits, p, h);
  const auto want = softmax(ref);
  for (int i = 0; i < vocab; ++i) EXPECT_NEAR(got[i], want[i], 1e-6) << "token " << i;

  // Greedy applies the penalties before the argmax: the favourite loses its place.
  std::vector<float> two = {3.0f, 2.5f};
  TokenHistory seen;
  seen.add_output(0);
  SamplingParams g;
  g.temperature = 0.0f;
  std::mt19937_64 rng(0);
  EXPECT_EQ(sample(two, g, seen, rng), 0);
  g.repetition_penalty = 1.5f;  // 3.0 / 1.5 = 2.0 < 2.5
  EXPECT_EQ(sample(two, g, seen, rng), 1);
  std::vector<float> in_place = two;
  sample_token(in_place.data(), 2, g, seen, rng);
  EXPECT_FLOAT_EQ(in_place[0], 2.0f);
  g.repetition_penalty = 1.0f;
  g.frequency_penalty = 0.6f;  // 3.0 - 0.6 = 2.4 < 2.5
  EXPECT_EQ(sample(two, g, seen, rng), 1);
  g.frequency_penalty = 0.0f;
  g.presence_penalty = 0.4f;  // 2.6 > 2.5
  EXPECT_EQ(sample(two, g, seen, rng), 0);
}

TEST(Sampling, TemperatureScalesLogits) {
  auto logits = random_logits(50, 5);
  SamplingParams p;
  p.temperature = 0.7f;
  const auto got = dist(logits, p);
  const auto want = softmax(logits, 0.7);
  for (std::size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-6);
}

TEST(Sampling, TopKKeepsExactlyTheKMostLikely) {
  for (int k : {1, 2, 5, 40, 999}) {
    auto logits = random_logits(1000, 100 + static_cast<std::uint64_t>(k));
    SamplingParams p;
    p.top_k = k;
    const auto d = dist(logits, p);
    const auto s = support(d);
    ASSERT_EQ(static_cast<int>(s.size()), k);
    auto order = by_prob(softmax(logits));
    std::vector<int> want(order.begin(), order.begin() + k);
    std::sort(want.begin(), want.end());
    EXPECT_EQ(s, want);
    // Renormalised over the k kept.
    const auto ref = softmax(logits);
    double mass = 0;
    for (int id : want) mass += ref[static_cast<std::size_t>(id)];
    for (int id : want) EXPECT_NEAR(d[static_cast<std::size_t>(id)], ref[static_cast<std::size_t>(id)] / mass, 1e-5);
  }
}

TEST(Sampling, TopPKeepsTheSmallestSetReachingP) {
  for (float top_p : {0.05f, 0.3f, 0.5f, 0.9f, 0.99f}) {
    for (std::uint64_t seed = 0; seed < 5; ++seed) {
      // Flat (scale 1) and peaked (scale 4) distributions over a realistic vocabulary.
      for (float scale : {1.0f, 4.0f}) {
        auto logits = random_logits(6400, seed * 31 + 7, scale);
        SamplingParams p;
        p.top_p = top_p;
        const auto s = support(dist(logits, p));
        const auto ref = softmax(logits);
        EXPECT_EQ(s, reference_top_p(ref, top_p)) << "p=" << top_p << " seed=" << seed;
        // Directly: mass reaches p, and does not without the least likely kept token.
        double mass = 0, least = 1;
        for (int id : s) {
          mass += ref[static_cast<std::size_t>(id)];
          least = std::min(least, ref[static_cast<std::size_t>(id)]);
        }
        EXPECT_GE(mass, top_p - 1e-6);
        EXPECT_LT(mass - least, top_p);
      }
    }
  }
}

TEST(Sampling, ExactBoundariesAndTies) {
  // Equal logits: exact weights, so "mass reaches p" is tested at equality, and ties go
  // to the lower id.
  const std::vector<float> flat(8, 0.5f);
  SamplingParams p;
  p.top_p = 0.5f;  // 4 of 8 reach exactly 0.5
  EXPECT_EQ(support(dist(flat, p)), (std::vector<int>{0, 1, 2, 3}));
  p.top_p = 0.51f;
  EXPECT_EQ(support(dist(flat, p)), (std::vector<int>{0, 1, 2, 3, 4}));
  p = SamplingParams{};
  p.top_k = 3;
  EXPECT_EQ(support(dist(flat, p)), (std::vector<int>{0, 1, 2}));
  p = SamplingParams{};
  p.min_p = 1.0f;  // p >= p_max keeps every tied maximum
  EXPECT_EQ(support(dist(flat, p)).size(), 8u);
}

TEST(Sampling, TopPIsTakenOfTheTopKDistribution) {
  auto logits = random_logits(300, 99);
  SamplingParams p;
  p.top_k = 20;
  p.top_p = 0.6f;
  const auto ref = softmax(logits);
  auto order = by_prob(ref);
  std::vector<double> topk(ref.size(), 0.0);
  double mass = 0;
  for (int i = 0; i < 20; ++i) mass += ref[static_cast<std::size_t>(order[i])];
  for (int i = 0; i < 20; ++i) topk[static_cast<std::size_t>(order[i])] = ref[static_cast<std::size_t>(order[i])] / mass;
  EXPECT_EQ(support(dist(logits, p)), reference_top_p(topk, 0.6));
}

TEST(Sampling, MinPKeepsTokensAboveAFractionOfTheMax) {
  for (float min_p : {0.01f, 0.1f, 0.5f, 1.0f}) {
    auto logits = random_logits(2000, 17);
    SamplingParams p;
    p.min_p = min_p;
    const auto ref = softmax(logits);
    const double pmax = *std::max_element(ref.begin(), ref.end());
    std::vector<int> want;
    for (std::size_t i = 0; i < ref.size(); ++i)
      if (ref[i] >= min_p * pmax) want.push_back(static_cast<int>(i));
    EXPECT_EQ(support(dist(logits, p)), want) << min_p;
    // Combined with top-k and top-p: the intersection of the three filters' sets (min-p
    // is relative to the max, so renormalising does not move its threshold).
    p.top_k = 50;
    p.top_p = 0.5f;
    auto order = by_prob(ref);
    std::vector<double> topk(ref.size(), 0.0);
    double mass = 0;
    for (int i = 0; i < 50; ++i) mass += ref[static_cast<std::size_t>(order[i])];
    for (int i = 0; i < 50; ++i)
      topk[static_cast<std::size_t>(order[i])] = ref[static_cast<std::size_t>(order[i])] / mass;
    std::vector<int> both;
    auto tp = reference_top_p(topk, 0.5);
    std::set_intersection(tp.begin(), tp.end(), want.begin(), want.end(), std::back_inserter(both));
    EXPECT_EQ(support(dist(logits, p)), both) << min_p;
  }
}

TEST(Sampling, MinPWithOneOtherFilter) {
  auto logits = random_logits(3000, 41, 1.5f);
  const auto ref = softmax(logits);
  const double pmax = *std::max_element(ref.begin(), ref.end());
  auto above = [&](double min_p) {
    std::vector<int> v;
    for (std::size_t i = 0; i < ref.size(); ++i)
      if (ref[i] >= min_p * pmax) v.push_back(static_cast<int>(i));
    return v;
  };
  auto intersect = [](const std::vector<int>& a, const std::vector<int>& b) {
    std::vector<int> v;
    std::set_intersection(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(v));
    return v;
  };
  for (double min_p : {0.01, 0.2}) {
    for (float top_p : {0.3f, 0.95f}) {  // top-p over the full distribution, then min-p
      SamplingParams p;
      p.min_p = static_cast<float>(min_p);
      p.top_p = top_p;
      EXPECT_EQ(support(dist(logits, p)), intersect(reference_top_p(ref, top_p), above(min_p))) << min_p << " " << top_p;
    }
    for (int k : {3, 400}) {
      SamplingParams p;
      p.min_p = static_cast<float>(min_p);
      p.top_k = k;
      auto order = by_prob(ref);
      std::vector<int> topk(order.begin(), order.begin() + k);
      std::sort(topk.begin(), topk.end());
      EXPECT_EQ(support(dist(logits, p)), intersect(topk, above(min_p))) << min_p << " " << k;
    }
  }
}

TEST(Sampling, FiltersAtALargeVocabulary) {
  // Qwen-sized: the filters' candidate bands go down to the lightest tokens when the
  // distribution is flat, and stop early when it is peaked.
  for (float scale : {1.0f, 3.0f, 6.0f}) {
    auto logits = random_logits(151936, 5, scale);
    const auto ref = softmax(logits);
    for (float top_p : {0.5f, 0.9f}) {
      SamplingParams p;
      p.top_p = top_p;
      EXPECT_EQ(support(dist(logits, p)), reference_top_p(ref, top_p)) << scale << " " << top_p;
    }
    SamplingParams p;
    p.top_k = 1000;
    auto order = by_prob(ref);
    std::vector<int> want(order.begin(), order.begin() + 1000);
    std::sort(want.begin(), want.end());
    EXPECT_EQ(support(dist(logits, p)), want) << scale;
  }
}

TEST(Sampling, DistributionSumsToOne) {
  TokenHistory h;
  h.set_prompt({1, 2, 3});
  h.add_output(4);
  std::vector<SamplingParams> cases(6);
  cases[1].temperature = 0.3f;
  cases[2].top_k = 17;
  cases[3].top_p = 0.8f;
  cases[4].min_p = 0.05f;
  cases[5].top_k = 100;
  cases[5].top_p = 0.95f;
  cases[5].min_p = 0.02f;
  cases[5].repetition_penalty = 1.2f;
  cases[5].temperature = 1.4f;
  auto logits = random_logits(6400, 23);
  for (const auto& p : cases) {
    const auto d = dist(logits, p, h);
    EXPECT_NEAR(std::accumulate(d.begin(), d.end(), 0.0), 1.0, 1e-5);
  }
}

TEST(Sampling, DrawsFollowTheDistribution) {
  const std::vector<float> logits = {1.0f, 0.5f, 2.0f, -1.0f, 0.0f, 1.5f, -3.0f, 0.2f, 0.8f, -0.4f};
  std::vector<SamplingParams> cases(4);
  cases[1].temperature = 0.7f;
  cases[1].top_p = 0.85f;
  cases[2].top_k = 5;
  cases[2].temperature = 1.3f;
  cases[3].min_p = 0.2f;
  cases[3].repetition_penalty = 1.5f;
  TokenHistory h;
  h.set_prompt({2, 5});
  for (std::size_t c = 0; c < cases.size(); ++c) {
    const auto want = dist(logits, cases[c], h);
    std::mt19937_64 rng(1234 + c);
    const int n = 20000;
    std::vector<int> counts(logits.size(), 0);
    for (int i = 0; i < n; ++i) ++counts[static_cast<std::size_t>(sample(logits, cases[c], h, rng))];
    double tv = 0;
    for (std::size_t i = 0; i < logits.size(); ++i) {
      tv += std::abs(counts[i] / static_cast<double>(n) - want[i]);
      if (want[i] == 0.0f) {
        EXPECT_EQ(counts[i], 0) << "filtered token " << i << " was drawn";
      }
    }
    EXPECT_LT(tv / 2, 0.02) << "case " << c;
  }
}

TEST(Sampling, DrawsFollowTheDistributionAcrossAWideVocabulary) {
  // The unfiltered draw walks per-block sums first: put the mass in different blocks,
  // at block edges and in the last, partial one.
  std::vector<float> logits(700, -30.0f);
  const std::vector<int> hot = {0, 5, 255, 256, 300, 511, 512, 640, 699};
  for (std::size_t i = 0; i < hot.size(); ++i) logits[static_cast<std::size_t>(hot[i])] = 0.3f * static_cast<float>(i % 4);
  SamplingParams p;
  const auto want = dist(logits, p);
  std::mt19937_64 rng(99);
  const int n = 20000;
  std::vector<int> counts(logits.size(), 0);
  for (int i = 0; i < n; ++i) ++counts[static_cast<std::size_t>(sample(logits, p, {}, rng))];
  double tv = 0;
  for (std::size_t i = 0; i < logits.size(); ++i) tv += std::abs(counts[i] / static_cast<double>(n) - want[i]);
  EXPECT_LT(tv / 2, 0.02);
  for (int id : hot) EXPECT_GT(counts[static_cast<std::size_t>(id)], 0) << id;
}

TEST(Sampling, TinyTemperatureIsGreedy) {
  auto logits = random_logits(100, 8);
  SamplingParams p;
  p.temperature = 1e-7f;
  std::mt19937_64 rng(1);
  EXPECT_EQ(sample(logits, p, {}, rng), std::max_element(logits.begin(), logits.end()) - logits.begin());
}

TEST(Sampling, SameSeedSameDraws) {
  auto logits = random_logits(6400, 3, 1.0f);
  SamplingParams p;
  p.top_p = 0.95f;
  TokenHistory h;
  auto draws = [&](std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::vector<int> out;
    for (int i = 0; i < 100; ++i) out.push_back(sample(logits, p, h, rng));
    return out;
  };
  EXPECT_EQ(draws(42), draws(42));
  EXPECT_NE(draws(42), draws(43));
  p.top_p = 1.0f;  // the unfiltered path too
  EXPECT_EQ(draws(7), draws(7));
  EXPECT_NE(draws(7), draws(8));
}

TEST(Sampling, ValidateRejectsBadValues) {
  EXPECT_NO_THROW(SamplingParams{}.validate());
  auto bad = [](auto set) {
    SamplingParams p;
    set(p);
    return p;
  };
  EXPECT_ERROR_MENTIONS(bad([](auto& p) { p.temperature = -0.1f; }).validate(), "--temperature");
  EXPECT_ERROR_MENTIONS(bad([](auto& p) { p.temperature = NAN; }).validate(), "--temperature");
  EXPECT_ERROR_MENTIONS(bad([](auto& p) { p.top_k = -1; }).validate(), "--top-k");
  EXPECT_ERROR_MENTIONS(bad([](auto& p) { p.top_p = 0.0f; }).validate(), "--top-p must be in (0, 1]");
  EXPECT_ERROR_MENTIONS(bad([](auto& p) { p.top_p = 1.5f; }).validate(), "--top-p");
  EXPECT_ERROR_MENTIONS(bad([](auto& p) { p.top_p = NAN; }).validate(), "--top-p");
  EXPECT_ERROR_MENTIONS(bad([](auto& p) { p.min_p = -0.1f; }).validate(), "--min-p");
  EXPECT_ERROR_MENTIONS(bad([](auto& p) { p.min_p = 1.1f; }).validate(), "--min-p");
  EXPECT_ERROR_MENTIONS(bad([](auto& p) { p.repetition_penalty = 0.0f; }).validate(), "--repetition-penalty");
  EXPECT_ERROR_MENTIONS(bad([](auto& p) { p.presence_penalty = 3.0f; }).validate(), "--presence-penalty");
  EXPECT_ERROR_MENTIONS(bad([](auto& p) { p.frequency_penalty = -2.5f; }).validate(), "--frequency-penalty");
  EXPECT_ERROR_MENTIONS(bad([](auto& p) { p.max_new_tokens = 0; }).validate(), "--max-new-tokens");
  EXPECT_ERROR_MENTIONS(bad([](auto& p) { p.stop = {"ok", ""}; }).validate(), "--stop");
  EXPECT_ERROR_MENTIONS(bad([](auto& p) { p.stop_token_ids = {-3}; }).validate(), "stop token");
  // The edges of the ranges are fine.
  SamplingParams edges;
  edges.temperature = 0.0f;
  edges.top_p = 1.0f;
  edges.min_p = 1.0f;
  edges.presence_penalty = -2.0f;
  EXPECT_NO_THROW(edges.validate());
}

// Timing for the record (printed, not asserted): the per-token cost at small and large
// vocabularies. Logits are copied each call because sample_token works in place; the
// copy alone is timed too.
TEST(Sampling, Timing) {
  for (int vocab : {6400, 151936}) {
    auto logits = random_logits(vocab, 77, 3.0f);
    std::vector<float> work(logits.size());
    TokenHistory h;
    h.set_prompt({1, 2, 3, 4, 5});
    std::mt19937_64 rng(0);
    auto time = [&](const SamplingParams* p, const char* what) {
      const int iters = vocab > 10000 ? 300 : 3000;
      long sink = 0;  // uses every result, so that nothing is optimised away
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < iters; ++i) {
        std::copy(logits.begin(), logits.end(), work.begin());
        sink += p ? sample_token(work.data(), vocab, *p, h, rng) : work[static_cast<std::size_t>(i % vocab)] > 0.0f;
      }
      const double us =
          std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / iters;
      EXPECT_GE(sink, 0);
      std::printf("  sample_token vocab %6d %-28s %8.1f us/token incl. copy\n", vocab, what, us);
    };
    time(nullptr, "logits copy only");
    SamplingParams greedy;
    greedy.temperature = 0;
    time(&greedy, "greedy");
    const SamplingParams plain;
    time(&plain, "temperature 1");
    SamplingParams top_p;
    top_p.top_p = 0.9f;
    time(&top_p, "top-p 0.9");
    SamplingParams full;
    full.top_k = 50;
    full.top_p = 0.9f;
    full.repetition_penalty = 1.1f;
    time(&full, "top-k 50 top-p 0.9 rep 1.1");
  }
}

// ---------------------------------------------------------------------------------------

namespace {


bool valid_utf8(const std::string& s) {
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const std::size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (std::size_t k = 1; k < n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    i += n;
  }
  return true;
}

struct Streamed {
  std::string text;                 // all deltas + finish()
  std::vector<std::string> deltas;  // per push
  bool stopped = false;
  std::string stop;
};

Streamed stream(const std::vector<int>& ids, std::vector<std::string> stops = {}) {
  TextStream ts(demo_tokenizer(), std::move(stops));
  Streamed out;
  for (int id : ids) {
    auto d = ts.push(id);
    out.deltas.push_back(d.text);
    out.text += d.text;
    EXPECT_EQ(ts.text(), out.text);
    if (d.stopped) {
      out.stopped = true;
      out.stop = d.stop;
      break;
    }
  }
  const std::string tail = ts.finish();
  out.text += tail;
  if (!tail.empty()) out.deltas.push_back(tail);
  EXPECT_EQ(ts.text(), out.text);
  return out;
}

bool is_byte_piece(int id) {
  const auto piece = demo_tokenizer().id_to_piece(id);
  return piece.size() == 6 && piece.rfind("<0x", 0) == 0;
}

const std::vector<std::string> kTexts = {
    "Hello world, this is a test of streaming.",
    "héllo 世界 🙂",
    "预备知识：阅读本文档，你需要通过自己的努力去查找答案。",
    "  leading spaces and\nnew lines\n\n  indented 😀😀 done",
    "emoji only 🙂🙃🤖👍🏽 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "mixed: ASCII, Ελληνικά, русский, العربية, हिन्दी, 日本語のテキスト.",
};

}  // namespace

TEST(TextStream, DeltasConcatenateToTheFullDecode) {
  const auto& tok = demo_tokenizer();
  bool saw_bytes = false;
  for (const auto& text : kTexts) {
    const auto ids = tok.encode(text);
    for (int id : ids) saw_bytes |= is_byte_piece(id);
    const auto got = stream(ids);
    EXPECT_EQ(got.text, tok.decode(ids, true)) << text;
    EXPECT_EQ(got.text, text);
    for (const auto& d : got.deltas) EXPECT_TRUE(valid_utf8(d)) << "delta is not UTF-8 in: " << text;
  }
  // The emoji are outside this small vocabulary: the byte-fallback path was exercised.
  EXPECT_TRUE(saw_bytes);
}

TEST(TextStream, MultiByteCharacterIsHeldUntilComplete) {
  const auto& tok = demo_tokenizer();
  const auto ids = tok.encode("🙂");
  ASSERT_EQ(ids.size(), 4u);  // four byte-fallback tokens
  TextStream ts(tok, {});
  for (int i = 0; i < 3; ++i) EXPECT_EQ(ts.push(ids[static_cast<std::size_t>(i)]).text, "");
  EXPECT_EQ(ts.push(ids[3]).text, "🙂");
  EXPECT_EQ(ts.finish(), "");

  // Cut short: finish() gives what a full decode gives (U+FFFD), never raw bytes.
  TextStream cut(tok, {});
  const auto a = tok.encode("a");
  std::string out = cut.push(a[0]).text;
  out += cut.push(ids[0]).text;
  out += cut.push(ids[1]).text;
  out += cut.finish();
  EXPECT_EQ(out, tok.decode({a[0], ids[0], ids[1]}, true));
  EXPECT_TRUE(valid_utf8(out));
}

TEST(TextStream, SpecialTokensAreSkipped) {
  const auto& tok = demo_tokenizer();
  auto ids = tok.encode("<|im_start|>assistant\nHi there<|im_end|>\n world");
  const auto got = stream(ids);
  EXPECT_EQ(got.text, tok.decode(ids, true));
  EXPECT_EQ(got.text.find("<|im"), std::string::npos);
}

TEST(TextStream, RandomIdsMatchTheFullDecode) {
  // Any id sequence, including broken byte sequences and specials in between.
  const auto& tok = demo_tokenizer();
  std::vector<int> bytes;
  for (int b = 0; b < 256; ++b) {
    char piece[8];
    std::snprintf(piece, sizeof piece, "<0x%02X>", b);
    const int id = tok.piece_to_id(piece);
    ASSERT_GE(id, 0) << piece;
    bytes.push_back(id);
  }
  const auto utf8 = tok.encode("é世🙂 ok");
  std::mt19937_64 rng(5);
  for (int trial = 0; trial < 300; ++trial) {
    std::vector<int> ids;
    const int n = 1 + static_cast<int>(rng() % 30);
    for (int i = 0; i < n; ++i) {
      switch (rng() % 4) {
        case 0: ids.push_back(bytes[rng() % 256]); break;
        case 1: ids.push_back(static_cast<int>(rng() % static_cast<std::uint64_t>(tok.vocab_size()))); break;
        case 2: ids.push_back(static_cast<int>(rng() % 3)); break;  // specials
        default: ids.insert(ids.end(), utf8.begin(), utf8.end());
      }
    }
    const auto got = stream(ids);
    ASSERT_EQ(got.text, tok.decode(ids, true)) << "trial " << trial;
    for (const auto& d : got.deltas) ASSERT_TRUE(valid_utf8(d)) << "trial " << trial;
  }
}

TEST(TextStream, StopStringEndsTheStreamAndIsNotEmitted) {
  const auto& tok = demo_tokenizer();
  const std::string text = "The answer is 42. Observation: the tool said nothing. More text.";
  const auto ids = tok.encode(text);
  const auto got = stream(ids, {"Observation:"});
  EXPECT_TRUE(got.stopped);
  EXPECT_EQ(got.stop, "Observation:");
  EXPECT_EQ(got.text, "The answer is 42. ");

  // Several stops: the earliest in the text wins, whatever the list order.
  const auto two = stream(ids, {"nothing", "tool", "zzz"});
  EXPECT_EQ(two.stop, "tool");
  EXPECT_EQ(two.text, "The answer is 42. Observation: the ");

  // A multi-byte stop string.
  const auto wide = stream(tok.encode("héllo 世界 🙂"), {"世界"});
  EXPECT_TRUE(wide.stopped);
  EXPECT_EQ(wide.text, "héllo ");

  // Absent stop strings change nothing.
  const auto none = stream(ids, {"NOT THERE", "4 2"});
  EXPECT_FALSE(none.stopped);
  EXPECT_EQ(none.text, text);
}

TEST(TextStream, StopStringSplitAcrossTokensIsCaught) {
  const auto& tok = demo_tokenizer();
  const std::string text = "alpha beta gamma delta epsilon";
  const auto ids = tok.encode(text);
  // A stop string spanning several tokens: its first tokens must be held back.
  const std::string stop = "ma delt";
  std::size_t first = 0, pieces = 0;
  for (std::size_t i = 0, len = 0; i < ids.size(); ++i) {
    const std::size_t next = tok.decode(std::vector<int>(ids.begin(), ids.begin() + static_cast<long>(i) + 1), true).size();
    if (next > text.find(stop) && len < text.find(stop) + stop.size()) {
      if (pieces++ == 0) first = i;
    }
    len = next;
  }
  ASSERT_GE(pieces, 2u) << "the stop string must span tokens for this test";

  TextStream ts(tok, {stop});
  std::string out;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    auto d = ts.push(ids[i]);
    out += d.text;
    EXPECT_EQ(out.find("ma"), std::string::npos) << "a possible stop prefix was emitted at token " << i;
    if (d.stopped) {
      EXPECT_GT(i, first);
      break;
    }
  }
  EXPECT_EQ(out, "alpha beta gam");
  EXPECT_EQ(ts.text(), out);
  // After the stop nothing more comes out.
  auto after = ts.push(ids.back());
  EXPECT_TRUE(after.stopped);
  EXPECT_EQ(after.text, "");
  EXPECT_EQ(ts.finish(), "");
}

TEST(TextStream, HeldBackPrefixIsReleasedWhenItIsNotAStop) {
  const auto& tok = demo_tokenizer();
  const std::string text = "the world is wide, the word is out";
  const auto ids = tok.encode(text);
  const std::vector<std::string> stops = {"worm", "is out!"};
  auto starts_a_stop = [&](const std::string& tail) {
    for (const auto& s : stops)
      if (s.compare(0, tail.size(), tail) == 0) return true;
    return false;
  };
  TextStream ts(tok, stops);
  std::string out;
  bool held = false;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    auto d = ts.push(ids[i]);
    EXPECT_FALSE(d.stopped);
    out += d.text;
    const std::string known = tok.decode(std::vector<int>(ids.begin(), ids.begin() + static_cast<long>(i) + 1), true);
    ASSERT_EQ(known.compare(0, out.size(), out), 0);
    // What is held back could still become a stop string ("wor" of "worm")...
    const std::string pending = known.substr(out.size());
    EXPECT_TRUE(pending.empty() || starts_a_stop(pending)) << "held '" << pending << "' needlessly";
    held |= !pending.empty();
    // ...and nothing emitted could: every tail of the known text that starts in the
    // emitted part already differs from all stop strings.
    for (std::size_t q = 0; q < out.size(); ++q)
      EXPECT_FALSE(starts_a_stop(known.substr(q))) << "emitted '" << out << "' too early";
  }
  EXPECT_TRUE(held);
  // "is out" is released by finish(): the "!" can no longer come.
  const std::string tail = ts.finish();
  EXPECT_EQ(tail, "is out");
  EXPECT_EQ(out + tail, text);
}

TEST(TextStream, FinishFlushesHeldText) {
  const auto& tok = demo_tokenizer();
  const auto ids = tok.encode("one two thr");
  TextStream ts(tok, {"three"});
  std::string out;
  for (int id : ids) out += ts.push(id).text;
  EXPECT_EQ(out, "one two ");
  EXPECT_EQ(ts.finish(), "thr");
  EXPECT_EQ(ts.text(), "one two thr");
}
