#pragma once
// Fused cross-entropy rows over a vocabulary of `cols` (see kernels/cross_entropy.h):
//   forward:  lse[r] = log sum_j exp(x[r][j]);  loss[r] = lse[r] - x[r][t[r]]
//   backward: dx[r][j] = g * (exp(x[r][j] - lse[r]) - (j == t[r]))
#include <cstdint>

#include <c10/util/BFloat16.h>

namespace llmctl::kernels::cpu {

void cross_entropy_forward_rows(const float* x, const std::int64_t* t, float* lse, float* loss, std::int64_t rows,
                                std::int64_t cols);
void cross_entropy_forward_rows(const c10::BFloat16* x, const std::int64_t* t, float* lse, float* loss,
                                std::int64_t rows, std::int64_t cols);
void cross_entropy_backward_rows(const float* x, const std::int64_t* t, const float* lse, float g, float* dx,
                                 std::int64_t rows, std::int64_t cols);
void cross_entropy_backward_rows(const c10::BFloat16* x, const std::int64_t* t, const float* lse, float g,
                                 c10::BFloat16* dx, std::int64_t rows, std::int64_t cols);

}  // namespace llmctl::kernels::cpu
