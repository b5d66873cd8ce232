#include "gemm_cpu.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <utility>

#include "simd.h"

namespace llmctl::kernels::cpu {
namespace {

template <typename W>
void pack(const W* w, std::int64_t n, std::int64_t k, W* packed) {
  const std::int64_t panels = (n + kPanel - 1) / kPanel;
  for (std::int64_t p = 0; p < panels; ++p)
    for (std::int64_t kk = 0; kk < k; ++kk)
      for (std::int64_t c = 0; c < kPanel; ++c) {
        const std::int64_t row = p * kPanel + c;
        packed[(p * k + kk) * kPanel + c] = row < n ? w[row * k + kk] : W(0.0f);
      }
}

// Portable micro-kernel: rows x kPanel outputs, one multiply-add chain per output over k in
// order (as the AVX-512 one, there fused), written so the compiler vectorises over columns.
template <typename W>
inline __attribute__((always_inline)) void micro_portable(const float* x, std::int64_t rows, std::int64_t k,
                                                          const W* panel, float* y, std::int64_t ldy,
                                                          std::int64_t cols) {
  float acc[kMaxRows][kPanel] = {};
  for (std::int64_t kk = 0; kk < k; ++kk) {
    float wv[kPanel];
    for (std::int64_t c = 0; c < kPanel; ++c) wv[c] = load(panel, kk * kPanel + c);
    for (std::int64_t r = 0; r < rows; ++r) {
      const float xv = x[r * k + kk];
      for (std::int64_t c = 0; c < kPanel; ++c) acc[r][c] += xv * wv[c];
    }
  }
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) y[r * ldy + c] = acc[r][c];
}

template <typename W>
LLMCTL_SIMD_CLONES void gemm_portable(const float* x, std::int64_t m, std::int64_t k, const W* packed,
                                      std::int64_t n, std::int64_t p_begin, std::int64_t p_end, float* y,
                                      std::int64_t ldy) {
  for (std::int64_t p = p_begin; p < p_end; ++p)
    for (std::int64_t r0 = 0; r0 < m; r0 += kMaxRows)
      micro_portable(x + r0 * k, std::min(kMaxRows, m - r0), k, packed + p * k * kPanel, y + r0 * ldy + p * kPanel,
                     ldy, std::min(kPanel, n - p * kPanel));
}

#if defined(__x86_64__) && defined(__GNUC__)
#define LLMCTL_AVX512 __attribute__((target("avx512f,fma")))

// fn(std::integral_constant<int, rows>) for a rows in R... (a runtime count onto the
// micro-kernels' compile-time ones).
template <int... R, typename Fn>
void with_rows(std::integer_sequence<int, R...>, std::int64_t rows, Fn&& fn) {
  ((rows == R && R > 0 ? (fn(std::integral_constant<int, (R > 0 ? R : 1)>{}), 0) : 0), ...);
}

// Runs a micro-kernel family over panels [p_begin, p_end): rows in blocks of kMaxRows, then
// the last m % kMaxRows rows by the instantiation for that count.
// micro(std::integral_constant<int, ROWS>, x rows, panel, y rows, cols, prefetch); only a
// panel's first row block prefetches: it streams the panel from memory, the later ones
// find it in cache.
template <typename X, typename W, typename Micro>
void for_each_panel(const X* x, std::int64_t m, std::int64_t k, const W* packed, std::int64_t n,
                    std::int64_t p_begin, std::int64_t p_end, float* y, std::int64_t ldy, Micro&& micro) {
  for (std::int64_t p = p_begin; p < p_end; ++p) {
    const W* panel = packed + p * k * kPanel;
    const std::int64_t cols = std::min(kPanel, n - p * kPanel);
    float* yp = y + p * kPanel;
    std::int64_t r0 = 0;
    for (; r0 + kMaxRows <= m; r0 += kMaxRows)
      micro(std::integral_constant<int, kMaxRows>{}, x + r0 * k, panel, yp + r0 * ldy, cols, r0 == 0);
    with_rows(std::make_integer_sequence<int, kMaxRows>{}, m - r0,
              [&](auto rows) { micro(rows, x + r0 * k, panel, yp + r0 * ldy, cols, r0 == 0); });
  }
}

// How far ahead a streaming pass requests its panel's cache lines.
constexpr std::int64_t kPrefetchBytes = 4096;

// Store masks of a panel's two 16-column halves when it has `cols` valid columns.
inline __mmask16 low_half_mask(std::int64_t cols) {
  return cols >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << cols) - 1);
}
inline __mmask16 high_half_mask(std::int64_t cols) {
  return cols >= 32 ? 0xFFFF : cols <= 16 ? 0 : static_cast<__mmask16>((1u << (cols - 16)) - 1);
}

