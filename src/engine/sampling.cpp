#include "llmctl/engine/sampling.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "llmctl/util/error.h"
#include "../kernels/cpu/simd.h"

namespace llmctl {

namespace {

std::string num(double v) {
  std::string s = std::to_string(v);
  while (s.size() > 1 && s.back() == '0') s.pop_back();
  if (!s.empty() && s.back() == '.') s.pop_back();
  return s;
}

}  // namespace

void SamplingParams::validate() const {
  // Written as !(in range) so that NaN is rejected too.
  if (!(temperature >= 0.0f) || std::isinf(temperature))
    throw Error("--temperature must be >= 0 (0 = greedy), got " + num(temperature));
  if (top_k < 0) throw Error("--top-k must be >= 0 (0 = off), got " + std::to_string(top_k));
  if (!(top_p > 0.0f && top_p <= 1.0f)) throw Error("--top-p must be in (0, 1], got " + num(top_p));
  if (!(min_p >= 0.0f && min_p <= 1.0f)) throw Error("--min-p must be in [0, 1], got " + num(min_p));
  if (!(repetition_penalty > 0.0f) || std::isinf(repetition_penalty))
    throw Error("--repetition-penalty must be > 0 (1 = off), got " + num(repetition_penalty));
  if (!(presence_penalty >= -2.0f && presence_penalty <= 2.0f))
    throw Error("--presence-penalty must be in [-2, 2], got " + num(presence_penalty));
  if (!(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f))
    throw Error("--frequency-penalty must be in [-2, 2], got " + num(frequency_penalty));
  if (max_new_tokens < 1) throw Error("--max-new-tokens must be >= 1, got " + std::to_string(max_new_tokens));
  for (const auto& s : stop)
    if (s.empty()) throw Error("--stop strings must not be empty");
  for (int id : stop_token_ids)
    if (id < 0) throw Error("stop token ids must be >= 0, got " + std::to_string(id));
}

void TokenHistory::set_prompt(const std::vector<int>& prompt) {
  prompt_unique = prompt;
  std::sort(prompt_unique.begin(), prompt_unique.end());
  prompt_unique.erase(std::unique(prompt_unique.begin(), prompt_unique.end()), prompt_unique.end());
}

namespace {

// The vocabulary-wide loops are multiversioned like the CPU kernels (AVX-512 / AVX2 /
// baseline, picked at load time). Their compare-and-select steps only vectorise without
// -ftrapping-math, which CMake gives kernels/cpu/ but not this file: ask for it per
// function (results are unchanged: no traps are enabled anyway).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SAMPLER_LOOP LLMCTL_SIMD_CLONES __attribute__((optimize("no-trapping-math")))
#else
#define SAMPLER_LOOP
#endif

using kernels::cpu::exp_approx;

constexpr int kLanes = 16;    // independent accumulators, so the loops vectorise
constexpr int kBlock = 256;   // the draw walks per-block masses first, then one block
constexpr float kExpFloor = -87.0f;  // exp below this is ~0 in fp32: weight exactly 0

// exp(x) for x = (logit - max) / T <= 0; exactly 0 below the floor, for -inf and for NaN
// (for which x >= floor is false). A product rather than a branch, so it vectorises.
inline __attribute__((always_inline)) float weight_of(float x) {
  const float xs = x >= kExpFloor ? x : -1000.0f;
  return exp_approx(xs) * static_cast<float>(xs > -1000.0f);
}

// First index of the largest value; NaN never wins; all -inf / NaN -> 0.
SAMPLER_LOOP int argmax(const float* x, int n) {
  float lane[kLanes];
  for (float& l : lane) l = -std::numeric_limits<float>::infinity();
  int i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) lane[j] = x[i + j] > lane[j] ? x[i + j] : lane[j];
  float m = -std::numeric_limits<float>::infinity();
  for (float l : lane) m = l > m ? l : m;
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  if (!(m > -std::numeric_limits<float>::infinity())) return 0;
  // Find the first occurrence a chunk at a time (the test per chunk vectorises).
  for (int b = 0; b < n; b += 64) {
    const int e = std::min(n, b + 64);
    int hit = 0;
    for (int k = b; k < e; ++k) hit |= x[k] == m;
    if (hit)
      for (int k = b; k < e; ++k)
        if (x[k] == m) return k;
  }
  return 0;
}

// Logits -> unnormalised probabilities exp((l - max) / T), in place. Returns their sum
// and writes the sum of each kBlock-long block to block_mass.
SAMPLER_LOOP double to_weights(float* w, int n, float max_logit, float inv_t, double* block_mass) {
  double z = 0.0;
  for (int b = 0, begin = 0; begin < n; ++b, begin += kBlock) {
    const int end = std::min(n, begin + kBlock);
    float lane[kLanes] = {};
    int i = begin;
    for (; i + kLanes <= end; i += kLanes)
      for (int j = 0; j < kLanes; ++j) {
        const float e = weight_of((w[i + j] - max_logit) * inv_t);
        w[i + j] = e;
        lane[j] += e;
      }
    double s = 0.0;
    for (float l : lane) s += l;
    for (; i < end; ++i) {
      w[i] = weight_of((w[i] - max_logit) * inv_t);
      s += w[i];
    }
    block_mass[b] = s;
    z += s;
  }
  return z;
}

struct Candidate {
  float w;  // unnormalised probability
  int id;
};

// Heavier first; ties by id, so that every run keeps the same tokens.
struct Heavier {
  bool operator()(const Candidate& a, const Candidate& b) const { return a.w > b.w || (a.w == b.w && a.id < b.id); }
};

// Appends the tokens with lo <= w < hi (w > 0) to out + count (there is room for all of
// them) and returns the new count. Checks 64 weights at a time first (vectorised), since
// most chunks hold none, then appends without branches: flat distributions make the
// range test unpredictable.
SAMPLER_LOOP std::size_t collect_band(const float* w, int n, float lo, float hi, Candidate* out, std::size_t count) {
  lo = std::max(lo, std::numeric_limits<float>::denorm_min());
  for (int b = 0; b < n; b += 64) {
    const int e = std::min(n, b + 64);
    int any = 0;
    for (int i = b; i < e; ++i) any |= (w[i] >= lo) & (w[i] < hi);
    if (!any) continue;
    for (int i = b; i < e; ++i) {
      out[count] = {w[i], i};
      count += (w[i] >= lo) & (w[i] < hi);
    }
  }
  return count;
}

// Sum of the weights of c[0, n), in four chains so the adds overlap.
double mass_of(const Candidate* c, std::size_t n) {
  double s[4] = {};
  std::size_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int j = 0; j < 4; ++j) s[j] += c[i + j].w;
  for (; i < n; ++i) s[0] += c[i].w;
  return (s[0] + s[1]) + (s[2] + s[3]);
}

