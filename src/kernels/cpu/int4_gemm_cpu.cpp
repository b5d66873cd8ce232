#include "int4_gemm_cpu.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <type_traits>

#include "simd.h"

namespace llmctl::kernels::cpu {
namespace {

constexpr std::int64_t kG = kInt4Group;
constexpr std::int64_t kGroupBytes = kG / 2;

// Column c (0..7) of an AWQ word sits at bits 4 * kAwqNibble[c] (quant/awq.h's order).
constexpr int kAwqNibble[8] = {0, 4, 1, 5, 2, 6, 3, 7};

float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  std::uint32_t exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu, bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (man << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    exp = 113;
    while ((man & 0x400u) == 0) man <<= 1, --exp;
    bits = sign | (exp << 23) | ((man & 0x3FFu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

std::atomic<Int4Isa> g_forced{Int4Isa::kAuto};

// Sum over a group's sum_g s*sx*(q.xq) was accumulated in `f`; the zero-point term is
// sum_g (s z)[n][g] * (sx sum xq)[m][g].
inline float zero_term(const float* sz, const float* xsz, std::int64_t groups) {
  float t = 0;
  for (std::int64_t g = 0; g < groups; ++g) t += sz[g] * xsz[g];
  return t;
}

// ---- baseline: plain loops ----

template <typename Y>
void gemm_scalar(const Int4Weights& w, const std::int8_t* xq, const float* xs, const float* xsz, std::int64_t m,
                 std::int64_t n0, std::int64_t n1, const float* bias, Y* y, std::int64_t ldy) {
  const std::int64_t G = w.k / kG;
  for (std::int64_t r = 0; r < m; ++r)
    for (std::int64_t n = n0; n < n1; ++n) {
      float f = 0;
      for (std::int64_t g = 0; g < G; ++g) {
        const std::uint8_t* qb = w.q + (n * G + g) * kGroupBytes;
        const std::int8_t* xr = xq + r * w.k + g * kG;
        std::int32_t s = 0;
        for (std::int64_t j = 0; j < kGroupBytes; ++j)
          s += (qb[j] & 15) * xr[j] + (qb[j] >> 4) * xr[j + kGroupBytes];
        f += static_cast<float>(s) * (w.scale[n * G + g] * xs[r * G + g]);
      }
      f -= zero_term(w.scale_zero + n * G, xsz + r * G, G);
      store(y, r * ldy + n, f + (bias ? bias[n] : 0.0f));
    }
}

template <typename X>
LLMCTL_SIMD_CLONES void quantize_portable(const X* x, std::int64_t ldx, std::int64_t k, std::int64_t r0,
                                          std::int64_t r1, std::int8_t* xq, float* xs, float* xsz) {
  const std::int64_t G = k / kG;
  for (std::int64_t r = r0; r < r1; ++r)
    for (std::int64_t g = 0; g < G; ++g) {
      const X* xp = x + r * ldx + g * kG;
      float lane[16] = {};
      for (std::int64_t i = 0; i < kG; i += 16)
        for (int j = 0; j < 16; ++j) {
          const float a = std::fabs(load(xp, i + j));
          lane[j] = lane[j] < a ? a : lane[j];
        }
      float amax = 0;
      for (float l : lane) amax = amax < l ? l : amax;
      const float inv = amax > 0 ? 127.0f / amax : 0.0f;
      std::int8_t* qp = xq + r * k + g * kG;
      std::int32_t sum = 0;
      for (std::int64_t i = 0; i < kG; ++i) {
        float v = load(xp, i) * inv;
        v = (v + 12582912.0f) - 12582912.0f;  // round half to even (|v| <= 127)
        const auto q = static_cast<std::int32_t>(v);
        qp[i] = static_cast<std::int8_t>(q);
        sum += q;
      }
      xs[r * G + g] = amax / 127.0f;
      xsz[r * G + g] = xs[r * G + g] * static_cast<float>(sum);
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#define LLMCTL_AVX2 __attribute__((target("avx2,fma")))
#define LLMCTL_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma")))

// ---- AVX2: maddubs (u8 x s8 -> pairs summed in int16) + madd (-> int32) ----

LLMCTL_AVX2 inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// MB rows x NB output columns; per group and column 4 registers of unpacked nibbles: bytes
// 0..31 of the group give k 0..31 (low) and 64..95 (high), bytes 32..63 k 32..63 and 96..127.
template <int MB, int NB, typename Y>
LLMCTL_AVX2 void tile_avx2(const Int4Weights& w, const std::int8_t* xq, const float* xs, const float* xsz,
                           std::int64_t n0, const float* bias, Y* y, std::int64_t ldy) {
  const std::int64_t G = w.k / kG;
  const __m256i mask = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 f[MB][NB];
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NB; ++j) f[i][j] = _mm256_setzero_ps();
  for (std::int64_t g = 0; g < G; ++g) {
    __m256i lo0[NB], lo1[NB], hi0[NB], hi1[NB];
    for (int j = 0; j < NB; ++j) {
      const std::uint8_t* qb = w.q + ((n0 + j) * G + g) * kGroupBytes;
      const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qb));
      const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qb + 32));
      lo0[j] = _mm256_and_si256(v0, mask);
      hi0[j] = _mm256_and_si256(_mm256_srli_epi16(v0, 4), mask);
      lo1[j] = _mm256_and_si256(v1, mask);
      hi1[j] = _mm256_and_si256(_mm256_srli_epi16(v1, 4), mask);
    }
    for (int i = 0; i < MB; ++i) {
      const std::int8_t* xr = xq + i * w.k + g * kG;
      const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr));
      const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr + 32));
      const __m256i x2 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr + 64));
      const __m256i x3 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr + 96));
      const float sx = xs[i * G + g];
      for (int j = 0; j < NB; ++j) {
        // |pair sum| <= 2 * 15 * 127 = 3810, four of them fit int16.
        const __m256i p = _mm256_add_epi16(
            _mm256_add_epi16(_mm256_maddubs_epi16(lo0[j], x0), _mm256_maddubs_epi16(lo1[j], x1)),
            _mm256_add_epi16(_mm256_maddubs_epi16(hi0[j], x2), _mm256_maddubs_epi16(hi1[j], x3)));
        const __m256 d = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones));
        f[i][j] = _mm256_fmadd_ps(d, _mm256_set1_ps(w.scale[(n0 + j) * G + g] * sx), f[i][j]);
      }
    }
  }
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NB; ++j) {
      const std::int64_t n = n0 + j;
      const float v = hsum8(f[i][j]) - zero_term(w.scale_zero + n * G, xsz + i * G, G);
      store(y, i * ldy + n, v + (bias ? bias[n] : 0.0f));
    }
}

