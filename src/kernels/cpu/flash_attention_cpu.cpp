#include "flash_attention_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "simd.h"

namespace llmctl::kernels::cpu {

#if defined(__x86_64__) && defined(__GNUC__)
#define LLMCTL_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,fma")))
#else
#define LLMCTL_BF16
#endif

namespace {

using bf16 = c10::BFloat16;
constexpr std::int64_t kBlock = 64;         // query rows per block
constexpr std::int64_t kMaxTime = 16384;    // beyond this the per-thread score rows outgrow L2 badly
constexpr std::int64_t kMaxHeadDim = 256;

std::int64_t round_up(std::int64_t x, std::int64_t m) { return (x + m - 1) / m * m; }

// Operand layouts. A (left) operands are bf16 rows read in pairs of consecutive k. B (right)
// operands are "VNNI packed": for each pair of consecutive k, the 16 columns of a vector
// hold (B[k][n], B[k+1][n]) side by side, i.e. element (k, n) lives at
// [(k / 2) * ldb + n] * 2 + k % 2. One vdpbf16ps then multiplies a broadcast A pair by 16
// columns at once.

// Rows src[r][0..D) (row stride ld) as the *columns* of B (B[d][r] = src[r][d]): the pair
// (d, d+1) of a row is already adjacent, so this is a transpose of 32-bit words. Columns
// rows..ncols are zero.
void pack_rows_as_columns(const bf16* src, std::int64_t ld, std::int64_t rows, std::int64_t ncols, std::int64_t D,
                          bf16* dst) {
  auto* out = reinterpret_cast<std::uint32_t*>(dst);
  for (std::int64_t r = 0; r < ncols; ++r)
    for (std::int64_t p = 0; p < D / 2; ++p) {
      std::uint32_t w = 0;
      if (r < rows) std::memcpy(&w, src + r * ld + 2 * p, 4);
      out[p * ncols + r] = w;
    }
}

// Rows src[r][0..D) as the *rows* of B (B[r][d] = src[r][d]): rows r and r+1 interleaved.
// Rows rows..krows are zero (krows even).
void pack_rows_as_rows(const bf16* src, std::int64_t ld, std::int64_t rows, std::int64_t krows, std::int64_t D,
                       bf16* dst) {
  const bf16 zero(0.0f);
  for (std::int64_t r = 0; r < krows; ++r)
    for (std::int64_t d = 0; d < D; ++d) dst[2 * ((r / 2) * D + d) + (r & 1)] = r < rows ? src[r * ld + d] : zero;
}

// fp32 rows x[r][0..n) (r < m) as B rows for the next product, rounded to bf16; row m is
// zero when m is odd.
LLMCTL_BF16 void pack_fp32_as_rows(const float* x, std::int64_t ldx, std::int64_t m, std::int64_t n, bf16* dst) {
  for (std::int64_t r = 0; r < m; r += 2) {
    const float *x0 = x + r * ldx, *x1 = x0 + ldx;
    bf16* d = dst + r * n;  // rows r and r + 1 interleaved
    for (std::int64_t j = 0; j < n; ++j) {
      store(d, 2 * j, x0[j]);
      store(d, 2 * j + 1, r + 1 < m ? x1[j] : 0.0f);
    }
  }
}

// fp32 rows as a bf16 A operand (row-major, same leading dimension).
LLMCTL_BF16 void fp32_rows_to_bf16(const float* x, std::int64_t m, std::int64_t n, bf16* dst) {
  for (std::int64_t i = 0; i < m * n; ++i) store(dst, i, x[i]);
}

// A block of bf16 rows src[i][0..D) (i < m) transposed into dst[d][i] (row length kBlock),
// with column m zero when m is odd (the products read columns in pairs).
void transpose_block(const bf16* src, std::int64_t ld, std::int64_t m, std::int64_t D, bf16* dst) {
  for (std::int64_t d = 0; d < D; ++d) {
    for (std::int64_t i = 0; i < m; ++i) dst[d * kBlock + i] = src[i * ld + d];
    if (m % 2) dst[d * kBlock + m] = bf16(0.0f);
  }
}

#if defined(__x86_64__) && defined(__GNUC__)

// C[MR x 16 NC] (+)= A[MR x K] * B[K x 16 NC], K even; MR x NC fp32 vectors of
// accumulators stay in registers for the whole K loop.
template <int MR, int NC>
LLMCTL_BF16 void tile(const bf16* a, std::int64_t lda, const bf16* bp, std::int64_t ldb, std::int64_t k, float* c,
                      std::int64_t ldc, bool accumulate) {
  __m512 acc[MR][NC];
  for (int r = 0; r < MR; ++r)
    for (int n = 0; n < NC; ++n) acc[r][n] = accumulate ? _mm512_loadu_ps(c + r * ldc + 16 * n) : _mm512_setzero_ps();
  for (std::int64_t p = 0; p < k / 2; ++p) {
    __m512bh b[NC];
    for (int n = 0; n < NC; ++n) b[n] = (__m512bh)_mm512_loadu_si512(bp + 2 * (p * ldb + 16 * n));
    for (int r = 0; r < MR; ++r) {
      std::int32_t pair;
      std::memcpy(&pair, a + r * lda + 2 * p, 4);
      const __m512bh x = (__m512bh)_mm512_set1_epi32(pair);
      for (int n = 0; n < NC; ++n) acc[r][n] = _mm512_dpbf16_ps(acc[r][n], x, b[n]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int n = 0; n < NC; ++n) _mm512_storeu_ps(c + r * ldc + 16 * n, acc[r][n]);
}

using TileFn = void (*)(const bf16*, std::int64_t, const bf16*, std::int64_t, std::int64_t, float*, std::int64_t, bool);
constexpr int kTileRows = 6, kTileVecs = 4;
constexpr TileFn kTiles[kTileRows][kTileVecs] = {
    {&tile<1, 1>, &tile<1, 2>, &tile<1, 3>, &tile<1, 4>},
    {&tile<2, 1>, &tile<2, 2>, &tile<2, 3>, &tile<2, 4>},
    {&tile<3, 1>, &tile<3, 2>, &tile<3, 3>, &tile<3, 4>},
    {&tile<4, 1>, &tile<4, 2>, &tile<4, 3>, &tile<4, 4>},
    {&tile<5, 1>, &tile<5, 2>, &tile<5, 3>, &tile<5, 4>},
    {&tile<6, 1>, &tile<6, 2>, &tile<6, 3>, &tile<6, 4>}};

// C[m x n] (+)= A[m x k] * B[k x n]: A bf16 rows (lda), B VNNI packed (ldb), C fp32 (ldc);
// k even, n a multiple of 16. Panels of 64 columns so B's panel stays in L1 over the rows.
void gemm(std::int64_t m, std::int64_t n, std::int64_t k, const bf16* a, std::int64_t lda, const bf16* bp,
          std::int64_t ldb, float* c, std::int64_t ldc, bool accumulate) {
  for (std::int64_t n0 = 0; n0 < n; n0 += 16 * kTileVecs) {
    const auto vecs = std::min<std::int64_t>(kTileVecs, (n - n0) / 16);
    for (std::int64_t m0 = 0; m0 < m; m0 += kTileRows) {
      const auto rows = std::min<std::int64_t>(kTileRows, m - m0);
      kTiles[rows - 1][vecs - 1](a + m0 * lda, lda, bp + 2 * n0, ldb, k, c + m0 * ldc + n0, ldc, accumulate);
    }
  }
}

// Row r of a block (query i0 + r) sees keys 0..i0 + r. Scores become probabilities in place:
// p = exp(scale s - lse) on visible keys, 0 on the rest up to n.
LLMCTL_BF16 void probabilities(float* row, std::int64_t n, std::int64_t last, float scale, float lse) {
  for (std::int64_t j = 0; j < n; ++j) row[j] = j <= last ? exp_approx(row[j] * scale - lse) : 0.0f;
}

// Reductions in 16 independent lanes, so they vectorise without reassociation.
LLMCTL_BF16 float row_max(const float* row, std::int64_t last, float scale) {
  float lane[16];
  for (auto& l : lane) l = -INFINITY;
  std::int64_t j = 0;
  for (; j + 16 <= last + 1; j += 16)
    for (int l = 0; l < 16; ++l) lane[l] = lane[l] > row[j + l] ? lane[l] : row[j + l];
  float m = -INFINITY;
  for (float l : lane) m = std::max(m, l);
  for (; j <= last; ++j) m = std::max(m, row[j]);
  return m * scale;  // scale > 0
}

LLMCTL_BF16 float row_sum(const float* row, std::int64_t n) {
  float lane[16] = {};
  std::int64_t j = 0;
  for (; j + 16 <= n; j += 16)
    for (int l = 0; l < 16; ++l) lane[l] += row[j + l];
  float s = 0;
  for (int l = 0; l < 16; ++l) s += lane[l];
  for (; j < n; ++j) s += row[j];
  return s;
}

// dS = P (dP - D_i) in place in dp, where D_i = sum_d dO[i][d] O[i][d].
LLMCTL_BF16 void score_grad(const float* p, float* dp, std::int64_t n, float delta) {
  for (std::int64_t j = 0; j < n; ++j) dp[j] = p[j] * (dp[j] - delta);
}

// n a multiple of 16 (the head size).
LLMCTL_BF16 float dot_bf16(const bf16* a, const bf16* b, std::int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  for (std::int64_t d = 0; d < n; d += 16) acc = _mm512_fmadd_ps(load16(a + d), load16(b + d), acc);
  return hsum16(acc);
}

// Per-thread scratch, sized for the longest key range.
struct Scratch {
  std::vector<float> s, dp, o;
  std::vector<bf16> a, pairs_p, pairs_ds, qt, dot;
  Scratch(std::int64_t tpad, std::int64_t D, bool backward)
      : s(kBlock * tpad), o(kBlock * D), a(kBlock * tpad) {
    if (!backward) return;
    dp.resize(kBlock * tpad);
    pairs_p.resize(kBlock * tpad);
    pairs_ds.resize(kBlock * tpad);
    qt.resize(D * kBlock);
    dot.resize(D * kBlock);
  }
};

struct Dims {
  std::int64_t B, T, H, KV, D, G, tpad, ldq, ldk, blocks;
  float scale;
  explicit Dims(const AttentionShape& s)
      : B(s.batch), T(s.time), H(s.heads), KV(s.kv_heads), D(s.head_dim), G(s.heads / s.kv_heads),
        tpad(round_up(s.time, 16)), ldq(s.heads * s.head_dim), ldk(s.kv_heads * s.head_dim),
        blocks((s.time + kBlock - 1) / kBlock), scale(s.scale) {}
  // First row of (b, t, head) in a [B, T, heads, D] tensor with row stride ld.
  std::int64_t row(std::int64_t b, std::int64_t t, std::int64_t head, std::int64_t ld) const {
    return (b * T + t) * ld + head * D;
  }
};

void check_shape(const AttentionShape& s) {
  if (s.kv_heads <= 0 || s.heads % s.kv_heads != 0 || !flash_attention_bf16_usable(s.head_dim, s.time))
    throw std::invalid_argument("flash attention (bf16 CPU): unsupported shape or CPU");
}

#endif

}  // namespace

#if defined(__x86_64__) && defined(__GNUC__)

bool flash_attention_bf16_usable(std::int64_t head_dim, std::int64_t time) {
  // With AMX, LibTorch's own flash kernel runs on AMX tiles (oneDNN brgemm) and its forward
  // is 2.5x this one (measured on a Xeon next to the lent H200: 2.3 vs 5.7 ms at the
  // training shape, backward 14.2 vs 11.6 ms), so this kernel is for AVX-512 BF16 CPUs
  // without it (AMD Zen 4/5, Intel Cooper Lake).
  return avx512_bf16_without_amx() && head_dim >= 16 && head_dim <= kMaxHeadDim && head_dim % 16 == 0 && time >= 1 &&
         time <= kMaxTime;
}

void flash_attention_bf16_forward(const AttentionShape& shape, const bf16* q, const bf16* k, const bf16* v, bf16* out,
                                  float* lse) {
  check_shape(shape);
  const Dims z(shape);
  const auto D = z.D, tpad = z.tpad;
  // K as columns (for s = q k^T) and V as rows (for o = p v), once per (batch, kv head).
  std::vector<bf16> kc(z.B * z.KV * tpad * D), vr(z.B * z.KV * tpad * D);
  at::parallel_for(0, z.B * z.KV, 1, [&](std::int64_t lo, std::int64_t hi) {
    for (auto bk = lo; bk < hi; ++bk) {
      const auto b = bk / z.KV, g = bk % z.KV;
      pack_rows_as_columns(k + z.row(b, 0, g, z.ldk), z.ldk, z.T, tpad, D, kc.data() + bk * tpad * D);
      pack_rows_as_rows(v + z.row(b, 0, g, z.ldk), z.ldk, z.T, tpad, D, vr.data() + bk * tpad * D);
    }
  });
  at::parallel_for(0, z.B * z.H * z.blocks, 1, [&](std::int64_t lo, std::int64_t hi) {
    Scratch w(tpad, D, false);
    std::vector<float> inv(kBlock);
    for (auto task = lo; task < hi; ++task) {
      const auto b = task / (z.H * z.blocks), h = task / z.blocks % z.H, i0 = task % z.blocks * kBlock;
      const auto m = std::min(kBlock, z.T - i0), n = round_up(i0 + m, 16);
      const auto bk = b * z.KV + h / z.G;
      gemm(m, n, D, q + z.row(b, i0, h, z.ldq), z.ldq, kc.data() + bk * tpad * D, tpad, w.s.data(), n, false);
      for (std::int64_t r = 0; r < m; ++r) {
        float* row = w.s.data() + r * n;
        const auto last = i0 + r;
        const float mx = row_max(row, last, z.scale);
        probabilities(row, n, last, z.scale, mx);
        const float sum = row_sum(row, n);
        inv[r] = 1.0f / sum;
        lse[(b * z.H + h) * z.T + last] = mx + std::log(sum);
      }
      fp32_rows_to_bf16(w.s.data(), m, n, w.a.data());
      gemm(m, D, n, w.a.data(), n, vr.data() + bk * tpad * D, D, w.o.data(), D, false);
      for (std::int64_t r = 0; r < m; ++r) {
        bf16* dst = out + z.row(b, i0 + r, h, z.ldq);
        for (std::int64_t d = 0; d < D; ++d) store(dst, d, w.o[r * D + d] * inv[r]);
      }
    }
  });
}

void flash_attention_bf16_backward(const AttentionShape& shape, const bf16* q, const bf16* k, const bf16* v,
                                   const bf16* out, const bf16* dout, const float* lse, bf16* dq, bf16* dk,
                                   bf16* dv) {
  check_shape(shape);
  const Dims z(shape);
  const auto D = z.D, tpad = z.tpad;
  // One task per (batch, kv head): it owns dK and dV of that head (accumulated over the
  // query heads of its group and over all query blocks) and writes dQ of those heads.
  at::parallel_for(0, z.B * z.KV, 1, [&](std::int64_t lo, std::int64_t hi) {
    Scratch w(tpad, D, true);
    std::vector<bf16> kc(tpad * D), vc(tpad * D), kr(tpad * D);
    std::vector<float> dkt(D * tpad), dvt(D * tpad);  // transposed: [d][key]
    for (auto bk = lo; bk < hi; ++bk) {
      const auto b = bk / z.KV, g = bk % z.KV;
      const bf16 *kb = k + z.row(b, 0, g, z.ldk), *vb = v + z.row(b, 0, g, z.ldk);
      pack_rows_as_columns(kb, z.ldk, z.T, tpad, D, kc.data());  // s  = q k^T
      pack_rows_as_columns(vb, z.ldk, z.T, tpad, D, vc.data());  // dp = do v^T
      pack_rows_as_rows(kb, z.ldk, z.T, tpad, D, kr.data());     // dq = ds k
      std::fill(dkt.begin(), dkt.end(), 0.0f);
      std::fill(dvt.begin(), dvt.end(), 0.0f);
      for (auto h = g * z.G; h < (g + 1) * z.G; ++h)
        for (std::int64_t blk = 0; blk < z.blocks; ++blk) {
          const auto i0 = blk * kBlock, m = std::min(kBlock, z.T - i0), n = round_up(i0 + m, 16);
          const auto mpad = round_up(m, 2);
          const bf16 *qb = q + z.row(b, i0, h, z.ldq), *ob = out + z.row(b, i0, h, z.ldq),
                     *gb = dout + z.row(b, i0, h, z.ldq);
          gemm(m, n, D, qb, z.ldq, kc.data(), tpad, w.s.data(), n, false);
          gemm(m, n, D, gb, z.ldq, vc.data(), tpad, w.dp.data(), n, false);
          for (std::int64_t r = 0; r < m; ++r) {
            const auto i = i0 + r;
            float* p = w.s.data() + r * n;
            probabilities(p, n, i, z.scale, lse[(b * z.H + h) * z.T + i]);
            score_grad(p, w.dp.data() + r * n, n, dot_bf16(gb + r * z.ldq, ob + r * z.ldq, D));
          }
          // dq = scale ds k
          fp32_rows_to_bf16(w.dp.data(), m, n, w.a.data());
          gemm(m, D, n, w.a.data(), n, kr.data(), D, w.o.data(), D, false);
          for (std::int64_t r = 0; r < m; ++r) {
            bf16* dst = dq + z.row(b, i0 + r, h, z.ldq);
            for (std::int64_t d = 0; d < D; ++d) store(dst, d, w.o[r * D + d] * z.scale);
          }
          // dk^T += q^T ds and dv^T += do^T p, the block's rows as the reduction.
          pack_fp32_as_rows(w.dp.data(), n, m, n, w.pairs_ds.data());
          pack_fp32_as_rows(w.s.data(), n, m, n, w.pairs_p.data());
          transpose_block(qb, z.ldq, m, D, w.qt.data());
          transpose_block(gb, z.ldq, m, D, w.dot.data());
          gemm(D, n, mpad, w.qt.data(), kBlock, w.pairs_ds.data(), n, dkt.data(), tpad, true);
          gemm(D, n, mpad, w.dot.data(), kBlock, w.pairs_p.data(), n, dvt.data(), tpad, true);
        }
      for (std::int64_t t = 0; t < z.T; ++t) {
        bf16 *dkr = dk + z.row(b, t, g, z.ldk), *dvr = dv + z.row(b, t, g, z.ldk);
        for (std::int64_t d = 0; d < D; ++d) {
          store(dkr, d, dkt[d * tpad + t] * z.scale);
          store(dvr, d, dvt[d * tpad + t]);
        }
      }
    }
  });
}

#else  // not x86-64 GCC: the callers always take LibTorch's attention

bool flash_attention_bf16_usable(std::int64_t, std::int64_t) { return false; }
void flash_attention_bf16_forward(const AttentionShape&, const bf16*, const bf16*, const bf16*, bf16*, float*) {
  throw std::logic_error("flash attention (bf16 CPU) is not built for this target");
}
void flash_attention_bf16_backward(const AttentionShape&, const bf16*, const bf16*, const bf16*, const bf16*,
                                   const bf16*, const float*, bf16*, bf16*, bf16*) {
  throw std::logic_error("flash attention (bf16 CPU) is not built for this target");
}

#endif

}  // namespace llmctl::kernels::cpu