// Reorders c[lo, n) so that c[0, K) is the smallest set of heaviest candidates whose mass
// reaches `target` (every kept one has less than `target` before it); returns K >= 1.
// c[0, lo) must already be the heaviest, kept, with mass `before` < target. Halves the
// range with selections instead of sorting it all: O(n) expected.
std::size_t top_p_count(Candidate* c, std::size_t n, std::size_t lo, double before, double target) {
  std::size_t hi = n;  // the answer K lies in (lo, hi]
  while (hi - lo > 32) {
    const std::size_t mid = lo + (hi - lo) / 2;
    std::nth_element(c + lo, c + mid, c + hi, Heavier());
    const double left = mass_of(c + lo, mid - lo);
    if (before + left >= target) {
      hi = mid;
    } else {
      before += left;
      lo = mid;
    }
  }
  std::sort(c + lo, c + hi, Heavier());
  for (std::size_t i = lo; i < hi; ++i) {
    if (before >= target) return std::max<std::size_t>(i, 1);
    before += c[i].w;
  }
  return std::max<std::size_t>(hi, 1);
}

void apply_penalties(float* logits, int vocab, const SamplingParams& p, const TokenHistory& h) {
  const float r = p.repetition_penalty;
  auto repeat = [&](int id) {
    float& l = logits[id];
    l = l > 0.0f ? l / r : l * r;
  };
  if (r != 1.0f) {
    // Each id seen in prompt or output is penalised once, however often it occurs.
    for (int id : h.prompt_unique)
      if (id >= 0 && id < vocab) repeat(id);
    for (const auto& [id, count] : h.output_counts)
      if (id >= 0 && id < vocab && !std::binary_search(h.prompt_unique.begin(), h.prompt_unique.end(), id))
        repeat(id);
  }
  if (p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f)
    for (const auto& [id, count] : h.output_counts)
      if (id >= 0 && id < vocab && count > 0)
        logits[id] -= p.frequency_penalty * static_cast<float>(count) + p.presence_penalty;
}

