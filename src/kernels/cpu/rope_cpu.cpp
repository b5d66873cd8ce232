#include "rope_cpu.h"

#include <c10/util/BFloat16.h>

#include "simd.h"

namespace llmctl::kernels::cpu {

namespace {

template <typename T>
inline __attribute__((always_inline)) void rope_rows_body(const T* x, T* y, const float* cos, const float* sin, const std::int64_t* table_row,
               std::int64_t rows, std::int64_t heads, std::int64_t head_dim, float sign) {
  const std::int64_t half = head_dim / 2;
  float c[512], s[512];  // head_dim <= 1024 (checked by the caller)
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* cr = cos + table_row[r] * head_dim;
    const float* sr = sin + table_row[r] * head_dim;
    for (std::int64_t i = 0; i < half; ++i) {
      // HF multiplies by the tables cast to x's dtype: round them the same way.
      c[i] = static_cast<float>(static_cast<T>(cr[i]));
      s[i] = sign * static_cast<float>(static_cast<T>(sr[i]));
    }
    for (std::int64_t h = 0; h < heads; ++h) {
      const T* xh = x + (r * heads + h) * head_dim;
      T* yh = y + (r * heads + h) * head_dim;
      for (std::int64_t i = 0; i < half; ++i) {
        const float a = load(xh, i), b = load(xh, i + half);
        store(yh, i, a * c[i] - b * s[i]);
        store(yh, i + half, b * c[i] + a * s[i]);
      }
    }
  }
}

LLMCTL_SIMD_CLONES
void rope_rows_f32(const float* x, float* y, const float* cos, const float* sin, const std::int64_t* table_row,
                   std::int64_t rows, std::int64_t heads, std::int64_t head_dim, float sign) {
  rope_rows_body(x, y, cos, sin, table_row, rows, heads, head_dim, sign);
}

LLMCTL_SIMD_CLONES
void rope_rows_bf16(const c10::BFloat16* x, c10::BFloat16* y, const float* cos, const float* sin,
                    const std::int64_t* table_row, std::int64_t rows, std::int64_t heads, std::int64_t head_dim,
                    float sign) {
  rope_rows_body(x, y, cos, sin, table_row, rows, heads, head_dim, sign);
}

}  // namespace

template <>
void rope_rows<float>(const float* x, float* y, const float* cos, const float* sin, const std::int64_t* table_row,
                      std::int64_t rows, std::int64_t heads, std::int64_t head_dim, float sign) {
  rope_rows_f32(x, y, cos, sin, table_row, rows, heads, head_dim, sign);
}

template <>
void rope_rows<c10::BFloat16>(const c10::BFloat16* x, c10::BFloat16* y, const float* cos, const float* sin,
                              const std::int64_t* table_row, std::int64_t rows, std::int64_t heads,
                              std::int64_t head_dim, float sign) {
  rope_rows_bf16(x, y, cos, sin, table_row, rows, heads, head_dim, sign);
}

}  // namespace llmctl::kernels::cpu