// ---- AVX-512 VNNI: vpdpbusd, 64 u8 x s8 products summed in 16 int32 lanes ----

// MB rows x NB output columns; per group and column the 64 bytes unpack into k 0..63 (low
// nibbles) and k 64..127 (high nibbles).
template <int MB, int NB, typename Y>
LLMCTL_VNNI void tile_vnni(const Int4Weights& w, const std::int8_t* xq, const float* xs, const float* xsz,
                           std::int64_t n0, const float* bias, Y* y, std::int64_t ldy) {
  const std::int64_t G = w.k / kG;
  const __m512i mask = _mm512_set1_epi8(0x0F);
  __m512 f[MB][NB];
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NB; ++j) f[i][j] = _mm512_setzero_ps();
  const std::uint8_t* q0 = w.q + n0 * G * kGroupBytes;
  for (std::int64_t g = 0; g < G; ++g) {
    __m512i lo[NB], hi[NB];
    for (int j = 0; j < NB; ++j) {
      const std::uint8_t* qb = q0 + (j * G + g) * kGroupBytes;
      if (MB == 1) _mm_prefetch(reinterpret_cast<const char*>(qb + 1024), _MM_HINT_T0);
      const __m512i v = _mm512_loadu_si512(qb);
      lo[j] = _mm512_and_si512(v, mask);
      hi[j] = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask);
    }
    for (int i = 0; i < MB; ++i) {
      const std::int8_t* xr = xq + i * w.k + g * kG;
      const __m512i x0 = _mm512_loadu_si512(xr);
      const __m512i x1 = _mm512_loadu_si512(xr + 64);
      const float sx = xs[i * G + g];
      for (int j = 0; j < NB; ++j) {
        __m512i acc = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo[j], x0);
        acc = _mm512_dpbusd_epi32(acc, hi[j], x1);
        f[i][j] = _mm512_fmadd_ps(_mm512_maskz_cvtepi32_ps(0xFFFF, acc), _mm512_set1_ps(w.scale[(n0 + j) * G + g] * sx), f[i][j]);
      }
    }
  }
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NB; ++j) {
      const std::int64_t n = n0 + j;
      const float v = hsum16(f[i][j]) - zero_term(w.scale_zero + n * G, xsz + i * G, G);
      store(y, i * ldy + n, v + (bias ? bias[n] : 0.0f));
    }
}

