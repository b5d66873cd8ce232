#include "paged_attention_cpu.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "simd.h"

// Flash-style attention over one work item. The item's query rows are (token, head of the
// group) pairs, m = token * group + head, so each K/V row is read once for the whole GQA
// group. Rows go in tiles of W (one SIMD vector of fp32), stored transposed
// ([head_dim][W], pre-scaled), so a tile's scores against one key are one vector:
// s[j][:] += k[j][d] * qt[d][:] is a broadcast-multiply-add with no horizontal sums, and the
// softmax bookkeeping (max, exp, sum) runs across rows in the same vectors. Keys go in tiles
// of kKeys with an online softmax: a running max and sum per row, the fp32 output rescaled
// when the max grows.
namespace llmctl::kernels::cpu {
namespace {

// Row access to a cache, one set of overloads per row type (DenseRows<T>, QuantRows<Bits>):
// the raw bytes of rows (to prefetch), and row r as D fp32 values (dequantised if need be).
inline std::int64_t row_index(const PagedAttentionShape& sh, const PagedAttentionItem& it, std::int64_t pos) {
  return (static_cast<std::int64_t>(it.block_table[pos / sh.block_size]) * sh.kv_heads + it.kv_head) *
             sh.block_size + pos % sh.block_size;
}
// Into L2 (prefetcht1): cache blocks are scattered 4 KiB runs that the hardware prefetcher
// does not follow, and on Zen 4 a random 4 KiB-run read went from 21 to 35 GB/s with
// prefetcht1 one run ahead, while prefetcht0 changed nothing (L1's few miss buffers).
// Always inlined, as is everything that only prefetches: GCC deems a function whose only
// effect is a prefetch free of side effects and deletes the calls.
inline __attribute__((always_inline)) void prefetch_bytes(const void* p, std::int64_t bytes) {
  for (std::int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(static_cast<const char*>(p) + b, 0, 2);
}
// Rows r .. r+n-1 (one block's, so contiguous).
template <typename T>
inline __attribute__((always_inline)) void prefetch_rows(const DenseRows<T>& c, std::int64_t r, std::int64_t n,
                                                         std::int64_t D) {
  prefetch_bytes(c.data + r * D, n * D * static_cast<std::int64_t>(sizeof(T)));
}
template <int Bits>
inline __attribute__((always_inline)) void prefetch_rows(const QuantRows<Bits>& c, std::int64_t r, std::int64_t n,
                                                         std::int64_t D) {
  prefetch_bytes(c.codes + r * D * Bits / 8, n * D * Bits / 8);
  prefetch_bytes(c.params + 2 * r, n * 2 * static_cast<std::int64_t>(sizeof(float)));
}
template <typename T>
inline __attribute__((always_inline)) void row_to_fp32(const DenseRows<T>& c, std::int64_t r, std::int64_t D,
                                                       float* __restrict dst) {
  for (std::int64_t d = 0; d < D; ++d) dst[d] = load(c.data + r * D, d);
}
template <int Bits>
inline __attribute__((always_inline)) void row_to_fp32(const QuantRows<Bits>& c, std::int64_t r, std::int64_t D,
                                                       float* __restrict dst) {
  const float scale = c.params[2 * r], zero = c.params[2 * r + 1];
  const std::uint8_t* __restrict p = c.codes + r * D * Bits / 8;
  if constexpr (Bits == 8) {
    for (std::int64_t d = 0; d < D; ++d) dst[d] = static_cast<float>(p[d]) * scale + zero;
  } else {
    for (std::int64_t i = 0; i < D / 2; ++i) {
      dst[2 * i] = static_cast<float>(p[i] & 15) * scale + zero;
      dst[2 * i + 1] = static_cast<float>(p[i] >> 4) * scale + zero;
    }
  }
}
constexpr int kKeys = 16;  // keys per tile
constexpr int kPad = 16;   // head_dim is padded with zeros to a multiple of this (any W divides it)

// The two micro-kernels keep a few accumulator vectors in registers across their inner
// loop; plain loops over arrays leave that to chance (GCC spills them), GCC's vector types
// do not. vec<W>() views W floats at any float-aligned address as one vector.
template <int W>
struct Lanes {
  typedef float type __attribute__((vector_size(W * sizeof(float))));
  typedef float view __attribute__((vector_size(W * sizeof(float)), aligned(alignof(float)), may_alias));
};
template <int W>
inline __attribute__((always_inline)) typename Lanes<W>::view& vec(float* p) {
  return *reinterpret_cast<typename Lanes<W>::view*>(p);
}
template <int W>
inline __attribute__((always_inline)) const typename Lanes<W>::view& vec(const float* p) {
  return *reinterpret_cast<const typename Lanes<W>::view*>(p);
}

// s[j][:] = sum_{d < D} k[j][d] * qt[d][:] for the kKeys keys of a tile (rows of k have
// stride ld), four keys per pass so each load of qt feeds four multiply-adds.
template <int W>
inline __attribute__((always_inline)) void tile_scores(const float* __restrict qt, const float* __restrict k,
                                                       std::int64_t D, std::int64_t ld, float (*__restrict s)[W]) {
  using V = typename Lanes<W>::type;
  for (int j = 0; j < kKeys; j += 4) {
    const float *k0 = k + j * ld, *k1 = k0 + ld, *k2 = k1 + ld, *k3 = k2 + ld;
    V a0 = {}, a1 = {}, a2 = {}, a3 = {};
    for (std::int64_t d = 0; d < D; ++d) {
      const V x = vec<W>(qt + d * W);
      a0 += k0[d] * x;
      a1 += k1[d] * x;
      a2 += k2[d] * x;
      a3 += k3[d] * x;
    }
    vec<W>(s[j]) = a0;
    vec<W>(s[j + 1]) = a1;
    vec<W>(s[j + 2]) = a2;
    vec<W>(s[j + 3]) = a3;
  }
}

// For rows r .. r+3 of the tile: o_r = alpha[r] * o_r + sum_{j < n} p[j][r] * v[j], the four
// rows sharing each load of v. Rows of o and v have stride ld, a multiple of W.
template <int W>
inline __attribute__((always_inline)) void accumulate_values(float* __restrict o, const float* __restrict alpha,
                                                             const float (*__restrict p)[W], int r,
                                                             const float* __restrict v, int n, std::int64_t ld) {
  using V = typename Lanes<W>::type;
  float *o0 = o, *o1 = o0 + ld, *o2 = o1 + ld, *o3 = o2 + ld;
  for (std::int64_t c = 0; c < ld; c += W) {
    V a0 = alpha[r] * vec<W>(o0 + c), a1 = alpha[r + 1] * vec<W>(o1 + c), a2 = alpha[r + 2] * vec<W>(o2 + c),
      a3 = alpha[r + 3] * vec<W>(o3 + c);
    for (int j = 0; j < n; ++j) {
      const V x = vec<W>(v + j * ld + c);
      a0 += p[j][r] * x;
      a1 += p[j][r + 1] * x;
      a2 += p[j][r + 2] * x;
      a3 += p[j][r + 3] * x;
    }
    vec<W>(o0 + c) = a0;
    vec<W>(o1 + c) = a1;
    vec<W>(o2 + c) = a2;
    vec<W>(o3 + c) = a3;
  }
}

// Online softmax step for one row tile and key tile, vectorised across the rows: masks keys
// after each row's position, updates the running max `mx` and sum `l`, leaves the scale of
// the old output in `alpha` and the probabilities in s (exact zeros where masked). Key 0
// is visible to every row, so after the first key tile the max is finite.
template <int W>
inline __attribute__((always_inline)) void softmax_step(float (*__restrict s)[W], const float* __restrict pos,
                                                        float first_key, bool masked, float* __restrict mx,
                                                        float* __restrict l, float* __restrict alpha) {
  float mnew[W], sum[W] = {};
  for (int r = 0; r < W; ++r) mnew[r] = mx[r];
  if (masked)
    for (int j = 0; j < kKeys; ++j)
      for (int r = 0; r < W; ++r) s[j][r] = first_key + j <= pos[r] ? s[j][r] : -INFINITY;
  for (int j = 0; j < kKeys; ++j)
    for (int r = 0; r < W; ++r) mnew[r] = s[j][r] > mnew[r] ? s[j][r] : mnew[r];
  for (int j = 0; j < kKeys; ++j)
    for (int r = 0; r < W; ++r) {
      // exp_approx clamps, so -inf gives a tiny value: zero it (a product, not a branch,
      // so the loop vectorises)
      const float keep = first_key + j <= pos[r] ? 1.0f : 0.0f;
      const float p = exp_approx(s[j][r] - mnew[r]) * keep;
      s[j][r] = p;
      sum[r] += p;
    }
  for (int r = 0; r < W; ++r) {
    alpha[r] = exp_approx(mx[r] - mnew[r]);  // ~0 on the first key tile, where o and l are 0
    l[r] = l[r] * alpha[r] + sum[r];
    mx[r] = mnew[r];
  }
}

template <typename T, typename Rows, int W>
inline __attribute__((always_inline)) void attend(const T* q, const Rows& k_cache, const Rows& v_cache, T* out,
                                                  const PagedAttentionShape& sh, const PagedAttentionItem& it,
                                                  std::vector<float>& scratch) {
  const std::int64_t D = sh.head_dim, H = sh.heads, G = sh.heads / sh.kv_heads, bs = sh.block_size;
  const std::int64_t Dp = (D + kPad - 1) / kPad * kPad;  // rows padded with zeros to whole vectors
  const std::int64_t tokens = it.row_end - it.row_begin;
  const std::int64_t M = tokens * G;
  const std::int64_t tiles = (M + W - 1) / W, padded = tiles * W;
  const std::int64_t keys = it.first_pos + tokens;

  // Scratch: transposed queries, outputs, running max / sum, row positions, the K and V
  // tile in fp32.
  const std::size_t need = static_cast<std::size_t>(2 * padded * Dp + 3 * padded + 2 * kKeys * Dp);
  if (scratch.size() < need) scratch.resize(need);
  float* qt = scratch.data();
  float* o = qt + padded * Dp;
  float* mx = o + padded * Dp;
  float* l = mx + padded;
  float* pos = l + padded;  // positions as float (exact below 2^24) to compare in the score vectors
  float* kbuf = pos + padded;
  float* vbuf = kbuf + kKeys * Dp;

  for (std::int64_t m = 0; m < padded; ++m) {
    float* dst = qt + (m / W) * Dp * W + m % W;
    if (m < M) {
      const std::int64_t i = m / G, h = it.kv_head * G + m % G;
      const T* src = q + ((it.row_begin + i) * H + h) * D;
      for (std::int64_t d = 0; d < D; ++d) dst[d * W] = load(src, d) * sh.scale;
      pos[m] = static_cast<float>(it.first_pos + i);
    } else {  // padding rows: zero queries at the last row's position, never written out
      for (std::int64_t d = 0; d < D; ++d) dst[d * W] = 0.0f;
      pos[m] = static_cast<float>(keys - 1);
    }
    mx[m] = -INFINITY;
    l[m] = 0.0f;
  }
  std::fill(o, o + padded * Dp, 0.0f);
  std::fill(kbuf, kbuf + 2 * kKeys * Dp, 0.0f);  // keeps the padding columns and rows zero

  alignas(64) float s[kKeys][W];
  alignas(64) float alpha[W];
  // fp32 rows of whole vectors, blocks holding whole key tiles: each tile is read in place
  // from its block. Otherwise it is gathered (converted or dequantised by row_to_fp32) into
  // kbuf / vbuf. In place, the last tile's rows past the context hold whatever the block
  // holds: their scores are masked and their values never read.
  constexpr bool fp32_rows = std::is_same<Rows, DenseRows<float>>::value;
  const bool in_place = fp32_rows && D == Dp && bs % kKeys == 0;
  for (std::int64_t t0 = 0; t0 < keys; t0 += kKeys) {
    const int n = static_cast<int>(std::min<std::int64_t>(kKeys, keys - t0));
    const float *kt = kbuf, *vt = vbuf;
    if constexpr (fp32_rows) {
      if (in_place) {
        const std::int64_t off = row_index(sh, it, t0) * D;
        kt = k_cache.data + off;
        vt = v_cache.data + off;
      }
    }
    // The next tile sits in another block, somewhere else in the pool: ask for its K and V
    // now (decode reads the whole cache once per step, so it is memory-bound).
    if (t0 + kKeys < keys) {
      const std::int64_t p = t0 + kKeys, r = row_index(sh, it, p), span = std::min<std::int64_t>(kKeys, keys - p);
      prefetch_rows(k_cache, r, span, D);
      prefetch_rows(v_cache, r, span, D);
    }
    if (!in_place) {
      for (int j = 0; j < n; ++j) {
        const std::int64_t r = row_index(sh, it, t0 + j);
        row_to_fp32(k_cache, r, D, kbuf + j * Dp);
        row_to_fp32(v_cache, r, D, vbuf + j * Dp);
      }
      if (n < kKeys) {  // past the context (the last tile): finite zeros, masked below
        std::fill(kbuf + n * Dp, kbuf + kKeys * Dp, 0.0f);
        std::fill(vbuf + n * Dp, vbuf + kKeys * Dp, 0.0f);
      }
    }
    const float first_key = static_cast<float>(t0), last_key = static_cast<float>(t0 + kKeys - 1);
    for (std::int64_t t = 0; t < tiles; ++t) {
      const float* tp = pos + t * W;  // non-decreasing within the tile
      if (tp[W - 1] < first_key) continue;  // every row of the tile precedes these keys
      tile_scores<W>(qt + t * Dp * W, kt, D, Dp, s);
      // The causal diagonal (or the context's end) crosses the tile when its last key lies
      // after the first row's position.
      softmax_step<W>(s, tp, first_key, last_key > tp[0], mx + t * W, l + t * W, alpha);
      const int rows = static_cast<int>(std::min<std::int64_t>(W, M - t * W));
      for (int r = 0; r < rows; r += 4) {
        // keys after the block's last row have p = 0 for all four rows: skip them
        const int visible = std::min(n, static_cast<int>(tp[r + 3] - first_key) + 1);
        accumulate_values<W>(o + (t * W + r) * Dp, alpha, s, r, vt, visible, Dp);
      }
    }
  }

  for (std::int64_t m = 0; m < M; ++m) {
    const std::int64_t i = m / G, h = it.kv_head * G + m % G;
    T* dst = out + ((it.row_begin + i) * H + h) * D;
    const float* src = o + m * Dp;
    const float inv = 1.0f / l[m];
    for (std::int64_t d = 0; d < D; ++d) store(dst, d, src[d] * inv);
  }
}

// The vector width has to follow the instruction set (a 16-lane vector type compiled for
// AVX2 is split clumsily and runs several times slower), so instead of LLMCTL_SIMD_CLONES
// each width gets its own target and the CPU is checked once.
#if defined(__x86_64__) && defined(__GNUC__)
template <typename T, typename Rows>
__attribute__((target("avx512f,fma"))) void attend_avx512(const T* q, const Rows& k, const Rows& v, T* out,
                                                      const PagedAttentionShape& sh, const PagedAttentionItem& it,
                                                      std::vector<float>& scratch) {
  // Up to 8 query rows (a decode step of a group of up to 8 heads): half-width tiles waste
  // fewer lanes, and AVX-512 does not run them slower. (fma: so that they contract the same
  // multiply-adds as the full-width tiles, and a row's result does not depend on its batch.)
  const auto rows = (it.row_end - it.row_begin) * (sh.heads / sh.kv_heads);
  if (rows <= 4)  // a decode step of a group of up to 4 heads (GQA's usual 4:1)
    attend<T, Rows, 4>(q, k, v, out, sh, it, scratch);
  else if (rows <= 8)
    attend<T, Rows, 8>(q, k, v, out, sh, it, scratch);
  else
    attend<T, Rows, 16>(q, k, v, out, sh, it, scratch);
}
template <typename T, typename Rows>
__attribute__((target("avx2,fma"))) void attend_avx2(const T* q, const Rows& k, const Rows& v, T* out,
                                                     const PagedAttentionShape& sh, const PagedAttentionItem& it,
                                                     std::vector<float>& scratch) {
  attend<T, Rows, 8>(q, k, v, out, sh, it, scratch);
}
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#define LLMCTL_AVX512 __attribute__((target("avx512f,fma")))

// [x0+x1, x2+x3, y0+y1, y2+y3] over the 128-bit quarters of x and y. (The maskz forms of
// the intrinsics here avoid GCC 12's false "may be used uninitialized" on unmasked ones.)
LLMCTL_AVX512 inline __m512 add_quarter_pairs(__m512 x, __m512 y) {
  return _mm512_add_ps(_mm512_maskz_shuffle_f32x4(0xFFFF, x, y, 0x88), _mm512_maskz_shuffle_f32x4(0xFFFF, x, y, 0xDD));
}

// Sixteen vectors a[0..15] -> one vector whose lane i is the sum of a[i]'s lanes: a
// transpose-and-add tree (pairs of 32-bit lanes, then 64-bit, then 128-bit quarters), 3 ops
// per input instead of a horizontal sum each.
LLMCTL_AVX512 inline __m512 sum_lanes_16(const __m512* a) {
  __m512 c[8], d[4];
  for (int i = 0; i < 8; ++i)
    c[i] = _mm512_add_ps(_mm512_maskz_unpacklo_ps(0xFFFF, a[2 * i], a[2 * i + 1]),
                         _mm512_maskz_unpackhi_ps(0xFFFF, a[2 * i], a[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {
    const __m512d x = _mm512_castps_pd(c[2 * i]), y = _mm512_castps_pd(c[2 * i + 1]);
    d[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_maskz_unpacklo_pd(0xFF, x, y)),
                         _mm512_castpd_ps(_mm512_maskz_unpackhi_pd(0xFF, x, y)));
  }
  const __m512 e0 = add_quarter_pairs(d[0], d[1]), e1 = add_quarter_pairs(d[2], d[3]);
  return add_quarter_pairs(e0, e1);
}

// The 16 rows of a decode chunk (cache rows r0 .. r0 + n; the spare slots repeat row r0,
// whose scores land in lanes that are never read), as pointers straight into the cache:
// values (fp32 / bf16), or codes (Code8 / Code4 rows, one byte per element or per two) whose
// per-row (scale, zero) go to `aff`. A quantised row x = code * scale + zero enters the dot
// products as codes, and the affine map is applied to their results:
//   q.k = scale (q.codes) + zero sum(q);   sum_t p_t v_t = sum_t (p_t scale_t) codes_t + sum_t p_t zero_t.
struct Code8 {
  std::uint8_t byte;
};
struct Code4 {
  std::uint8_t byte;
};
struct ChunkAffine {
  alignas(64) float scale[16];
  alignas(64) float zero[16];
};
template <typename Rows>
struct RowElem;
template <typename T>
struct RowElem<DenseRows<T>> {
  using type = T;
  static constexpr bool quantized = false;
};
template <>
struct RowElem<QuantRows<8>> {
  using type = Code8;
  static constexpr bool quantized = true;
};
template <>
struct RowElem<QuantRows<4>> {
  using type = Code4;
  static constexpr bool quantized = true;
};
template <typename T>
inline void chunk_rows(const DenseRows<T>& c, std::int64_t r0, std::int64_t n, std::int64_t D, ChunkAffine*,
                       const T* (&p)[16]) {
  for (std::int64_t t = 0; t < 16; ++t) p[t] = c.data + (r0 + (t < n ? t : 0)) * D;
}
template <int Bits, typename C>
inline void chunk_rows(const QuantRows<Bits>& c, std::int64_t r0, std::int64_t n, std::int64_t D, ChunkAffine* aff,
                       const C* (&p)[16]) {
  for (std::int64_t t = 0; t < 16; ++t) {
    const std::int64_t r = r0 + (t < n ? t : 0);
    p[t] = reinterpret_cast<const C*>(c.codes + r * D * Bits / 8);
    aff->scale[t] = t < n ? c.params[2 * r] : 0.0f;
    aff->zero[t] = t < n ? c.params[2 * r + 1] : 0.0f;
  }
}

// Elements c*16 .. c*16+15 of a row as one fp32 vector (codes as their integer values).
LLMCTL_AVX512 inline __attribute__((always_inline)) __m512 vec16(const float* row, std::int64_t c) {
  return load16(row + c * 16);
}
LLMCTL_AVX512 inline __attribute__((always_inline)) __m512 vec16(const c10::BFloat16* row, std::int64_t c) {
  return load16(row + c * 16);
}
LLMCTL_AVX512 inline __attribute__((always_inline)) __m512 vec16(const Code8* row, std::int64_t c) {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c * 16));
  return _mm512_maskz_cvtepi32_ps(0xFFFF, _mm512_maskz_cvtepu8_epi32(0xFFFF, b));
}
LLMCTL_AVX512 inline __attribute__((always_inline)) __m512 vec16(const Code4* row, std::int64_t c) {
  // 8 bytes, element 2i in the low nibble of byte i: split the nibbles, interleave them back
  // into element order, widen.
  const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + c * 8));
  const __m128i lo = _mm_and_si128(b, _mm_set1_epi8(0x0F));
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(0x0F));
  return _mm512_maskz_cvtepi32_ps(0xFFFF, _mm512_maskz_cvtepu8_epi32(0xFFFF, _mm_unpacklo_epi8(lo, hi)));
}

