#pragma once
// ggml's tensor element types as stored in GGUF files: block layouts, byte sizes, and
// conversion to and from float32 bit-for-bit as ggml's reference C code (ggml-quants.c)
// does it, so that files written here load in llama.cpp and files from llama.cpp load here.
//
// Every quantized type stores a row as consecutive blocks of `block_size` values; a row's
// length must be a multiple of it. Layouts (little-endian, fp16 = IEEE half):
//   Q4_0  32 values, 18 bytes: fp16 d, 16 bytes nibbles; x = (q - 8) * d.
//         Byte j holds value j (low nibble) and value j + 16 (high nibble).
//   Q4_1  32 values, 20 bytes: fp16 d, fp16 m, 16 bytes nibbles; x = q * d + m.
//   Q5_0  32 values, 22 bytes: fp16 d, u32 qh (bit j = 5th bit of value j), 16 bytes nibbles;
//         x = (q - 16) * d.
//   Q5_1  32 values, 24 bytes: fp16 d, fp16 m, u32 qh, 16 bytes nibbles; x = q * d + m.
//   Q8_0  32 values, 34 bytes: fp16 d, 32 int8; x = q * d.
//   Q4_K  256 values, 144 bytes: fp16 d, fp16 dmin, 12 bytes of 6-bit (scale, min) pairs for
//         8 sub-blocks of 32, 128 bytes nibbles; x = d*sc * q - dmin*m.
//   Q5_K  256 values, 176 bytes: as Q4_K plus 32 bytes qh of 5th bits before the nibbles.
//   Q6_K  256 values, 210 bytes: 128 bytes low nibbles, 64 bytes 2-bit highs, 16 int8
//         scales, fp16 d; x = d * scale * (q - 32).
#include <cstddef>
#include <cstdint>
#include <string>

namespace llmctl {

enum class GgmlType : std::uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  BF16 = 30,
};

// True for the type ids above (the ones llmctl reads); GGUF files may hold others.
bool ggml_type_supported(std::uint32_t id);
// "F32", "Q4_K", ...; "type N" for ids outside the list.
std::string ggml_type_name(std::uint32_t id);
inline std::string ggml_type_name(GgmlType t) { return ggml_type_name(static_cast<std::uint32_t>(t)); }
// Parses a name as written on the command line ("q8_0", "F16", "bf16"); throws Error listing
// the known names otherwise.
GgmlType ggml_type_from_name(const std::string& name);

std::int64_t ggml_block_size(GgmlType t);  // values per block (1 for F32/F16/BF16)
std::size_t ggml_type_size(GgmlType t);    // bytes per block
bool ggml_is_quantized(GgmlType t);        // a block type (not F32/F16/BF16)
// Bytes of a row of `n` values; throws Error when n is not a multiple of the block size.
std::size_t ggml_row_bytes(GgmlType t, std::int64_t n);

// IEEE half / bfloat16 <-> float, rounding to nearest even as ggml does (bf16: NaN kept quiet).
std::uint16_t fp32_to_fp16(float x);
float fp16_to_fp32(std::uint16_t h);
std::uint16_t fp32_to_bf16(float x);
float bf16_to_fp32(std::uint16_t h);

// One row of `n` values of type `t` at `src` -> float32 at `dst`.
void ggml_dequantize_row(GgmlType t, const std::uint8_t* src, float* dst, std::int64_t n);
// `rows` rows of `n` values each, rows in parallel (OpenMP) when the tensor is large.
void ggml_dequantize(GgmlType t, const std::uint8_t* src, float* dst, std::int64_t rows, std::int64_t n);

// The types ggml_quantize_row writes: F32, F16, BF16, Q8_0, Q4_0.
bool ggml_can_quantize(GgmlType t);
// float32 row -> type `t` with ggml's reference quantizer (quantize_row_*_ref); `dst` must
// hold ggml_row_bytes(t, n) bytes. Throws Error for types it cannot write.
void ggml_quantize_row(GgmlType t, const float* src, std::uint8_t* dst, std::int64_t n);
void ggml_quantize(GgmlType t, const float* src, std::uint8_t* dst, std::int64_t rows, std::int64_t n);

}  // namespace llmctl
