#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "llmctl/kernels/paged_attention.h"
#include "llmctl/util/error.h"
#include "test_helpers.h"

using namespace llmctl;

namespace {

// One sequence of a batch: `ctx` cached positions, the last `n` of them new query tokens.
struct Seq {
  std::int64_t ctx, n;
};

struct Shape {
  std::int64_t heads, kv_heads, head_dim, block_size;
};

// A batch over a paged cache: blocks handed out in shuffled order, unused table entries
// and unused cache rows poisoned (a huge block id, NaN), every sequence's K/V kept densely
// too for the independent check.
struct Batch {
  torch::Tensor q, k_cache, v_cache, query_start, context_lens, block_tables;
  std::vector<torch::Tensor> k, v;  // per sequence [ctx, kv_heads, head_dim], the cache's dtype
  double scale;
};

Batch make_batch(const std::vector<Seq>& seqs, const Shape& sh, torch::ScalarType dt, std::uint64_t seed) {
  torch::manual_seed(static_cast<std::uint64_t>(seed));
  std::mt19937_64 rng(seed);
  const auto S = static_cast<std::int64_t>(seqs.size());
  std::int64_t blocks_needed = 0, max_blocks = 1, N = 0;
  for (const auto& s : seqs) {
    const auto b = (s.ctx + sh.block_size - 1) / sh.block_size;
    blocks_needed += b;
    max_blocks = std::max(max_blocks, b + 1);  // one unused entry at least
    N += s.n;
  }
  const auto num_blocks = blocks_needed + 3;  // spare blocks nobody owns
  std::vector<std::int32_t> ids(static_cast<std::size_t>(num_blocks));
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);

  Batch b;
  b.scale = 1.0 / std::sqrt(static_cast<double>(sh.head_dim));
  const auto opts = torch::TensorOptions().dtype(dt);
  b.k_cache = torch::full({num_blocks, sh.kv_heads, sh.block_size, sh.head_dim}, NAN, opts);
  b.v_cache = torch::full({num_blocks, sh.kv_heads, sh.block_size, sh.head_dim}, NAN, opts);
  b.block_tables = torch::full({S, max_blocks}, 1 << 30, torch::kInt32);
  b.query_start = torch::zeros({S + 1}, torch::kInt32);
  b.context_lens = torch::zeros({S}, torch::kInt32);
  b.q = torch::randn({N, sh.heads, sh.head_dim}).to(dt);
  std::vector<std::int64_t> slots;
  std::size_t next_id = 0;
  for (std::int64_t s = 0; s < S; ++s) {
    const auto& sq = seqs[static_cast<std::size_t>(s)];
    b.query_start[s + 1] = b.query_start[s].item<std::int32_t>() + static_cast<std::int32_t>(sq.n);
    b.context_lens[s] = static_cast<std::int32_t>(sq.ctx);
    for (std::int64_t j = 0; j < (sq.ctx + sh.block_size - 1) / sh.block_size; ++j)
      b.block_tables[s][j] = ids[next_id++];
    for (std::int64_t p = 0; p < sq.ctx; ++p)
      slots.push_back(b.block_tables[s][p / sh.block_size].item<std::int64_t>() * sh.block_size + p % sh.block_size);
    b.k.push_back(torch::randn({sq.ctx, sh.kv_heads, sh.head_dim}).to(dt));
    b.v.push_back(torch::randn({sq.ctx, sh.kv_heads, sh.head_dim}).to(dt));
  }
  kernels::write_kv_cache(torch::cat(b.k), torch::cat(b.v), b.k_cache, b.v_cache, torch::tensor(slots, torch::kInt64));
  return b;
}

torch::Tensor run_kernel(const Batch& b) {
  return kernels::paged_attention(b.q, b.k_cache, b.v_cache, b.query_start, b.context_lens, b.block_tables, b.scale);
}
torch::Tensor run_reference(const Batch& b) {
  return kernels::paged_attention_reference(b.q, b.k_cache, b.v_cache, b.query_start, b.context_lens,
                                            b.block_tables, b.scale);
}

