#pragma once
// Fused rotate-half RoPE for the CPU over rows of [heads, head_dim]: row r uses table row
// table_row[r] of cos/sin (fp32, head_dim wide; only the first half is read, the tables
// repeat it). `sign` = -1 applies the inverse rotation (the backward pass).
#include <cstdint>

namespace llmctl::kernels::cpu {

template <typename T>
void rope_rows(const T* x, T* y, const float* cos, const float* sin, const std::int64_t* table_row,
               std::int64_t rows, std::int64_t heads, std::int64_t head_dim, float sign);

}  // namespace llmctl::kernels::cpu
