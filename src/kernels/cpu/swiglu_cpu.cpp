#include "swiglu_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "simd.h"

namespace llmctl::kernels::cpu {
namespace {

// exp(x) for the sigmoid, written so the compiler vectorises it (std::exp is a scalar
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

inline __attribute__((always_inline)) float sigmoid(float g) { return 1.0f / (1.0f + exp_approx(-g)); }

template <typename T>
inline __attribute__((always_inline)) void forward_body(const T* g, const T* u, T* h, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) {
    const float gf = load(g, i);
    store(h, i, gf * sigmoid(gf) * load(u, i));
  }
}

template <typename T>
inline __attribute__((always_inline)) void backward_body(const T* g, const T* u, const T* dh, T* dg, T* du,
                                                         std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) {
    const float gf = load(g, i), uf = load(u, i), d = load(dh, i);
    const float s = sigmoid(gf);
    store(dg, i, d * uf * s * (1.0f + gf * (1.0f - s)));
    store(du, i, d * gf * s);
  }
}

}  // namespace

LLMCTL_SIMD_CLONES void swiglu_forward(const float* g, const float* u, float* h, std::int64_t n) {
  forward_body(g, u, h, n);
}
LLMCTL_SIMD_CLONES void swiglu_forward(const c10::BFloat16* g, const c10::BFloat16* u, c10::BFloat16* h,
                                       std::int64_t n) {
  forward_body(g, u, h, n);
}
LLMCTL_SIMD_CLONES void swiglu_backward(const float* g, const float* u, const float* dh, float* dg, float* du,
                                        std::int64_t n) {
  backward_body(g, u, dh, dg, du, n);
}
LLMCTL_SIMD_CLONES void swiglu_backward(const c10::BFloat16* g, const c10::BFloat16* u, const c10::BFloat16* dh,
                                        c10::BFloat16* dg, c10::BFloat16* du, std::int64_t n) {
  backward_body(g, u, dh, dg, du, n);
}

}  // namespace llmctl::kernels::cpu
