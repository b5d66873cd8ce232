#include "swiglu_cpu.h"

#include "simd.h"

namespace llmctl::kernels::cpu {
namespace {

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
