#include "rmsnorm_cpu.h"

#include <cmath>

namespace llmctl::kernels::cpu {

void rms_norm_forward_rows(const float* x, const float* w, float* y, float* rstd, std::int64_t rows,
                           std::int64_t cols, float eps) {
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    float* yr = y + r * cols;
    double ss = 0;  // the mean of squares in double: rows are up to thousands wide
    for (std::int64_t c = 0; c < cols; ++c) ss += static_cast<double>(xr[c]) * xr[c];
    const float s = 1.0f / std::sqrt(static_cast<float>(ss / static_cast<double>(cols)) + eps);
    rstd[r] = s;
    for (std::int64_t c = 0; c < cols; ++c) yr[c] = w[c] * (xr[c] * s);
  }
}

void rms_norm_backward_rows(const float* g, const float* x, const float* w, const float* rstd, float* dx,
                            float* dw_partial, std::int64_t rows, std::int64_t cols) {
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* gr = g + r * cols;
    const float* xr = x + r * cols;
    float* dxr = dx + r * cols;
    const float s = rstd[r];
    double dot = 0;  // sum over the row of (g * w) * xhat
    for (std::int64_t c = 0; c < cols; ++c) {
      const float xhat = xr[c] * s;
      dot += static_cast<double>(gr[c] * w[c]) * xhat;
      dw_partial[c] += gr[c] * xhat;
    }
    const float m = static_cast<float>(dot / static_cast<double>(cols));
    for (std::int64_t c = 0; c < cols; ++c) dxr[c] = s * (gr[c] * w[c] - xr[c] * s * m);
  }
}

}  // namespace llmctl::kernels::cpu