// Scores of HG heads (queries q + h * D, pre-scaled) against the 16 rows of a chunk, into
// s[h * kp + 0 .. 15]. Each pass takes 16 / HG keys for all HG heads: every K vector is
// loaded (and widened) once for the whole head group, and the pass's 16 accumulators
// (head-major) are reduced together by sum_lanes_16. Quantised rows (aff non-null): the dot
// products with the codes become scale * dot + zero * qsum[h].
template <int HG, typename E>
LLMCTL_AVX512 inline __attribute__((always_inline)) void chunk_scores(const float* q, const float* qsum,
                                                                     std::int64_t D, const E* const* rp,
                                                                     const ChunkAffine* aff, float* s,
                                                                     std::int64_t kp) {
  constexpr int KT = 16 / HG;
  const std::int64_t nv = D / 16;
  for (int g = 0; g < HG; ++g) {
    __m512 acc[16];
    for (auto& a : acc) a = _mm512_setzero_ps();
    for (std::int64_t c = 0; c < nv; ++c) {
      if constexpr (HG == 1) {  // 16 keys of one head: no K vector is reused, load as used
        const __m512 qv = _mm512_loadu_ps(q + c * 16);
        for (int t = 0; t < 16; ++t) acc[t] = _mm512_fmadd_ps(qv, vec16(rp[t], c), acc[t]);
      } else {
        __m512 kv[KT];
        for (int t = 0; t < KT; ++t) kv[t] = vec16(rp[g * KT + t], c);
        for (int h = 0; h < HG; ++h) {
          const __m512 qv = _mm512_loadu_ps(q + h * D + c * 16);
          for (int t = 0; t < KT; ++t) acc[h * KT + t] = _mm512_fmadd_ps(qv, kv[t], acc[h * KT + t]);
        }
      }
    }
    const __m512 r = sum_lanes_16(acc);  // lane h * KT + t: head h, key g * KT + t
    if constexpr (HG == 1) {
      if (aff)
        _mm512_storeu_ps(s, _mm512_fmadd_ps(r, _mm512_load_ps(aff->scale),
                                            _mm512_mul_ps(_mm512_load_ps(aff->zero), _mm512_set1_ps(qsum[0]))));
      else
        _mm512_storeu_ps(s, r);
    } else {
      alignas(64) float lanes[16];
      _mm512_store_ps(lanes, r);
      for (int h = 0; h < HG; ++h)
        for (int t = 0; t < KT; ++t) {
          const int key = g * KT + t;
          s[h * kp + key] = aff ? lanes[h * KT + t] * aff->scale[key] + aff->zero[key] * qsum[h] : lanes[h * KT + t];
        }
    }
  }
}