// Independent of the cache: torch's SDPA on each sequence's dense, head-repeated K/V.
// Causal from position 0 is SDPA's is_causal; queries starting later get an explicit mask.
torch::Tensor run_dense(const Batch& b, const std::vector<Seq>& seqs) {
  const auto H = b.q.size(1), G = H / b.k[0].size(1);
  std::vector<torch::Tensor> outs;
  std::int64_t row = 0;
  for (std::size_t s = 0; s < seqs.size(); ++s) {
    const auto [ctx, n] = seqs[s];
    auto q = b.q.narrow(0, row, n).to(torch::kFloat32).transpose(0, 1).unsqueeze(0);  // [1, H, n, D]
    auto dense = [&](const torch::Tensor& x) {
      return x.to(torch::kFloat32).transpose(0, 1).repeat_interleave(G, 0).unsqueeze(0);  // [1, H, ctx, D]
    };
    torch::Tensor o;
    if (n == ctx) {
      o = at::scaled_dot_product_attention(q, dense(b.k[s]), dense(b.v[s]), {}, 0.0, /*is_causal=*/true, b.scale);
    } else {
      auto visible = torch::arange(ctx).unsqueeze(0) <= torch::arange(ctx - n, ctx).unsqueeze(1);  // [n, ctx]
      o = at::scaled_dot_product_attention(q, dense(b.k[s]), dense(b.v[s]), visible, 0.0, false, b.scale);
    }
    outs.push_back(o.squeeze(0).transpose(0, 1));
    row += n;
  }
  return torch::cat(outs);
}

double max_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat32) - b.to(torch::kFloat32)).abs().max().item<double>();
}

std::string describe(const Shape& sh, torch::ScalarType dt) {
  return "heads " + std::to_string(sh.heads) + "/" + std::to_string(sh.kv_heads) + " head_dim " +
         std::to_string(sh.head_dim) + " block " + std::to_string(sh.block_size) + " " + c10::toString(dt);
}

// The kernel against the torch-ops reference and against dense SDPA.
void check(const std::vector<Seq>& seqs, const Shape& sh, torch::ScalarType dt, std::uint64_t seed = 1) {
  const auto b = make_batch(seqs, sh, dt, seed);
  const auto out = run_kernel(b);
  const auto ref = run_reference(b);
  const auto dense = run_dense(b, seqs);
  ASSERT_EQ(out.sizes(), b.q.sizes());
  ASSERT_EQ(out.scalar_type(), dt);
  const double tol = dt == torch::kFloat32 ? 1e-5 : 2e-2;
  const std::string what = describe(sh, dt);
  EXPECT_TRUE(torch::isfinite(out).all().item<bool>()) << what;
  EXPECT_LE(max_diff(out, ref), tol) << what;
  EXPECT_LE(max_diff(out, dense), tol) << what;
  EXPECT_LE(max_diff(ref, dense), tol) << what;
}

const Shape kGqa{8, 2, 64, 16};  // minimind2-small
const std::vector<torch::ScalarType> kDtypes{torch::kFloat32, torch::kBFloat16};

}  // namespace

TEST(PagedAttention, PrefillOnly) {
  for (auto dt : kDtypes) check({{37, 37}, {16, 16}, {100, 100}}, kGqa, dt);
}

TEST(PagedAttention, DecodeOnly) {
  for (auto dt : kDtypes) check({{17, 1}, {64, 1}, {300, 1}, {2, 1}}, kGqa, dt);
}

TEST(PagedAttention, SingleTokenContext) {
  for (auto dt : kDtypes) {
    check({{1, 1}}, kGqa, dt);
    check({{1, 1}, {1, 1}, {5, 1}}, {4, 4, 64, 16}, dt);
  }
}

