#pragma once
// Inference GEMM on pre-packed weights: y[m][n] = sum_k x[m][k] * w[n][k].
//
// The weight matrix [N, K] is packed once into panels of kPanel output columns,
// panel p = [K][kPanel] with element (k, c) = w[p * kPanel + c][k] (zero past N), each
// panel contiguous. A micro-kernel keeps up to kMaxRows x kPanel accumulators in registers,
// broadcasts one x value per row and k, and streams the panel: no per-call packing (the
// BLAS path repacks the whole weight matrix on every call, as costly as reading it), a
// decode step reads each weight once, sequentially. Every output is one fp32 FMA chain over
// k in order, whatever the number of rows: a row's result does not depend on the batch it
// came with (prefix-cache hits and decode steps reproduce a cold prefill bit for bit).
#include <cstdint>

#include <c10/util/BFloat16.h>

namespace llmctl::kernels::cpu {

inline constexpr std::int64_t kPanel = 32;
inline constexpr std::int64_t kMaxRows = 12;  // 24 zmm accumulators

// w: [n, k] row-major -> packed: [ceil(n / kPanel), k, kPanel].
void pack_weight(const float* w, std::int64_t n, std::int64_t k, float* packed);
void pack_weight(const c10::BFloat16* w, std::int64_t n, std::int64_t k, c10::BFloat16* packed);

// Output columns of panels [p_begin, p_end) for all m rows: x fp32 [m, k] (row stride k),
// y fp32 [m, ldy] (columns >= n are not written).
void gemm_packed(const float* x, std::int64_t m, std::int64_t k, const float* packed, std::int64_t n,
                 std::int64_t p_begin, std::int64_t p_end, float* y, std::int64_t ldy);
void gemm_packed(const float* x, std::int64_t m, std::int64_t k, const c10::BFloat16* packed, std::int64_t n,
                 std::int64_t p_begin, std::int64_t p_end, float* y, std::int64_t ldy);

// bf16 activations on bf16 panels with AVX-512 BF16 dot products (vdpbf16ps: pairs of k
// multiplied in fp32 and added, so sums differ from gemm_packed's chain by rounding). For
// batches (twice the fp32 FMA rate); only where gemm_bf16_dot_usable() (AVX-512 BF16, no
// AMX), else it throws std::logic_error. x: bf16 [m, k].
bool gemm_bf16_dot_usable();
void gemm_packed_bf16_dot(const c10::BFloat16* x, std::int64_t m, std::int64_t k, const c10::BFloat16* packed,
                          std::int64_t n, std::int64_t p_begin, std::int64_t p_end, float* y, std::int64_t ldy);

}  // namespace llmctl::kernels::cpu