template <typename X>
LLMCTL_VNNI void quantize_vnni(const X* x, std::int64_t ldx, std::int64_t k, std::int64_t r0, std::int64_t r1,
                               std::int8_t* xq, float* xs, float* xsz) {
  const std::int64_t G = k / kG;
  for (std::int64_t r = r0; r < r1; ++r)
    for (std::int64_t g = 0; g < G; ++g) {
      const X* xp = x + r * ldx + g * kG;
      __m512 v[8];
      __m512 amax = _mm512_setzero_ps();
      for (int i = 0; i < 8; ++i) {
        v[i] = load16(xp + 16 * i);
        amax = _mm512_maskz_max_ps(0xFFFF, amax, _mm512_abs_ps(v[i]));
      }
      const float a = hmax16(amax);
      const __m512 inv = _mm512_set1_ps(a > 0 ? 127.0f / a : 0.0f);
      std::int8_t* qp = xq + r * k + g * kG;
      __m512i sum = _mm512_setzero_si512();
      for (int i = 0; i < 8; ++i) {
        const __m512i q = _mm512_maskz_cvtps_epi32(0xFFFF, _mm512_mul_ps(v[i], inv));  // nearest even (MXCSR default)
        sum = _mm512_add_epi32(sum, q);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(qp + 16 * i), _mm512_maskz_cvtsepi32_epi8(0xFFFF, q));
      }
      xs[r * G + g] = a / 127.0f;
      xsz[r * G + g] = xs[r * G + g] * hsum16(_mm512_maskz_cvtepi32_ps(0xFFFF, sum));  // exact: |sum| <= 128 * 127
    }
}
#endif

// Tiles of up to MB x NB over rows [0, m) and columns [n0, n1): full tiles, then the
// tails by a runtime switch onto the compile-time shapes.
template <int MB, int NB, typename Tile>
void tiled(std::int64_t m, std::int64_t n0, std::int64_t n1, Tile&& tile) {
  for (std::int64_t n = n0; n < n1; n += NB) {
    const std::int64_t nb = std::min<std::int64_t>(NB, n1 - n);
    for (std::int64_t r = 0; r < m; r += MB) {
      const std::int64_t mb = std::min<std::int64_t>(MB, m - r);
      tile(r, n, mb, nb);
    }
  }
}

// Calls f(integral_constant<a>, integral_constant<b>) for the runtime tile shape
// a = mb <= MB, b = nb <= NB: the tails of tiled() reach their compile-time kernels.
template <int MB, int NB, typename F>
void with_tile_shape(std::int64_t mb, std::int64_t nb, F&& f) {
  if constexpr (MB > 1)
    if (mb < MB) return with_tile_shape<MB - 1, NB>(mb, nb, f);
  if constexpr (NB > 1)
    if (nb < NB) return with_tile_shape<MB, NB - 1>(mb, nb, f);
  f(std::integral_constant<int, MB>{}, std::integral_constant<int, NB>{});
}