// o[h] += sum_{t < n} p[h * kp + t] * v[t] for HG heads: each V vector is loaded once for
// the group, and the outputs of a 4-vector head_dim slice stay in registers over the rows.
// Quantised rows: the codes are weighted by p * scale, and zsum[h] gathers sum p * zero (to
// add to every element of o[h] at the end).
template <int HG, typename E>
LLMCTL_AVX512 inline __attribute__((always_inline)) void chunk_values(const float* p, std::int64_t kp,
                                                                     const E* const* rp, const ChunkAffine* aff,
                                                                     std::int64_t n, std::int64_t D, float* o,
                                                                     float* zsum) {
  const std::int64_t nv = D / 16;
  if (aff)
    for (int h = 0; h < HG; ++h)
      for (std::int64_t t = 0; t < n; ++t) zsum[h] += p[h * kp + t] * aff->zero[t];
  for (std::int64_t c0 = 0; c0 < nv; c0 += 4) {
    const std::int64_t cn = std::min<std::int64_t>(4, nv - c0);
    __m512 acc[HG][4];
    for (int h = 0; h < HG; ++h)
      for (int c = 0; c < 4; ++c)
        acc[h][c] = c < cn ? _mm512_loadu_ps(o + h * D + (c0 + c) * 16) : _mm512_setzero_ps();
    for (std::int64_t t = 0; t < n; ++t) {
      __m512 v[4];
      for (int c = 0; c < 4; ++c) v[c] = c < cn ? vec16(rp[t], c0 + c) : _mm512_setzero_ps();
      for (int h = 0; h < HG; ++h) {
        const __m512 pv = _mm512_set1_ps(aff ? p[h * kp + t] * aff->scale[t] : p[h * kp + t]);
        for (int c = 0; c < 4; ++c)
          if (c < cn) acc[h][c] = _mm512_fmadd_ps(pv, v[c], acc[h][c]);
      }
    }
    for (int h = 0; h < HG; ++h)
      for (int c = 0; c < 4; ++c)
        if (c < cn) _mm512_storeu_ps(o + h * D + (c0 + c) * 16, acc[h][c]);
  }
}