// ROWS x 32 outputs in 2 * ROWS zmm accumulators.
template <int ROWS, typename W>
LLMCTL_AVX512 void micro_avx512(const float* x, std::int64_t k, const W* panel, float* y, std::int64_t ldy,
                                std::int64_t cols, bool prefetch) {
  __m512 acc[ROWS][2];
  for (int r = 0; r < ROWS; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  // Streaming decode: every cache line of the panel is requested 4 KiB ahead (a panel row is
  // kPanel weights: two lines in fp32, one in bf16).
  constexpr std::int64_t kAhead = kPrefetchBytes / sizeof(W), kLineElems = 64 / sizeof(W);
  for (std::int64_t kk = 0; kk < k; ++kk) {
    const W* wp = panel + kk * kPanel;
    if (prefetch)
      for (std::int64_t l = 0; l < kPanel; l += kLineElems)
        _mm_prefetch(reinterpret_cast<const char*>(wp + kAhead + l), _MM_HINT_T0);
    const __m512 w0 = load16(wp), w1 = load16(wp + 16);
    for (int r = 0; r < ROWS; ++r) {
      const __m512 xv = _mm512_set1_ps(x[r * k + kk]);
      acc[r][0] = _mm512_fmadd_ps(xv, w0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(xv, w1, acc[r][1]);
    }
  }
  const __mmask16 m0 = low_half_mask(cols), m1 = high_half_mask(cols);
  for (int r = 0; r < ROWS; ++r) {
    _mm512_mask_storeu_ps(y + r * ldy, m0, acc[r][0]);
    _mm512_mask_storeu_ps(y + r * ldy + 16, m1, acc[r][1]);
  }
}

template <typename W>
void gemm_avx512(const float* x, std::int64_t m, std::int64_t k, const W* packed, std::int64_t n,
                 std::int64_t p_begin, std::int64_t p_end, float* y, std::int64_t ldy) {
  for_each_panel(x, m, k, packed, n, p_begin, p_end, y, ldy,
                 [&](auto rows, const float* xr, const W* panel, float* yr, std::int64_t cols, bool prefetch) {
                   micro_avx512<decltype(rows)::value>(xr, k, panel, yr, ldy, cols, prefetch);
                 });
}

// bf16 x bf16 -> fp32 by vdpbf16ps: each instruction adds x[k] w[k][c] + x[k+1] w[k+1][c]
// to 16 columns, twice the multiply-adds of an fp32 FMA. Panel rows k and k+1 are
// interleaved in registers (unpacklo / unpackhi of 16-bit elements, per 128-bit lane), so
// acc[r][0] holds columns 8j+0..3 and acc[r][1] columns 8j+4..7 (j = 0..3), put back in
// order when stored. An odd k pairs the last row with zeros.
#define LLMCTL_BF16DP __attribute__((target("avx512f,avx512bw,avx512bf16,fma")))
// acc[r] += the products of panel rows r0 (k = kk) and r1 (k = kk + 1, or zeros when
// !pair) with row r of x.
template <int ROWS>
LLMCTL_BF16DP inline __attribute__((always_inline)) void bf16dp_step(__m512 (&acc)[ROWS][2], __m512i r0, __m512i r1,
                                                                    const c10::BFloat16* x, std::int64_t k,
                                                                    std::int64_t kk, bool pair) {
  const __m512bh w0 = (__m512bh)_mm512_unpacklo_epi16(r0, r1), w1 = (__m512bh)_mm512_unpackhi_epi16(r0, r1);
  for (int r = 0; r < ROWS; ++r) {
    std::uint32_t xp = 0;
    std::memcpy(&xp, x + r * k + kk, pair ? 4 : 2);
    const __m512bh xv = (__m512bh)_mm512_set1_epi32(static_cast<int>(xp));
    acc[r][0] = _mm512_dpbf16_ps(acc[r][0], xv, w0);
    acc[r][1] = _mm512_dpbf16_ps(acc[r][1], xv, w1);
  }
}

template <int ROWS>
LLMCTL_BF16DP void micro_bf16dp(const c10::BFloat16* x, std::int64_t k, const c10::BFloat16* panel, float* y,
                                std::int64_t ldy, std::int64_t cols, bool prefetch) {
  __m512 acc[ROWS][2];
  for (int r = 0; r < ROWS; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  std::int64_t kk = 0;
  for (; kk + 2 <= k; kk += 2) {
    const c10::BFloat16* wp = panel + kk * kPanel;
    if (prefetch) {  // as micro_avx512: the two panel rows' lines (one each in bf16)
      const char* ahead = reinterpret_cast<const char*>(wp) + kPrefetchBytes;
      _mm_prefetch(ahead, _MM_HINT_T0);
      _mm_prefetch(ahead + kPanel * sizeof(c10::BFloat16), _MM_HINT_T0);
    }
    bf16dp_step<ROWS>(acc, _mm512_loadu_si512(wp), _mm512_loadu_si512(wp + kPanel), x, k, kk, true);
  }
  if (kk < k) bf16dp_step<ROWS>(acc, _mm512_loadu_si512(panel + kk * kPanel), _mm512_setzero_si512(), x, k, kk, false);
  const __m512i lo = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i hi = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  const __mmask16 m0 = low_half_mask(cols), m1 = high_half_mask(cols);
  for (int r = 0; r < ROWS; ++r) {
    _mm512_mask_storeu_ps(y + r * ldy, m0, _mm512_permutex2var_ps(acc[r][0], lo, acc[r][1]));
    _mm512_mask_storeu_ps(y + r * ldy + 16, m1, _mm512_permutex2var_ps(acc[r][0], hi, acc[r][1]));
  }
}

#endif

template <typename W>
void gemm_dispatch(const float* x, std::int64_t m, std::int64_t k, const W* packed, std::int64_t n,
                   std::int64_t p_begin, std::int64_t p_end, float* y, std::int64_t ldy) {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
  if (avx512) return gemm_avx512(x, m, k, packed, n, p_begin, p_end, y, ldy);
#endif
  gemm_portable(x, m, k, packed, n, p_begin, p_end, y, ldy);
}

}  // namespace

void pack_weight(const float* w, std::int64_t n, std::int64_t k, float* packed) { pack(w, n, k, packed); }
void pack_weight(const c10::BFloat16* w, std::int64_t n, std::int64_t k, c10::BFloat16* packed) {
  pack(w, n, k, packed);
}

void gemm_packed(const float* x, std::int64_t m, std::int64_t k, const float* packed, std::int64_t n,
                 std::int64_t p_begin, std::int64_t p_end, float* y, std::int64_t ldy) {
  gemm_dispatch(x, m, k, packed, n, p_begin, p_end, y, ldy);
}
void gemm_packed(const float* x, std::int64_t m, std::int64_t k, const c10::BFloat16* packed, std::int64_t n,
                 std::int64_t p_begin, std::int64_t p_end, float* y, std::int64_t ldy) {
  gemm_dispatch(x, m, k, packed, n, p_begin, p_end, y, ldy);
}

bool gemm_bf16_dot_usable() { return avx512_bf16_without_amx(); }

void gemm_packed_bf16_dot(const c10::BFloat16* x, std::int64_t m, std::int64_t k, const c10::BFloat16* packed,
                          std::int64_t n, std::int64_t p_begin, std::int64_t p_end, float* y, std::int64_t ldy) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (!gemm_bf16_dot_usable()) throw std::logic_error("gemm_packed_bf16_dot: this CPU has no AVX-512 BF16");
  for_each_panel(x, m, k, packed, n, p_begin, p_end, y, ldy,
                 [&](auto rows, const c10::BFloat16* xr, const c10::BFloat16* panel, float* yr, std::int64_t cols,
                     bool prefetch) { micro_bf16dp<decltype(rows)::value>(xr, k, panel, yr, ldy, cols, prefetch); });
#else
  throw std::logic_error("gemm_packed_bf16_dot: not an x86-64 build");
#endif
}

}  // namespace llmctl::kernels::cpu
