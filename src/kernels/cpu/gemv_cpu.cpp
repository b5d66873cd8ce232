#include "gemv_cpu.h"

#include "simd.h"

namespace llmctl::kernels::cpu {
namespace {

constexpr int kLanes = 16;  // one AVX-512 register of floats; two AVX2 registers

// Four weight rows against one x row: four independent 16-lane accumulators keep the
// FMA pipes busy while the four row streams come in from memory.
template <typename W>
inline __attribute__((always_inline)) void dot4(const float* x, const W* w0, const W* w1, const W* w2, const W* w3,
                                                std::int64_t k, float out[4]) {
  float a0[kLanes] = {}, a1[kLanes] = {}, a2[kLanes] = {}, a3[kLanes] = {};
  std::int64_t i = 0;
  for (; i + kLanes <= k; i += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      const float xv = x[i + j];
      a0[j] += xv * load(w0, i + j);
      a1[j] += xv * load(w1, i + j);
      a2[j] += xv * load(w2, i + j);
      a3[j] += xv * load(w3, i + j);
    }
  float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  for (int j = 0; j < kLanes; ++j) {
    s0 += a0[j];
    s1 += a1[j];
    s2 += a2[j];
    s3 += a3[j];
  }
  for (; i < k; ++i) {
    s0 += x[i] * load(w0, i);
    s1 += x[i] * load(w1, i);
    s2 += x[i] * load(w2, i);
    s3 += x[i] * load(w3, i);
  }
  out[0] = s0, out[1] = s1, out[2] = s2, out[3] = s3;
}

template <typename W>
inline __attribute__((always_inline)) void gemv_body(const float* x, std::int64_t m, std::int64_t k, const W* w,
                                                     std::int64_t n_begin, std::int64_t n_end, float* y,
                                                     std::int64_t ldy) {
  std::int64_t n = n_begin;
  float r[4];
  for (; n + 4 <= n_end; n += 4) {
    const W *w0 = w + n * k, *w1 = w0 + k, *w2 = w1 + k, *w3 = w2 + k;
    for (std::int64_t row = 0; row < m; ++row) {
      dot4(x + row * k, w0, w1, w2, w3, k, r);
      for (int j = 0; j < 4; ++j) y[row * ldy + n + j] = r[j];
    }
  }
  for (; n < n_end; ++n)  // at most three rows left: reuse dot4 on the same row
    for (std::int64_t row = 0; row < m; ++row) {
      const W* wn = w + n * k;
      dot4(x + row * k, wn, wn, wn, wn, k, r);
      y[row * ldy + n] = r[0];
    }
}

}  // namespace

LLMCTL_SIMD_CLONES void gemv_rows(const float* x, std::int64_t m, std::int64_t k, const float* w,
                                  std::int64_t n_begin, std::int64_t n_end, float* y, std::int64_t ldy) {
  gemv_body(x, m, k, w, n_begin, n_end, y, ldy);
}
LLMCTL_SIMD_CLONES void gemv_rows(const float* x, std::int64_t m, std::int64_t k, const c10::BFloat16* w,
                                  std::int64_t n_begin, std::int64_t n_end, float* y, std::int64_t ldy) {
  gemv_body(x, m, k, w, n_begin, n_end, y, ldy);
}

}  // namespace llmctl::kernels::cpu