// Both over heads [0, G) in groups of 4, then 2, then 1 (s: the chunk's column of the
// [G][kp] scores; o: [G][D]).
template <typename E>
LLMCTL_AVX512 inline __attribute__((always_inline)) void scores_all_heads(const float* q, const float* qsum,
                                                                         std::int64_t G, std::int64_t D,
                                                                         const E* const* rp, const ChunkAffine* aff,
                                                                         float* s, std::int64_t kp) {
  std::int64_t h0 = 0;
  for (; h0 + 4 <= G; h0 += 4) chunk_scores<4>(q + h0 * D, qsum + h0, D, rp, aff, s + h0 * kp, kp);
  if (h0 + 2 <= G) chunk_scores<2>(q + h0 * D, qsum + h0, D, rp, aff, s + h0 * kp, kp), h0 += 2;
  if (h0 < G) chunk_scores<1>(q + h0 * D, qsum + h0, D, rp, aff, s + h0 * kp, kp);
}
template <typename E>
LLMCTL_AVX512 inline __attribute__((always_inline)) void values_all_heads(const float* p, std::int64_t kp,
                                                                         std::int64_t G, const E* const* rp,
                                                                         const ChunkAffine* aff, std::int64_t n,
                                                                         std::int64_t D, float* o, float* zsum) {
  std::int64_t h0 = 0;
  for (; h0 + 4 <= G; h0 += 4) chunk_values<4>(p + h0 * kp, kp, rp, aff, n, D, o + h0 * D, zsum + h0);
  if (h0 + 2 <= G) chunk_values<2>(p + h0 * kp, kp, rp, aff, n, D, o + h0 * D, zsum + h0), h0 += 2;
  if (h0 < G) chunk_values<1>(p + h0 * kp, kp, rp, aff, n, D, o + h0 * D, zsum + h0);
}

