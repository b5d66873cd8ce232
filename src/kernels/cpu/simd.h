#pragma once
// Marks a CPU kernel to be compiled for AVX-512, AVX2 and baseline x86-64, the best one
// picked when the binary loads (GCC function multiversioning): the build stays portable
// while the loops vectorise for the machine they run on.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LLMCTL_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define LLMCTL_SIMD_CLONES
#endif

namespace llmctl::kernels::cpu {

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

}  // namespace llmctl::kernels::cpu
