#pragma once
// Marks a CPU kernel to be compiled for AVX-512, AVX2 and baseline x86-64, the best one
// picked when the binary loads (GCC function multiversioning): the build stays portable
// while the loops vectorise for the machine they run on.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LLMCTL_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define LLMCTL_SIMD_CLONES
#endif

#include <c10/util/BFloat16.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#endif

#include <cstdint>
#include <cstring>

namespace llmctl::kernels::cpu {

// AVX-512 BF16 dot products (vdpbf16ps) and no AMX: the kernels built on vdpbf16ps are for
// such CPUs (AMD Zen 4/5, Intel Cooper Lake); with AMX (CPUID 7.0 EDX bit 22) oneDNN's
// AMX-tile kernels are faster.
inline bool avx512_bf16_without_amx() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool yes = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    const bool amx = __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d >> 22 & 1u);
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16") && !amx;
  }();
  return yes;
#else
  return false;
#endif
}

// bf16 <-> fp32 on the raw bits (round to nearest even), so the loops vectorise; c10's
// conversions go through calls the vectoriser does not see through. NaN is not produced
// from finite inputs here.
inline __attribute__((always_inline)) float load(const float* p, std::int64_t i) { return p[i]; }
inline __attribute__((always_inline)) float load(const c10::BFloat16* p, std::int64_t i) {
  std::uint16_t b;
  std::memcpy(&b, p + i, 2);
  const std::uint32_t w = static_cast<std::uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &w, 4);
  return f;
}
inline __attribute__((always_inline)) void store(float* p, std::int64_t i, float v) { p[i] = v; }
inline __attribute__((always_inline)) void store(c10::BFloat16* p, std::int64_t i, float v) {
  std::uint32_t w;
  std::memcpy(&w, &v, 4);
  const std::uint16_t b = static_cast<std::uint16_t>((w + 0x7FFFu + ((w >> 16) & 1u)) >> 16);
  std::memcpy(p + i, &b, 2);
}


// exp(x), written so the compiler vectorises it (std::exp is a scalar
// call): exp(x) = 2^k * 2^f with k = round(x log2 e), |f| <= 1/2, and 2^f from its Taylor
// series to degree 7 (relative error < 2e-7, below fp32's rounding of the result).
inline __attribute__((always_inline)) float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float t = x * 1.4426950408889634f;  // in [-126, 127]
  const float k = static_cast<float>(static_cast<std::int32_t>(t + 128.5f)) - 128.0f;  // round(t)
  const float f = (t - k) * 0.6931471805599453f;  // = x - k ln 2, in [-ln2/2, ln2/2]
  float p = 1.0f / 5040;
  p = p * f + 1.0f / 720;
  p = p * f + 1.0f / 120;
  p = p * f + 1.0f / 24;
  p = p * f + 1.0f / 6;
  p = p * f + 0.5f;
  p = p * f + 1.0f;
  p = p * f + 1.0f;
  const std::int32_t bits = (static_cast<std::int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// Sum of a[i] * b[i] in 16 independent float lanes (so the compiler may vectorise it
// without reassociating), combined in double at the end.
inline double dot_lanes(const float* a, const float* b, long n) {
  float lane[16] = {};
  long i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) lane[j] += a[i + j] * b[i + j];
  double s = 0;
  for (int j = 0; j < 16; ++j) s += lane[j];
  for (; i < n; ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

#if defined(__x86_64__) && defined(__GNUC__)
// 16 consecutive values as one AVX-512 vector of fp32 (bf16 widened by a shift), for the
// kernels' AVX-512 paths (functions compiled with target("avx512f...")). The maskz forms
// avoid GCC 12's false "may be used uninitialized" in the unmasked intrinsics.
inline __attribute__((target("avx512f"), always_inline)) __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __attribute__((target("avx512f"), always_inline)) __m512 load16(const c10::BFloat16* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xFFFF, _mm512_maskz_cvtepu16_epi32(0xFFFF, h), 16));
}
// Sum (or largest) of the 16 lanes, by a halving tree.
template <bool kMax>
inline __attribute__((target("avx512f"), always_inline)) float reduce16(__m512 v) {
  const __m256 lo = _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xFF, _mm512_castps_pd(v), 0));
  const __m256 hi = _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xFF, _mm512_castps_pd(v), 1));
  const __m256 r8 = kMax ? _mm256_max_ps(lo, hi) : _mm256_add_ps(lo, hi);
  const __m128 a = _mm256_castps256_ps128(r8), b = _mm256_extractf128_ps(r8, 1);
  __m128 r4 = kMax ? _mm_max_ps(a, b) : _mm_add_ps(a, b);
  r4 = kMax ? _mm_max_ps(r4, _mm_movehl_ps(r4, r4)) : _mm_add_ps(r4, _mm_movehl_ps(r4, r4));
  r4 = kMax ? _mm_max_ss(r4, _mm_movehdup_ps(r4)) : _mm_add_ss(r4, _mm_movehdup_ps(r4));
  return _mm_cvtss_f32(r4);
}
// exp_approx on 16 lanes (the same clamp, reduction and polynomial).
inline __attribute__((target("avx512f,fma"), always_inline)) __m512 exp16(__m512 x) {
  x = _mm512_maskz_min_ps(0xFFFF, _mm512_maskz_max_ps(0xFFFF, x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.4426950408889634f));
  const __m512 k = _mm512_maskz_roundscale_ps(0xFFFF, t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_mul_ps(_mm512_sub_ps(t, k), _mm512_set1_ps(0.6931471805599453f));
  __m512 p = _mm512_set1_ps(1.0f / 5040);
  for (const float c : {1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f})
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
  const __m512i bits = _mm512_maskz_slli_epi32(
      0xFFFF, _mm512_add_epi32(_mm512_maskz_cvtps_epi32(0xFFFF, k), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}
inline __attribute__((target("avx512f"), always_inline)) float hsum16(__m512 v) { return reduce16<false>(v); }
inline __attribute__((target("avx512f"), always_inline)) float hmax16(__m512 v) { return reduce16<true>(v); }
#endif

}  // namespace llmctl::kernels::cpu