// Several sequences of different lengths in one call: full prefills, decode steps, a prefix
// hit (queries start mid-sequence), a later chunk of a chunked prefill, long enough to be
// split into several work items.
TEST(PagedAttention, MixedBatch) {
  const std::vector<Seq> mixed{{50, 50}, {33, 1}, {70, 20}, {1, 1}, {16, 1}, {300, 300}, {400, 150}, {129, 2}};
  for (auto dt : kDtypes) check(mixed, kGqa, dt, 3);
}

TEST(PagedAttention, GroupSizes) {
  const std::vector<Seq> mixed{{45, 45}, {81, 1}, {60, 13}, {200, 200}};
  for (auto dt : kDtypes) {
    check(mixed, {8, 2, 64, 16}, dt);   // GQA, group 4
    check(mixed, {4, 4, 64, 16}, dt);   // MHA, group 1
    check(mixed, {8, 1, 64, 16}, dt);   // MQA, group 8
    check(mixed, {6, 2, 64, 16}, dt);   // group 3: tiles of 16 rows cut through groups
    check(mixed, {14, 2, 64, 16}, dt);  // group 7: decode takes heads 4 + 2 + 1
    check(mixed, {12, 2, 32, 16}, dt);  // group 6: 4 + 2, two head_dim vectors
  }
}

TEST(PagedAttention, HeadDims) {
  const std::vector<Seq> mixed{{45, 45}, {81, 1}, {60, 13}};
  for (auto dt : kDtypes)
    for (std::int64_t d : {64, 128, 40, 2, 256}) check(mixed, {8, 2, d, 16}, dt);
}

// Contexts that are not a multiple of the block size, blocks smaller and larger than the
// kernel's 16-key tiles.
TEST(PagedAttention, BlockSizes) {
  const std::vector<Seq> mixed{{45, 45}, {81, 1}, {61, 13}, {7, 7}};
  for (auto dt : kDtypes)
    for (std::int64_t bs : {1, 5, 16, 32, 48}) check(mixed, {8, 2, 64, bs}, dt);
}

// Large logits: the running max grows from key tile to key tile, so the rescaling of the
// partial output is exercised (and a missing rescale shows).
TEST(PagedAttention, LargeLogitsStayExact) {
  const std::vector<Seq> seqs{{90, 90}, {200, 1}, {150, 40}};
  auto b = make_batch(seqs, kGqa, torch::kFloat32, 7);
  b.q = b.q * 8;
  // Keys grow with position, so later tiles hold larger scores for positive q.k.
  for (auto& k : b.k) k = k + torch::linspace(0, 3, k.size(0)).view({-1, 1, 1});
  std::vector<std::int64_t> slots;
  for (std::size_t s = 0; s < seqs.size(); ++s)
    for (std::int64_t p = 0; p < seqs[s].ctx; ++p)
      slots.push_back(b.block_tables[static_cast<std::int64_t>(s)][p / 16].item<std::int64_t>() * 16 + p % 16);
  kernels::write_kv_cache(torch::cat(b.k), torch::cat(b.v), b.k_cache, b.v_cache, torch::tensor(slots));
  const auto out = run_kernel(b);
  EXPECT_LE(max_diff(out, run_reference(b)), 1e-4);
  EXPECT_LE(max_diff(out, run_dense(b, seqs)), 1e-4);
}

// The kernel follows the table: swapping two blocks of a sequence changes its output.
TEST(PagedAttention, FollowsTheBlockTable) {
  auto b = make_batch({{40, 40}}, kGqa, torch::kFloat32, 5);
  const auto before = run_kernel(b);
  auto t = b.block_tables.clone();
  t[0][0] = b.block_tables[0][1];
  t[0][1] = b.block_tables[0][0];
  b.block_tables = t;
  const auto after = run_kernel(b);
  EXPECT_GT(max_diff(before, after), 1e-2);
  EXPECT_LE(max_diff(after, run_reference(b)), 1e-5);
}

