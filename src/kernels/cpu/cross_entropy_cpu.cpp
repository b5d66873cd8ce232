#include "cross_entropy_cpu.h"

#include <cmath>

#include "simd.h"

namespace llmctl::kernels::cpu {
namespace {

// Row maximum and sum of exp(x - max) in 16 independent lanes, so both loops vectorise.
template <typename T>
inline __attribute__((always_inline)) float row_logsumexp(const T* x, std::int64_t n) {
  float mx[16];
  for (int j = 0; j < 16; ++j) mx[j] = -INFINITY;
  std::int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) {
      const float v = load(x, i + j);
      mx[j] = v > mx[j] ? v : mx[j];
    }
  float m = -INFINITY;
  for (int j = 0; j < 16; ++j) m = mx[j] > m ? mx[j] : m;
  for (std::int64_t k = i; k < n; ++k) m = load(x, k) > m ? load(x, k) : m;
  float sum[16] = {};
  for (i = 0; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) sum[j] += exp_approx(load(x, i + j) - m);
  double s = 0;
  for (int j = 0; j < 16; ++j) s += sum[j];
  for (std::int64_t k = i; k < n; ++k) s += exp_approx(load(x, k) - m);
  return m + static_cast<float>(std::log(s));
}

template <typename T>
inline __attribute__((always_inline)) void forward_body(const T* x, const std::int64_t* t, float* lse, float* loss,
                                                        std::int64_t rows, std::int64_t cols) {
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * cols;
    lse[r] = row_logsumexp(xr, cols);
    loss[r] = lse[r] - load(xr, t[r]);
  }
}

template <typename T>
inline __attribute__((always_inline)) void backward_body(const T* x, const std::int64_t* t, const float* lse, float g,
                                                         T* dx, std::int64_t rows, std::int64_t cols) {
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * cols;
    T* dr = dx + r * cols;
    const float l = lse[r];
    for (std::int64_t j = 0; j < cols; ++j) store(dr, j, g * exp_approx(load(xr, j) - l));
    store(dr, t[r], g * (exp_approx(load(xr, t[r]) - l) - 1.0f));
  }
}

}  // namespace

LLMCTL_SIMD_CLONES void cross_entropy_forward_rows(const float* x, const std::int64_t* t, float* lse, float* loss,
                                                   std::int64_t rows, std::int64_t cols) {
  forward_body(x, t, lse, loss, rows, cols);
}
LLMCTL_SIMD_CLONES void cross_entropy_forward_rows(const c10::BFloat16* x, const std::int64_t* t, float* lse,
                                                   float* loss, std::int64_t rows, std::int64_t cols) {
  forward_body(x, t, lse, loss, rows, cols);
}
LLMCTL_SIMD_CLONES void cross_entropy_backward_rows(const float* x, const std::int64_t* t, const float* lse, float g,
                                                    float* dx, std::int64_t rows, std::int64_t cols) {
  backward_body(x, t, lse, g, dx, rows, cols);
}
LLMCTL_SIMD_CLONES void cross_entropy_backward_rows(const c10::BFloat16* x, const std::int64_t* t, const float* lse,
                                                    float g, c10::BFloat16* dx, std::int64_t rows,
                                                    std::int64_t cols) {
  backward_body(x, t, lse, g, dx, rows, cols);
}

}  // namespace llmctl::kernels::cpu
