#pragma once
// y[m][n] = sum_k x[m][k] * w[n][k] for a few rows m (decode-sized batches) and output
// rows n in [n_begin, n_end): the weight matrix is streamed from memory once, four rows at
// a time, while the x rows stay in L1. fp32 accumulation; x is fp32, w fp32 or bf16.
#include <cstdint>

#include <c10/util/BFloat16.h>

namespace llmctl::kernels::cpu {

void gemv_rows(const float* x, std::int64_t m, std::int64_t k, const float* w, std::int64_t n_begin,
               std::int64_t n_end, float* y, std::int64_t ldy);
void gemv_rows(const float* x, std::int64_t m, std::int64_t k, const c10::BFloat16* w, std::int64_t n_begin,
               std::int64_t n_end, float* y, std::int64_t ldy);

}  // namespace llmctl::kernels::cpu