// A row's result does not depend on which other rows share its call: a prefix-cache hit
// (only the suffix queried), a later prefill chunk or a decode step reproduce the rows of
// the cold full prefill bit for bit.
TEST(PagedAttention, RowsDoNotDependOnTheirBatch) {
  for (auto dt : kDtypes)
    for (const Shape& sh : {kGqa, Shape{4, 4, 40, 16}}) {
      auto full = make_batch({{150, 150}}, sh, dt, 8);
      const auto cold = run_kernel(full);
      for (std::int64_t first : {37, 100, 148, 149}) {  // cached prefix length
        Batch part = full;
        part.q = full.q.narrow(0, first, 150 - first).contiguous();
        part.query_start = torch::tensor({0, static_cast<int>(150 - first)}, torch::kInt32);
        const auto got = run_kernel(part), want = cold.narrow(0, first, 150 - first);
        if (first < 149)  // prefill chunks: bit for bit
          EXPECT_TRUE(torch::equal(got, want)) << c10::toString(dt) << " head_dim " << sh.head_dim << " prefix " << first;
        else  // one row is a decode step, which may take its own kernel: equal to rounding
          EXPECT_LE(max_diff(got, want), dt == torch::kFloat32 ? 1e-5 : 2e-2) << c10::toString(dt);
      }
    }
}

// Work items are computed independently, so the thread count cannot change a bit.
TEST(PagedAttention, SameResultOnOneThread) {
  const auto b = make_batch({{300, 300}, {81, 1}, {150, 40}}, kGqa, torch::kFloat32, 9);
  const auto threads = at::get_num_threads();
  const auto many = run_kernel(b);
  at::set_num_threads(1);
  const auto one = run_kernel(b);
  at::set_num_threads(threads);
  EXPECT_TRUE(torch::equal(one, many));
}

TEST(PagedAttention, EmptyBatchAndEmptySequences) {
  // A sequence with no new tokens (contributes no rows) beside one that has some.
  const auto b = make_batch({{20, 0}, {30, 3}}, kGqa, torch::kFloat32, 2);
  EXPECT_LE(max_diff(run_kernel(b), run_reference(b)), 1e-5);
  const auto e = make_batch({{20, 0}}, kGqa, torch::kFloat32, 2);
  EXPECT_EQ(run_kernel(e).size(0), 0);
}

// fp16 on the CPU has no hand-written kernel: the reference answers.
TEST(PagedAttention, Fp16FallsBackToReference) {
  const auto b = make_batch({{33, 33}, {50, 1}}, kGqa, torch::kFloat16, 4);
  const auto out = run_kernel(b);
  EXPECT_EQ(out.scalar_type(), torch::kFloat16);
  EXPECT_LE(max_diff(out, run_dense(b, {{33, 33}, {50, 1}})), 1e-2);
}

namespace {

// Where the CUDA test's metadata lives: on the host (copied per call), on the GPU, or on the
// host with a packed GPU copy passed along (as the engine does).
enum class Meta { Host, Gpu, HostAndPacked };

// The CUDA kernel on a batch built on the CPU (poisoned rows and table entries included):
// q and the caches copied to the GPU, the result against dense SDPA on the CPU.
void check_cuda(const std::vector<Seq>& seqs, const Shape& sh, torch::ScalarType dt, std::uint64_t seed = 1,
                Meta where = Meta::Host) {
  const auto b = make_batch(seqs, sh, dt, seed);
  auto meta = [&](const torch::Tensor& t) { return where == Meta::Gpu ? t.cuda() : t; };
  const auto packed = where == Meta::HostAndPacked
                          ? kernels::pack_attention_metadata(b.query_start, b.context_lens, b.block_tables, torch::kCUDA)
                          : torch::Tensor();
  const kernels::KvCache kc{b.k_cache.cuda(), {}, 0}, vc{b.v_cache.cuda(), {}, 0};
  const auto out = kernels::paged_attention(b.q.cuda(), kc, vc, meta(b.query_start), meta(b.context_lens),
                                            meta(b.block_tables), b.scale, packed);
  const std::string what = describe(sh, dt);
  ASSERT_TRUE(out.is_cuda()) << what;
  ASSERT_EQ(out.scalar_type(), dt) << what;
  const auto got = out.cpu();
  EXPECT_TRUE(torch::isfinite(got).all().item<bool>()) << what;
  EXPECT_LE(max_diff(got, run_dense(b, seqs)), dt == torch::kFloat32 ? 2e-5 : 2e-2) << what;
}

}  // namespace