// vLLM's threshold: below it the draw is an argmax (and 1 / T would overflow).
constexpr float kGreedyBelow = 1e-5f;

bool is_greedy(const SamplingParams& p) { return p.temperature < kGreedyBelow || p.top_k == 1; }

// Reused scratch (one set per thread): no allocation per token once warm.
struct Scratch {
  std::vector<double> block_mass;
  std::vector<Candidate> cand;  // room for the whole vocabulary; `kept` are the first ones
  std::size_t kept = 0;
};

// What the draw picks from after temperature and the filters: the whole vocabulary
// (`all`: weights in the buffer, block sums in s.block_mass) or s.cand[0, s.kept).
struct Support {
  bool all = true;
  double total = 0.0;  // sum of the remaining weights
};

// Turns penalised logits (finite maximum at `best`) into weights in place and applies
// top-k, top-p and min-p.
Support filter(float* w, int vocab, int best, const SamplingParams& p, Scratch& s) {
  s.block_mass.resize(static_cast<std::size_t>(vocab / kBlock + 1));
  const double z = to_weights(w, vocab, w[best], 1.0f / p.temperature, s.block_mass.data());
  const bool top_k = p.top_k > 0 && p.top_k < vocab;
  const bool top_p = p.top_p < 1.0f;
  const bool min_p = p.min_p > 0.0f;
  if (!top_k && !top_p && !min_p) return {true, z};

  // Candidates are collected a band at a time, heaviest first, lowering the cut until
  // the filters are sure to find what they need above it: with top-k, k tokens (each
  // token above a cut is heavier than all below it); with top-p alone, mass reaching p
  // (the kept set is then complete before the walk would reach a lighter token). Trained
  // models' distributions are peaked, so the first band or two usually do. The lowest
  // cut ("floor") is min-p's threshold where min-p may go first (not with both top-k and
  // top-p on, where top-p's mass is taken of a top-k set that may include lighter
  // tokens), and for top-p alone (1 - p) z / V, since all tokens under it together weigh
  // less than the 1 - p that top-p drops.
  const float w_max = w[best];  // exp(0) = 1
  float floor_cut = 0.0f;
  const bool min_p_first = min_p && !(top_k && top_p);
  if (min_p_first) floor_cut = p.min_p * w_max;
  if (top_p && !top_k) floor_cut = std::max(floor_cut, static_cast<float>(0.5 * (1.0 - p.top_p) * z / vocab));
  const double target_all = static_cast<double>(p.top_p) * z;
  const std::size_t k = top_k ? static_cast<std::size_t>(p.top_k) : 0;

  if (s.cand.size() < static_cast<std::size_t>(vocab)) s.cand.resize(static_cast<std::size_t>(vocab));
  Candidate* c = s.cand.data();
  std::size_t n = 0;
  std::size_t band = 0;      // the selection only looks at the last band, c[band, n),
  double before_band = 0.0;  // since the bands before it (of this mass) are kept whole
  double collected = 0.0;
  float upper = std::numeric_limits<float>::infinity();
  for (float cut : {0x1p-4f, 0x1p-8f, 0x1p-12f, 0x1p-16f, 0x1p-20f, 0x1p-26f, 0.0f}) {
    cut = top_k || top_p ? std::max(cut * w_max, floor_cut) : floor_cut;  // min-p alone: one band
    if (cut >= upper) continue;
    band = n;
    before_band = collected;
    n = collect_band(w, vocab, cut, upper, c, n);
    collected += mass_of(c + band, n - band);
    upper = cut;
    if (top_k ? n >= k : top_p && collected >= target_all) break;
  }

  double mass = z;  // top-p's fraction is taken of this: the top-k set when top-k is on
  if (top_k) {
    if (n > k) {
      std::nth_element(c + band, c + (k - 1), c + n, Heavier());
      n = k;
    }
    mass = mass_of(c, n);
    if (top_p) n = top_p_count(c, n, 0, 0.0, static_cast<double>(p.top_p) * mass);
  } else if (top_p) {
    n = top_p_count(c, n, band, before_band, target_all);
  }
  if (min_p && !min_p_first) {
    const float cut = p.min_p * w_max;
    n = static_cast<std::size_t>(std::remove_if(c, c + n, [&](const Candidate& x) { return x.w < cut; }) - c);
  }
  s.kept = n;
  return {false, mass_of(c, n)};
}

