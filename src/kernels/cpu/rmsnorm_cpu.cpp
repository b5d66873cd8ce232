#include "rmsnorm_cpu.h"

#include <cmath>
#include <vector>

#include "simd.h"

namespace llmctl::kernels::cpu {

LLMCTL_SIMD_CLONES
void rms_norm_forward_rows(const float* x, const float* w, float* y, float* rstd, std::int64_t rows,
                           std::int64_t cols, float eps) {
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    float* yr = y + r * cols;
    const double ss = dot_lanes(xr, xr, cols);
    const float s = 1.0f / std::sqrt(static_cast<float>(ss / static_cast<double>(cols)) + eps);
    rstd[r] = s;
    for (std::int64_t c = 0; c < cols; ++c) yr[c] = w[c] * (xr[c] * s);
  }
}

LLMCTL_SIMD_CLONES
void rms_norm_forward_rows(const c10::BFloat16* x, const c10::BFloat16* w, c10::BFloat16* y, std::int64_t rows,
                           std::int64_t cols, float eps) {
  std::vector<float> xf(static_cast<std::size_t>(cols));
  for (std::int64_t r = 0; r < rows; ++r) {
    const c10::BFloat16* xr = x + r * cols;
    c10::BFloat16* yr = y + r * cols;
    for (std::int64_t c = 0; c < cols; ++c) xf[c] = load(xr, c);
    const double ss = dot_lanes(xf.data(), xf.data(), cols);
    const float s = 1.0f / std::sqrt(static_cast<float>(ss / static_cast<double>(cols)) + eps);
    for (std::int64_t c = 0; c < cols; ++c) {
      store(yr, c, xf[c] * s);                 // the normalised value, rounded to bf16
      store(yr, c, load(w, c) * load(yr, c));  // times the weight, rounded again
    }
  }
}

LLMCTL_SIMD_CLONES
void rms_norm_backward_rows(const float* g, const float* x, const float* w, const float* rstd, float* dx,
                            float* dw_partial, std::int64_t rows, std::int64_t cols) {
  std::vector<float> gw(static_cast<std::size_t>(cols));
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* gr = g + r * cols;
    const float* xr = x + r * cols;
    float* dxr = dx + r * cols;
    const float s = rstd[r];
    for (std::int64_t c = 0; c < cols; ++c) {
      gw[c] = gr[c] * w[c];
      dw_partial[c] += gr[c] * (xr[c] * s);
    }
    // mean over the row of (g * w) * xhat, with xhat = x * s
    const float m = static_cast<float>(dot_lanes(gw.data(), xr, cols) * s / static_cast<double>(cols));
    for (std::int64_t c = 0; c < cols; ++c) dxr[c] = s * (gw[c] - xr[c] * s * m);
  }
}

}  // namespace llmctl::kernels::cpu