TEST(PagedAttentionCuda, MatchesDenseAttention) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU on this machine";
  const std::vector<Seq> mixed{{50, 50}, {33, 1}, {70, 20}, {1, 1}, {20, 0}, {16, 1}, {300, 300}, {400, 150}, {129, 2}};
  for (auto dt : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
    check_cuda(mixed, kGqa, dt, 3);
    check_cuda({{17, 1}, {64, 1}, {300, 1}, {2, 1}}, kGqa, dt, 4, Meta::Gpu);
    check_cuda(mixed, kGqa, dt, 5, Meta::HostAndPacked);
    for (const Shape& sh : {Shape{4, 4, 64, 16}, Shape{8, 1, 64, 16}, Shape{14, 2, 64, 16}, Shape{12, 2, 32, 16}})
      check_cuda({{45, 45}, {81, 1}, {60, 13}, {200, 200}}, sh, dt);
    for (std::int64_t d : {128, 40, 2, 256, 96}) check_cuda({{45, 45}, {81, 1}, {60, 13}}, {8, 2, d, 16}, dt);
    for (std::int64_t bs : {1, 5, 32, 48}) check_cuda({{45, 45}, {81, 1}, {61, 13}, {7, 7}}, {8, 2, 64, bs}, dt);
  }
}

// Large logits: the online softmax rescales its running sums as the maximum grows.
TEST(PagedAttentionCuda, LargeLogitsStayExact) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU on this machine";
  const std::vector<Seq> seqs{{90, 90}, {200, 1}, {150, 40}};
  auto b = make_batch(seqs, kGqa, torch::kFloat32, 7);
  b.q = b.q * 8;
  const auto out = kernels::paged_attention(b.q.cuda(), b.k_cache.cuda(), b.v_cache.cuda(), b.query_start,
                                            b.context_lens, b.block_tables, b.scale);
  EXPECT_LE(max_diff(out.cpu(), run_dense(b, seqs)), 1e-4);
}

// The packed metadata the CUDA kernel reads: query_start | context_lens | block_tables.
TEST(PagedAttention, PackedMetadataLayout) {
  const auto b = make_batch({{20, 3}, {40, 1}}, kGqa, torch::kFloat32, 6);
  const auto packed = kernels::pack_attention_metadata(b.query_start, b.context_lens, b.block_tables, torch::kCPU);
  EXPECT_TRUE(torch::equal(packed, torch::cat({b.query_start, b.context_lens, b.block_tables.flatten()})));
  EXPECT_EQ(packed.scalar_type(), torch::kInt32);
}

// A device copy of the slots that does not match slot_mapping is refused.
TEST(PagedAttention, WriteKvCacheRejectsMismatchedDeviceSlots) {
  auto kc = torch::zeros({4, 2, 4, 8}), vc = torch::zeros({4, 2, 4, 8});
  kernels::KvCache k{kc, {}, 0}, v{vc, {}, 0};
  const auto x = torch::randn({3, 2, 8});
  const auto slots = torch::tensor({0, 5, 9}, torch::kInt64);
  EXPECT_THROW(kernels::write_kv_cache(x, x, k, v, slots, torch::tensor({0, 5}, torch::kInt64)), Error);
  EXPECT_THROW(kernels::write_kv_cache(x, x, k, v, slots, slots.to(torch::kInt32)), Error);
  kernels::write_kv_cache(x, x, k, v, slots, slots);
  EXPECT_TRUE(torch::equal(kc[1][0][1], x[1][0]));
}

