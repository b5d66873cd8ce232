#pragma once
// Fused RMSNorm on fp32 rows, forward and backward, for the CPU. Plain pointers and
// loops the compiler vectorises; rows are split over threads by the caller.
//
//   forward:  rstd = 1 / sqrt(mean(x^2) + eps);  y = w * x * rstd
//   backward: xhat = x * rstd;  gw = g * w
//             dx = rstd * (gw - xhat * mean(gw * xhat));  dw += g * xhat (summed over rows)
#include <cstdint>

#include <c10/util/BFloat16.h>

namespace llmctl::kernels::cpu {

void rms_norm_forward_rows(const float* x, const float* w, float* y, float* rstd, std::int64_t rows,
                           std::int64_t cols, float eps);

// bf16 rows for inference (no rstd kept), rounding as the torch-ops reference does:
// y = bf16(w * bf16(x * rstd)), the statistics in fp32.
void rms_norm_forward_rows(const c10::BFloat16* x, const c10::BFloat16* w, c10::BFloat16* y, std::int64_t rows,
                           std::int64_t cols, float eps);

// dw_partial: one row of `cols` accumulators this call adds into (one per thread).
void rms_norm_backward_rows(const float* g, const float* x, const float* w, const float* rstd, float* dx,
                            float* dw_partial, std::int64_t rows, std::int64_t cols);

}  // namespace llmctl::kernels::cpu
