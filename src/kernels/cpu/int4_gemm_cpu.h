#pragma once
// CPU GEMM on 4-bit weights (AWQ w4, asymmetric, groups of kInt4Group input channels along
// k): y[m][n] = sum_k x[m][k] * (q[n][k] - z[n][g]) * s[n][g] + b[n].
//
// The weights are repacked once at load, K-contiguous per output row: for row n and group
// g, 64 bytes whose byte j holds q[n][128g + j] in its low nibble and q[n][128g + 64 + j]
// in its high nibble, beside fp32 s[n][g] and s[n][g] * z[n][g]. The activations are
// quantized on the fly, per row and group, to int8 (symmetric: xq = round(x / sx),
// sx = max|x| / 127), with the group sums of xq, so that
//   y[m][n] = sum_g s[n][g] * sx[m][g] * (sum_k q * xq  -  z[n][g] * sum_k xq).
// The integer dot products are u8 (the unsigned q) x s8 (xq): one AVX-512 VNNI vpdpbusd
// per 64 weights, AVX-512BW / AVX2 maddubs + madd without VNNI, plain loops otherwise,
// picked at run time (or forced, for tests). Against a float GEMM on the dequantized
// weights, the only error is the activations' rounding (at most sx / 2 per element).
#include <c10/util/BFloat16.h>

#include <cstdint>

namespace llmctl::kernels::cpu {

inline constexpr std::int64_t kInt4Group = 128;  // k per group (AWQ's group size must be a multiple)

// Which integer dot-product code runs. kAuto = the best the CPU has.
enum class Int4Isa { kAuto, kScalar, kAvx2, kAvx512Vnni };
// The one that kAuto resolves to on this CPU.
Int4Isa int4_best_isa();
// Forces a path (tests); kAuto restores the default. A path the CPU lacks is refused
// (returns false and changes nothing).
bool int4_force_isa(Int4Isa isa);
Int4Isa int4_active_isa();

struct Int4Weights {
  const std::uint8_t* q;          // [n][k / kInt4Group][64]
  const float* scale;             // [n][k / kInt4Group]
  const float* scale_zero;        // [n][k / kInt4Group]: scale * zero
  std::int64_t n = 0, k = 0;      // k % kInt4Group == 0
};

// Repacks AWQ's storage (group size `awq_group`, a multiple of kInt4Group): qweight int32
// [k, n/8], qzeros int32 [k/awq_group, n/8], scales fp16 bits [k/awq_group, n].
void int4_repack_awq(const std::int32_t* qweight, const std::int32_t* qzeros, const std::uint16_t* scales_f16,
                     std::int64_t n, std::int64_t k, std::int64_t awq_group, std::uint8_t* q, float* scale,
                     float* scale_zero);

// Rows [r0, r1) of x [m, k] (row stride ldx) -> xq int8 [m, k], and per row and group
// xs[m][g] = sx and xsz[m][g] = sx * sum_k xq.
void int4_quantize_rows(const float* x, std::int64_t ldx, std::int64_t k, std::int64_t r0, std::int64_t r1,
                        std::int8_t* xq, float* xs, float* xsz);
void int4_quantize_rows(const c10::BFloat16* x, std::int64_t ldx, std::int64_t k, std::int64_t r0, std::int64_t r1,
                        std::int8_t* xq, float* xs, float* xsz);

// Output columns [n0, n1) of all m rows: y[m][n] (row stride ldy) = the formula above,
// + bias[n] if bias is not null.
void int4_gemm(const Int4Weights& w, const std::int8_t* xq, const float* xs, const float* xsz, std::int64_t m,
               std::int64_t n0, std::int64_t n1, const float* bias, float* y, std::int64_t ldy);
void int4_gemm(const Int4Weights& w, const std::int8_t* xq, const float* xs, const float* xsz, std::int64_t m,
               std::int64_t n0, std::int64_t n1, const float* bias, c10::BFloat16* y, std::int64_t ldy);

}  // namespace llmctl::kernels::cpu