// Draws from the weights `filter` left: u is uniform in [0, total).
int draw(const float* w, int vocab, const Support& sup, const Scratch& s, double u, int best) {
  if (!sup.all) {
    double acc = 0.0;
    for (std::size_t i = 0; i < s.kept; ++i) {
      acc += s.cand[i].w;
      if (u < acc) return s.cand[i].id;
    }
    return s.kept == 0 ? best : s.cand[s.kept - 1].id;  // rounding at the very end
  }
  for (int b = 0, begin = 0; begin < vocab; ++b, begin += kBlock) {
    if (u >= s.block_mass[static_cast<std::size_t>(b)]) {
      u -= s.block_mass[static_cast<std::size_t>(b)];
      continue;
    }
    const int end = std::min(vocab, begin + kBlock);
    double acc = 0.0;
    int last = -1;
    for (int i = begin; i < end; ++i) {
      if (w[i] <= 0.0f) continue;
      last = i;
      acc += w[i];
      if (u < acc) return i;
    }
    if (last >= 0) return last;  // the block's sum rounded differently
  }
  return best;
}

thread_local Scratch t_scratch;

}  // namespace

int sample_token(float* logits, int vocab, const SamplingParams& params, const TokenHistory& history,
                 std::mt19937_64& rng) {
  apply_penalties(logits, vocab, params, history);
  const int best = argmax(logits, vocab);
  if (is_greedy(params) || !std::isfinite(logits[best])) return best;
  Scratch& s = t_scratch;
  const Support sup = filter(logits, vocab, best, params, s);
  // 53 random bits -> a uniform double in [0, 1): the same on every platform and run.
  const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53 * sup.total;
  return draw(logits, vocab, sup, s, u, best);
}

std::vector<float> sampling_distribution(const float* logits, int vocab, const SamplingParams& params,
                                         const TokenHistory& history) {
  std::vector<float> w(logits, logits + vocab);
  apply_penalties(w.data(), vocab, params, history);
  const int best = argmax(w.data(), vocab);
  if (is_greedy(params) || !std::isfinite(w[best])) {
    std::vector<float> one_hot(static_cast<std::size_t>(vocab), 0.0f);
    one_hot[static_cast<std::size_t>(best)] = 1.0f;
    return one_hot;
  }
  Scratch s;
  const Support sup = filter(w.data(), vocab, best, params, s);
  if (sup.all) {
    for (auto& x : w) x = static_cast<float>(x / sup.total);
    return w;
  }
  std::vector<float> out(static_cast<std::size_t>(vocab), 0.0f);
  for (std::size_t i = 0; i < s.kept; ++i)
    out[static_cast<std::size_t>(s.cand[i].id)] = static_cast<float>(s.cand[i].w / sup.total);
  return out;
}

}  // namespace llmctl
