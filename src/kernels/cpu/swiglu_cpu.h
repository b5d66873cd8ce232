#pragma once
// Fused silu(g) * u over n elements, and its gradient:
//   s = sigmoid(g);  h = g * s * u
//   dg = dh * u * s * (1 + g * (1 - s));  du = dh * g * s
#include <cstdint>

#include <c10/util/BFloat16.h>

namespace llmctl::kernels::cpu {

void swiglu_forward(const float* g, const float* u, float* h, std::int64_t n);
void swiglu_forward(const c10::BFloat16* g, const c10::BFloat16* u, c10::BFloat16* h, std::int64_t n);
void swiglu_backward(const float* g, const float* u, const float* dh, float* dg, float* du, std::int64_t n);
void swiglu_backward(const c10::BFloat16* g, const c10::BFloat16* u, const c10::BFloat16* dh, c10::BFloat16* dg,
                     c10::BFloat16* du, std::int64_t n);

}  // namespace llmctl::kernels::cpu