#if defined(__x86_64__) && defined(__GNUC__)
// y rows [0, m) x columns [n0, n1) by tiles of up to MB x NB, each computed by
// Kernel::run<a, b>(w, xq, xs, xsz, n, bias, y, ldy) on its rows' slices.
template <int MB, int NB, typename Kernel, typename Y>
void gemm_tiles(const Int4Weights& w, const std::int8_t* xq, const float* xs, const float* xsz, std::int64_t m,
                std::int64_t n0, std::int64_t n1, const float* bias, Y* y, std::int64_t ldy) {
  const std::int64_t G = w.k / kG;
  tiled<MB, NB>(m, n0, n1, [&](std::int64_t r, std::int64_t n, std::int64_t mb, std::int64_t nb) {
    with_tile_shape<MB, NB>(mb, nb, [&](auto a, auto b) {
      Kernel::template run<decltype(a)::value, decltype(b)::value>(w, xq + r * w.k, xs + r * G, xsz + r * G, n,
                                                                    bias, y + r * ldy, ldy);
    });
  });
}

struct VnniTile {
  template <int MB, int NB, typename Y>
  static void run(const Int4Weights& w, const std::int8_t* xq, const float* xs, const float* xsz, std::int64_t n,
                  const float* bias, Y* y, std::int64_t ldy) {
    tile_vnni<MB, NB>(w, xq, xs, xsz, n, bias, y, ldy);
  }
};
struct Avx2Tile {
  template <int MB, int NB, typename Y>
  static void run(const Int4Weights& w, const std::int8_t* xq, const float* xs, const float* xsz, std::int64_t n,
                  const float* bias, Y* y, std::int64_t ldy) {
    tile_avx2<MB, NB>(w, xq, xs, xsz, n, bias, y, ldy);
  }
};

template <typename Y>
void gemm_vnni(const Int4Weights& w, const std::int8_t* xq, const float* xs, const float* xsz, std::int64_t m,
               std::int64_t n0, std::int64_t n1, const float* bias, Y* y, std::int64_t ldy) {
  gemm_tiles<4, 4, VnniTile>(w, xq, xs, xsz, m, n0, n1, bias, y, ldy);
}

template <typename Y>
void gemm_avx2(const Int4Weights& w, const std::int8_t* xq, const float* xs, const float* xsz, std::int64_t m,
               std::int64_t n0, std::int64_t n1, const float* bias, Y* y, std::int64_t ldy) {
  gemm_tiles<2, 2, Avx2Tile>(w, xq, xs, xsz, m, n0, n1, bias, y, ldy);
}
#endif

bool cpu_has(Int4Isa isa) {
#if defined(__x86_64__) && defined(__GNUC__)
  switch (isa) {
    case Int4Isa::kAvx512Vnni:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    case Int4Isa::kAvx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    default: return isa == Int4Isa::kScalar || isa == Int4Isa::kAuto;
  }
#else
  return isa == Int4Isa::kScalar || isa == Int4Isa::kAuto;
#endif
}

template <typename X>
void quantize_dispatch(const X* x, std::int64_t ldx, std::int64_t k, std::int64_t r0, std::int64_t r1,
                       std::int8_t* xq, float* xs, float* xsz) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (int4_active_isa() == Int4Isa::kAvx512Vnni) return quantize_vnni(x, ldx, k, r0, r1, xq, xs, xsz);
#endif
  quantize_portable(x, ldx, k, r0, r1, xq, xs, xsz);
}