TEST(PagedAttention, WriteKvCacheRoundTrip) {
  const std::int64_t blocks = 5, KVH = 2, bs = 4, D = 6;
  auto k_cache = torch::zeros({blocks, KVH, bs, D}, torch::kBFloat16);
  auto v_cache = torch::zeros({blocks, KVH, bs, D}, torch::kBFloat16);
  const auto k = torch::randn({3, KVH, D});  // fp32 into a bf16 cache: cast on the way
  const auto v = torch::randn({3, KVH, D});
  const std::vector<std::int64_t> slots{13, 2, 19};  // block 3 row 1, block 0 row 2, block 4 row 3
  kernels::write_kv_cache(k, v, k_cache, v_cache, torch::tensor(slots));
  for (std::int64_t i = 0; i < 3; ++i)
    for (std::int64_t h = 0; h < KVH; ++h) {
      const auto blk = slots[static_cast<std::size_t>(i)] / bs, row = slots[static_cast<std::size_t>(i)] % bs;
      EXPECT_TRUE(torch::equal(k_cache[blk][h][row], k[i][h].to(torch::kBFloat16))) << i << " " << h;
      EXPECT_TRUE(torch::equal(v_cache[blk][h][row], v[i][h].to(torch::kBFloat16))) << i << " " << h;
    }
  // Nothing else was touched: 3 tokens x 2 heads x 6 values written in each cache.
  EXPECT_EQ((k_cache != 0).sum().item<std::int64_t>(), 3 * KVH * D);
  EXPECT_EQ((v_cache != 0).sum().item<std::int64_t>(), 3 * KVH * D);
}

TEST(PagedAttention, RejectsBadInput) {
  const auto b = make_batch({{20, 20}, {10, 1}}, kGqa, torch::kFloat32, 6);
  auto call = [&](const torch::Tensor& q, const torch::Tensor& kc, const torch::Tensor& vc, const torch::Tensor& qs,
                  const torch::Tensor& cl, const torch::Tensor& bt) {
    return kernels::paged_attention(q, kc, vc, qs, cl, bt, b.scale);
  };
  const auto &q = b.q, &kc = b.k_cache, &vc = b.v_cache, &qs = b.query_start, &cl = b.context_lens,
             &bt = b.block_tables;
  EXPECT_ERROR_MENTIONS(call(q.flatten(1), kc, vc, qs, cl, bt), "q must be");
  EXPECT_ERROR_MENTIONS(call(q.narrow(2, 0, 32), kc, vc, qs, cl, bt), "head_dim");
  EXPECT_ERROR_MENTIONS(call(q.narrow(1, 0, 3), kc, vc, qs, cl, bt), "multiple");
  EXPECT_ERROR_MENTIONS(call(q.to(torch::kBFloat16), kc, vc, qs, cl, bt), "dtype");
  EXPECT_ERROR_MENTIONS(call(q, kc, vc.narrow(0, 0, 2), qs, cl, bt), "v_cache");
  EXPECT_ERROR_MENTIONS(call(q, kc.flatten(2), vc.flatten(2), qs, cl, bt), "k_cache must be");
  EXPECT_ERROR_MENTIONS(call(q, kc, vc, qs.to(torch::kInt64), cl, bt), "int32");
  EXPECT_ERROR_MENTIONS(call(q, kc, vc, qs.narrow(0, 0, 2), cl, bt), "query_start");
  EXPECT_ERROR_MENTIONS(call(q, kc, vc, qs, cl, bt.narrow(0, 0, 1)), "block_tables");
  EXPECT_ERROR_MENTIONS(call(q.narrow(0, 0, 20), kc, vc, qs, cl, bt), "rows of q");
  EXPECT_ERROR_MENTIONS(call(q, kc, vc, qs, cl - 1, bt), "query rows but a context");
  EXPECT_ERROR_MENTIONS(call(q, kc, vc, qs, cl + 100, bt), "blocks");
  auto bad_block = bt.clone();
  bad_block[1][0] = 1000;
  EXPECT_ERROR_MENTIONS(call(q, kc, vc, qs, cl, bad_block), "block 1000");
  auto odd = make_batch({{5, 5}}, {2, 1, 3, 4}, torch::kFloat32, 1);
  EXPECT_ERROR_MENTIONS(run_kernel(odd), "even");

  auto k_cache = torch::zeros({2, 2, 4, 8}), v_cache = torch::zeros({2, 2, 4, 8});
  const auto k = torch::randn({3, 2, 8}), slots = torch::tensor(std::vector<std::int64_t>{0, 1, 2});
  EXPECT_ERROR_MENTIONS(kernels::write_kv_cache(k, k.narrow(0, 0, 2), k_cache, v_cache, slots), "differs");
  EXPECT_ERROR_MENTIONS(kernels::write_kv_cache(k.narrow(2, 0, 4), k.narrow(2, 0, 4), k_cache, v_cache, slots),
                        "does not fit");
  EXPECT_ERROR_MENTIONS(kernels::write_kv_cache(k, k, k_cache, v_cache, slots.to(torch::kInt32)), "slot_mapping");
  EXPECT_ERROR_MENTIONS(kernels::write_kv_cache(k, k, k_cache, v_cache, slots + 6), "outside");
  EXPECT_ERROR_MENTIONS(kernels::write_kv_cache(k.to(torch::kInt32), k, k_cache, v_cache, slots), "floating");
}