// In place over a row of scores (read up to the next multiple of 16): p = exp(s - max) for
// j < keys, 0 past them; returns the sum.
LLMCTL_AVX512 inline float softmax_numerators(float* row, std::int64_t keys) {
  __m512 m = _mm512_set1_ps(-INFINITY);
  std::int64_t j = 0;
  for (; j + 16 <= keys; j += 16) m = _mm512_maskz_max_ps(0xFFFF, m, _mm512_loadu_ps(row + j));
  float mx = hmax16(m);
  for (; j < keys; ++j) mx = std::max(mx, row[j]);
  const __m512 mxv = _mm512_set1_ps(mx);
  __m512 sum = _mm512_setzero_ps();
  for (j = 0; j < keys; j += 16) {
    const __mmask16 live = keys - j >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (keys - j)) - 1);
    const __m512 ev = _mm512_maskz_mov_ps(live, exp16(_mm512_sub_ps(_mm512_loadu_ps(row + j), mxv)));
    _mm512_storeu_ps(row + j, ev);
    sum = _mm512_add_ps(sum, ev);
  }
  return hsum16(sum);
}

// A decode step (one query token against its whole cache), block by block of the cache:
// 16 rows at a time (read in place: values, or codes with their scale and zero), then
//  - scores: chunk_scores per group of up to 4 heads (each K row loaded once per group);
//  - softmax over each head's whole row of scores;
//  - output: chunk_values per group (each V row loaded once per group).
// K's blocks then V's blocks form one stream read in order, each prefetched kAhead blocks
// before use (decode reads every sequence's whole cache once per step). Its sums run in
// another order than the prefill tiles: a decode row matches the same row computed in a
// prefill to rounding, not bit for bit.
template <typename T, typename Rows>
LLMCTL_AVX512 void decode_avx512(const T* q, const Rows& k_cache, const Rows& v_cache, T* out,
                                 const PagedAttentionShape& sh, const PagedAttentionItem& it,
                                 const PagedAttentionItem* next, std::vector<float>& scratch) {
  constexpr std::int64_t kRows = 16, kAhead = 4;
  const std::int64_t D = sh.head_dim, H = sh.heads, G = sh.heads / sh.kv_heads, bs = sh.block_size;
  // Score rows are padded by a whole chunk: a chunk stores 16 lanes even when it holds fewer
  // keys (blocks smaller than 16), and the next chunk overwrites the spare lanes.
  const std::int64_t keys = it.first_pos + 1, kp = (keys + kRows - 1) / kRows * kRows + kRows;
  const std::size_t need = static_cast<std::size_t>(2 * G * D + G * kp);
  if (scratch.size() < need) scratch.resize(need);
  float* qf = scratch.data();  // [G][D], pre-scaled
  float* o = qf + G * D;       // [G][D]
  float* s = o + G * D;        // [G][kp]: scores, then probabilities
  const T* qrow = q + (it.row_begin * H + it.kv_head * G) * D;
  for (std::int64_t i = 0; i < G * D; ++i) qf[i] = load(qrow, i) * sh.scale;
  using E = typename RowElem<Rows>::type;
  constexpr bool quantized = RowElem<Rows>::quantized;
  float qsum[256] = {}, zsum[256] = {};  // per head: sum(q), sum_t p_t zero_t (quantised rows)
  if constexpr (quantized)
    for (std::int64_t h = 0; h < G; ++h)
      for (std::int64_t d = 0; d < D; ++d) qsum[h] += qf[h * D + d];
  ChunkAffine affine;
  ChunkAffine* aff = quantized ? &affine : nullptr;

  const std::int64_t blocks = (keys + bs - 1) / bs;
  auto block_row = [&](std::int64_t b) { return row_index(sh, it, b * bs); };
  auto block_len = [&](std::int64_t b) { return std::min(bs, keys - b * bs); };
  // The stream goes on into the next item's K (each item's first blocks would otherwise
  // wait for DRAM with nothing in flight).
  const std::int64_t next_keys = next ? next->first_pos + (next->row_end - next->row_begin) : 0;
  auto prefetch_stream = [&](std::int64_t i) __attribute__((always_inline)) {
    if (i < blocks) {
      prefetch_rows(k_cache, block_row(i), block_len(i), D);
    } else if (i < 2 * blocks) {
      prefetch_rows(v_cache, block_row(i - blocks), block_len(i - blocks), D);
    } else if (const std::int64_t p = (i - 2 * blocks) * bs; p < next_keys) {
      prefetch_rows(k_cache, row_index(sh, *next, p), std::min(bs, next_keys - p), D);
    }
  };
  for (std::int64_t i = 0; i < kAhead; ++i) prefetch_stream(i);
  const E* rp[kRows];
  // Key chunks of 16 that never cross a block (block sizes are multiples of 16 or below it).
  const std::int64_t chunk = std::min<std::int64_t>(kRows, bs);

  for (std::int64_t b = 0; b < blocks; ++b) {
    prefetch_stream(b + kAhead);
    for (std::int64_t j0 = b * bs; j0 < b * bs + block_len(b); j0 += chunk) {
      chunk_rows(k_cache, row_index(sh, it, j0), std::min(chunk, keys - j0), D, aff, rp);
      scores_all_heads(qf, qsum, G, D, rp, aff, s + j0, kp);  // lanes past `keys` are never read
    }
  }
  float inv[256];
  for (std::int64_t h = 0; h < G; ++h) inv[h] = 1.0f / softmax_numerators(s + h * kp, keys);
  std::fill(o, o + G * D, 0.0f);
  for (std::int64_t b = 0; b < blocks; ++b) {
    prefetch_stream(blocks + b + kAhead);
    for (std::int64_t j0 = b * bs; j0 < b * bs + block_len(b); j0 += chunk) {
      const std::int64_t n = std::min(chunk, keys - j0);
      chunk_rows(v_cache, row_index(sh, it, j0), n, D, aff, rp);
      values_all_heads(s + j0, kp, G, rp, aff, n, D, o, zsum);
    }
  }
  T* orow = out + (it.row_begin * H + it.kv_head * G) * D;
  for (std::int64_t h = 0; h < G; ++h)
    for (std::int64_t d = 0; d < D; ++d) store(orow, h * D + d, (o[h * D + d] + zsum[h]) * inv[h]);
}
#undef LLMCTL_AVX512
#endif