template <typename Y>
void gemm_dispatch(const Int4Weights& w, const std::int8_t* xq, const float* xs, const float* xsz, std::int64_t m,
                   std::int64_t n0, std::int64_t n1, const float* bias, Y* y, std::int64_t ldy) {
  switch (int4_active_isa()) {
#if defined(__x86_64__) && defined(__GNUC__)
    case Int4Isa::kAvx512Vnni: return gemm_vnni(w, xq, xs, xsz, m, n0, n1, bias, y, ldy);
    case Int4Isa::kAvx2: return gemm_avx2(w, xq, xs, xsz, m, n0, n1, bias, y, ldy);
#endif
    default: return gemm_scalar(w, xq, xs, xsz, m, n0, n1, bias, y, ldy);
  }
}

}  // namespace

Int4Isa int4_best_isa() {
  static const Int4Isa best = cpu_has(Int4Isa::kAvx512Vnni) ? Int4Isa::kAvx512Vnni
                              : cpu_has(Int4Isa::kAvx2)     ? Int4Isa::kAvx2
                                                            : Int4Isa::kScalar;
  return best;
}

bool int4_force_isa(Int4Isa isa) {
  if (!cpu_has(isa)) return false;
  g_forced.store(isa, std::memory_order_relaxed);
  return true;
}

Int4Isa int4_active_isa() {
  const Int4Isa f = g_forced.load(std::memory_order_relaxed);
  return f == Int4Isa::kAuto ? int4_best_isa() : f;
}

void int4_repack_awq(const std::int32_t* qweight, const std::int32_t* qzeros, const std::uint16_t* scales_f16,
                     std::int64_t n, std::int64_t k, std::int64_t awq_group, std::uint8_t* q, float* scale,
                     float* scale_zero) {
  const std::int64_t G = k / kG, words = n / 8;
  auto nibble = [](std::int32_t word, std::int64_t c) {
    return static_cast<std::uint8_t>((static_cast<std::uint32_t>(word) >> (4 * kAwqNibble[c % 8])) & 15u);
  };
  std::fill(q, q + n * G * kGroupBytes, std::uint8_t{0});
  for (std::int64_t kk = 0; kk < k; ++kk) {
    const std::int64_t g = kk / kG, j = kk % kGroupBytes, shift = (kk % kG) / kGroupBytes * 4;
    for (std::int64_t c = 0; c < n; ++c)
      q[(c * G + g) * kGroupBytes + j] |= static_cast<std::uint8_t>(nibble(qweight[kk * words + c / 8], c) << shift);
  }
  for (std::int64_t c = 0; c < n; ++c)
    for (std::int64_t g = 0; g < G; ++g) {
      const std::int64_t ag = g * kG / awq_group;
      const float s = half_to_float(scales_f16[ag * n + c]);
      scale[c * G + g] = s;
      scale_zero[c * G + g] = s * static_cast<float>(nibble(qzeros[ag * words + c / 8], c));
    }
}

void int4_quantize_rows(const float* x, std::int64_t ldx, std::int64_t k, std::int64_t r0, std::int64_t r1,
                        std::int8_t* xq, float* xs, float* xsz) {
  quantize_dispatch(x, ldx, k, r0, r1, xq, xs, xsz);
}
void int4_quantize_rows(const c10::BFloat16* x, std::int64_t ldx, std::int64_t k, std::int64_t r0, std::int64_t r1,
                        std::int8_t* xq, float* xs, float* xsz) {
  quantize_dispatch(x, ldx, k, r0, r1, xq, xs, xsz);
}

void int4_gemm(const Int4Weights& w, const std::int8_t* xq, const float* xs, const float* xsz, std::int64_t m,
               std::int64_t n0, std::int64_t n1, const float* bias, float* y, std::int64_t ldy) {
  gemm_dispatch(w, xq, xs, xsz, m, n0, n1, bias, y, ldy);
}
void int4_gemm(const Int4Weights& w, const std::int8_t* xq, const float* xs, const float* xsz, std::int64_t m,
               std::int64_t n0, std::int64_t n1, const float* bias, c10::BFloat16* y, std::int64_t ldy) {
  gemm_dispatch(w, xq, xs, xsz, m, n0, n1, bias, y, ldy);
}

}  // namespace llmctl::kernels::cpu