// LLMCTL_BENCH_ATTENTION=1 prints timings of the kernel and of torch's SDPA on the same
// (dense) data: a 512-token causal prefill and a batch-1 decode step at 512 context, the
// shapes of minimind2-small, on the current thread count and on one thread.
TEST(PagedAttention, Benchmark) {
  const char* env = std::getenv("LLMCTL_BENCH_ATTENTION");
  if (!env || std::string(env) != "1") GTEST_SKIP() << "set LLMCTL_BENCH_ATTENTION=1 to time";
  const auto threads = at::get_num_threads();
  for (auto dt : kDtypes)
    for (int nt : {threads, 1}) {
      at::set_num_threads(nt);
      const auto b = make_batch({{512, 512}}, kGqa, dt, 1);
      const auto H = kGqa.heads, G = kGqa.heads / kGqa.kv_heads;
      const auto q = b.q.transpose(0, 1).unsqueeze(0).contiguous();
      const auto k = b.k[0].transpose(0, 1).repeat_interleave(G, 0).unsqueeze(0).contiguous();
      const auto v = b.v[0].transpose(0, 1).repeat_interleave(G, 0).unsqueeze(0).contiguous();
      const double kernel = best_ms([&] { run_kernel(b); });
      const double sdpa = best_ms([&] { at::scaled_dot_product_attention(q, k, v, {}, 0.0, true, b.scale); });
      // Decode: the last token alone against the whole context.
      Batch d = b;
      d.q = b.q.narrow(0, 511, 1).contiguous();
      d.query_start = torch::tensor({0, 1}, torch::kInt32);
      const auto qd = q.narrow(2, 511, 1).contiguous();
      const double kernel_dec = best_ms([&] { run_kernel(d); });
      const double sdpa_dec = best_ms([&] { at::scaled_dot_product_attention(qd, k, v, {}, 0.0, false, b.scale); });
      std::printf("[bench] %s, %d thread(s), heads %ld/%ld, head_dim %ld: prefill 512: kernel %.3f ms, sdpa %.3f ms;"
                  " decode at 512: kernel %.1f us, sdpa %.1f us\n",
                  c10::toString(dt), nt, static_cast<long>(H), static_cast<long>(kGqa.kv_heads),
                  static_cast<long>(kGqa.head_dim), kernel, sdpa, kernel_dec * 1e3, sdpa_dec * 1e3);
    }
  at::set_num_threads(threads);
}