enum class Isa { kAvx512, kAvx2, kBaseline };

Isa detect_isa() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("fma")) return Isa::kBaseline;
  if (__builtin_cpu_supports("avx512f")) return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2")) return Isa::kAvx2;
#endif
  return Isa::kBaseline;
}

template <typename T, typename Rows>
void dispatch(const T* q, const Rows& k, const Rows& v, T* out, const PagedAttentionShape& sh,
              const PagedAttentionItem& it, const PagedAttentionItem* next, std::vector<float>& scratch) {
  static const Isa isa = detect_isa();
#if defined(__x86_64__) && defined(__GNUC__)
  if (isa == Isa::kAvx512) {
    if (it.row_end - it.row_begin == 1 && sh.head_dim % 16 == 0 && sh.heads / sh.kv_heads <= 256)
      return decode_avx512(q, k, v, out, sh, it, next, scratch);
    return attend_avx512(q, k, v, out, sh, it, scratch);
  }
  if (isa == Isa::kAvx2) return attend_avx2(q, k, v, out, sh, it, scratch);
#endif
  attend<T, Rows, 4>(q, k, v, out, sh, it, scratch);
}

}  // namespace

template <typename T, typename Rows>
void paged_attention_item(const T* q, const Rows& k_cache, const Rows& v_cache, T* out,
                          const PagedAttentionShape& shape, const PagedAttentionItem& item,
                          const PagedAttentionItem* next, std::vector<float>& scratch) {
  dispatch(q, k_cache, v_cache, out, shape, item, next, scratch);
}

#define LLMCTL_PAGED_ATTENTION_ITEM(T, Rows)                                                              \
  template void paged_attention_item<T, Rows>(const T*, const Rows&, const Rows&, T*,                    \
                                              const PagedAttentionShape&, const PagedAttentionItem&, \
                                              const PagedAttentionItem*, std::vector<float>&);
LLMCTL_PAGED_ATTENTION_ITEM(float, DenseRows<float>)
LLMCTL_PAGED_ATTENTION_ITEM(float, QuantRows<8>)
LLMCTL_PAGED_ATTENTION_ITEM(float, QuantRows<4>)
LLMCTL_PAGED_ATTENTION_ITEM(c10::BFloat16, DenseRows<c10::BFloat16>)
LLMCTL_PAGED_ATTENTION_ITEM(c10::BFloat16, QuantRows<8>)
LLMCTL_PAGED_ATTENTION_ITEM(c10::BFloat16, QuantRows<4>)
#undef LLMCTL_PAGED_ATTENTION_ITEM

}  // namespace llmctl::kernels::cpu