// LLMCTL_BENCH_ATTENTION=1: one decode step of the engine's 64-sequence benchmark: 8
// layers' caches (minimind2-small), 64 sequences at context 160, blocks handed out the way
// the block manager does when all sequences grow together (sequence s's j-th block is
// j * 64 + s). "from DRAM": each layer its own cache, ~84 MB (f32) of K/V per step that no
// cache holds; "in cache": one layer's 10.5 MB read 8 times (the kernel's arithmetic alone).
TEST(PagedAttention, DecodeStepBenchmark) {
  const char* env = std::getenv("LLMCTL_BENCH_ATTENTION");
  if (!env || std::string(env) != "1") GTEST_SKIP() << "set LLMCTL_BENCH_ATTENTION=1 to time";
  constexpr std::int64_t kLayers = 8, kSeqs = 64, kCtx = 160, kBlocks = 1024;
  const auto& sh = kGqa;
  const auto used = (kCtx + sh.block_size - 1) / sh.block_size;
  auto tables = torch::empty({kSeqs, used}, torch::kInt32);
  for (std::int64_t s = 0; s < kSeqs; ++s)
    for (std::int64_t j = 0; j < used; ++j) tables[s][j] = static_cast<std::int32_t>(j * kSeqs + s);
  const auto starts = torch::arange(kSeqs + 1, torch::kInt32);
  const auto lens = torch::full({kSeqs}, kCtx, torch::kInt32);
  for (const auto& [dt, bits] : std::vector<std::pair<torch::ScalarType, int>>{
           {torch::kFloat32, 0}, {torch::kBFloat16, 0}, {torch::kBFloat16, 8}, {torch::kBFloat16, 4}}) {
    std::vector<kernels::KvCache> k, v;
    for (std::int64_t l = 0; l < kLayers; ++l) {
      for (auto* c : {&k, &v}) {
        c->push_back(kernels::empty_kv_cache(kBlocks, sh.kv_heads, sh.block_size, sh.head_dim, dt, bits, torch::kCPU));
        if (bits == 0) {
          c->back().data.normal_();
        } else {
          c->back().data.random_(0, 256);
          c->back().params.select(-1, 0).uniform_(0.01, 0.02);
          c->back().params.select(-1, 1).uniform_(-1, 0);
        }
      }
    }
    const auto q = torch::randn({kSeqs, sh.heads, sh.head_dim}).to(dt);
    const double scale = 1.0 / std::sqrt(static_cast<double>(sh.head_dim));
    const double bytes = 2.0 * kLayers * kSeqs * kCtx * sh.kv_heads *
                         kernels::kv_cache_block_bytes(1, 1, sh.head_dim, dt, bits);
    for (bool in_cache : {false, true}) {
      std::vector<double> ms;
      for (int rep = 0; rep < 21; ++rep) {
        const auto t0 = std::chrono::steady_clock::now();
        for (std::int64_t l = 0; l < kLayers; ++l) {
          const auto c = in_cache ? 0 : l;
          kernels::paged_attention(q, k[c], v[c], starts, lens, tables, scale);
        }
        ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      }
      std::sort(ms.begin(), ms.end());
      const double med = ms[ms.size() / 2];
      std::printf("[bench] decode step, %s, KV %s, %d thread(s), 8 layers x 64 sequences x context 160, %s: %.2f ms"
                  " median (%.2f min), K/V %.1f MB at %.1f GB/s\n",
                  c10::toString(dt), bits ? (bits == 8 ? "int8" : "int4") : "unquantised", at::get_num_threads(),
                  in_cache ? "in cache" : "from DRAM", med, ms[0],
                  bytes / 1e6, bytes / (med * 1e6));
    }
  }
}
