#include "llmctl/quant/ggml_quants.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>

#include "llmctl/util/error.h"

namespace llmctl {
namespace {

struct TypeInfo {
  GgmlType type;
  const char* name;
  std::int64_t block;
  std::size_t bytes;
};

constexpr std::int64_t kQK = 32;    // values per block of the classic quants
constexpr std::int64_t kQKK = 256;  // values per super-block of the K-quants

constexpr TypeInfo kTypes[] = {
    {GgmlType::F32, "F32", 1, 4},         {GgmlType::F16, "F16", 1, 2},
    {GgmlType::Q4_0, "Q4_0", kQK, 18},    {GgmlType::Q4_1, "Q4_1", kQK, 20},
    {GgmlType::Q5_0, "Q5_0", kQK, 22},    {GgmlType::Q5_1, "Q5_1", kQK, 24},
    {GgmlType::Q8_0, "Q8_0", kQK, 34},    {GgmlType::Q4_K, "Q4_K", kQKK, 144},
    {GgmlType::Q5_K, "Q5_K", kQKK, 176},  {GgmlType::Q6_K, "Q6_K", kQKK, 210},
    {GgmlType::BF16, "BF16", 1, 2},
};

const TypeInfo& info(GgmlType t) {
  for (const auto& i : kTypes)
    if (i.type == t) return i;
  throw Error("unsupported ggml type " + std::to_string(static_cast<std::uint32_t>(t)));
}

std::uint32_t float_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

float bits_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

std::uint16_t load_u16(const std::uint8_t* p) { return static_cast<std::uint16_t>(p[0] | (p[1] << 8)); }
std::uint32_t load_u32(const std::uint8_t* p) {
  return std::uint32_t(p[0]) | (std::uint32_t(p[1]) << 8) | (std::uint32_t(p[2]) << 16) | (std::uint32_t(p[3]) << 24);
}
void store_u16(std::uint8_t* p, std::uint16_t v) {
  p[0] = static_cast<std::uint8_t>(v);
  p[1] = static_cast<std::uint8_t>(v >> 8);
}
float load_half(const std::uint8_t* p) { return fp16_to_fp32(load_u16(p)); }

// --- dequantization, one block at a time (ggml's dequantize_row_* loop bodies) ---

void dequant_q4_0(const std::uint8_t* b, float* y) {
  const float d = load_half(b);
  const std::uint8_t* qs = b + 2;
  for (int j = 0; j < kQK / 2; ++j) {
    y[j] = static_cast<float>((qs[j] & 0x0F) - 8) * d;
    y[j + kQK / 2] = static_cast<float>((qs[j] >> 4) - 8) * d;
  }
}

void dequant_q4_1(const std::uint8_t* b, float* y) {
  const float d = load_half(b), m = load_half(b + 2);
  const std::uint8_t* qs = b + 4;
  for (int j = 0; j < kQK / 2; ++j) {
    y[j] = static_cast<float>(qs[j] & 0x0F) * d + m;
    y[j + kQK / 2] = static_cast<float>(qs[j] >> 4) * d + m;
  }
}

void dequant_q5_0(const std::uint8_t* b, float* y) {
  const float d = load_half(b);
  const std::uint32_t qh = load_u32(b + 2);
  const std::uint8_t* qs = b + 6;
  for (int j = 0; j < kQK / 2; ++j) {
    const int hi0 = static_cast<int>((qh >> j) & 1) << 4;
    const int hi1 = static_cast<int>((qh >> (j + 16)) & 1) << 4;
    y[j] = static_cast<float>(((qs[j] & 0x0F) | hi0) - 16) * d;
    y[j + kQK / 2] = static_cast<float>(((qs[j] >> 4) | hi1) - 16) * d;
  }
}

void dequant_q5_1(const std::uint8_t* b, float* y) {
  const float d = load_half(b), m = load_half(b + 2);
  const std::uint32_t qh = load_u32(b + 4);
  const std::uint8_t* qs = b + 8;
  for (int j = 0; j < kQK / 2; ++j) {
    const int hi0 = static_cast<int>((qh >> j) & 1) << 4;
    const int hi1 = static_cast<int>((qh >> (j + 16)) & 1) << 4;
    y[j] = static_cast<float>((qs[j] & 0x0F) | hi0) * d + m;
    y[j + kQK / 2] = static_cast<float>((qs[j] >> 4) | hi1) * d + m;
  }
}

void dequant_q8_0(const std::uint8_t* b, float* y) {
  const float d = load_half(b);
  for (int j = 0; j < kQK; ++j) y[j] = static_cast<float>(static_cast<std::int8_t>(b[2 + j])) * d;
}

// The 12 scale bytes of Q4_K/Q5_K pack 8 six-bit scales and 8 six-bit mins: sub-blocks 0-3
// in the low 6 bits of bytes 0-3 (scales) and 4-7 (mins); sub-blocks 4-7 take their low 4
// bits from bytes 8-11 and their top 2 bits from the spare high bits of bytes 0-7.
void k_scale_min(int j, const std::uint8_t* q, std::uint8_t* sc, std::uint8_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = static_cast<std::uint8_t>((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4));
    *m = static_cast<std::uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

void dequant_q4_k(const std::uint8_t* b, float* y) {
  const float d = load_half(b), dmin = load_half(b + 2);
  const std::uint8_t* scales = b + 4;
  const std::uint8_t* q = b + 16;
  for (int c = 0; c < 4; ++c) {  // 4 chunks of 64 values: two sub-blocks sharing 32 bytes
    std::uint8_t sc, m;
    k_scale_min(2 * c, scales, &sc, &m);
    const float d1 = d * sc, m1 = dmin * m;
    k_scale_min(2 * c + 1, scales, &sc, &m);
    const float d2 = d * sc, m2 = dmin * m;
    for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>(q[l] & 0x0F) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>(q[l] >> 4) - m2;
    q += 32;
  }
}

void dequant_q5_k(const std::uint8_t* b, float* y) {
  const float d = load_half(b), dmin = load_half(b + 2);
  const std::uint8_t* scales = b + 4;
  const std::uint8_t* qh = b + 16;
  const std::uint8_t* ql = b + 48;
  for (int c = 0; c < 4; ++c) {
    std::uint8_t sc, m;
    k_scale_min(2 * c, scales, &sc, &m);
    const float d1 = d * sc, m1 = dmin * m;
    k_scale_min(2 * c + 1, scales, &sc, &m);
    const float d2 = d * sc, m2 = dmin * m;
    const int bit_lo = 2 * c, bit_hi = 2 * c + 1;  // qh bit of the chunk's two halves
    for (int l = 0; l < 32; ++l)
      *y++ = d1 * static_cast<float>((ql[l] & 0x0F) | (((qh[l] >> bit_lo) & 1) << 4)) - m1;
    for (int l = 0; l < 32; ++l)
      *y++ = d2 * static_cast<float>((ql[l] >> 4) | (((qh[l] >> bit_hi) & 1) << 4)) - m2;
    ql += 32;
  }
}

void dequant_q6_k(const std::uint8_t* b, float* y) {
  const std::uint8_t* ql = b;
  const std::uint8_t* qh = b + 128;
  const auto* sc = reinterpret_cast<const std::int8_t*>(b + 192);
  const float d = load_half(b + 208);
  for (int half = 0; half < 2; ++half) {  // 2 x 128 values: 64 ql bytes, 32 qh bytes, 8 scales
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = ((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * static_cast<float>(sc[is]) * static_cast<float>(q1);
      y[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
      y[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
      y[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

// --- reference quantizers (ggml's quantize_row_*_ref) ---

// C's float -> int conversion truncates; NaN is undefined there, 0 here.
int trunc_to_int(float v) { return std::isnan(v) ? 0 : static_cast<int>(std::max(-128.0f, std::min(255.0f, v))); }

void quant_q8_0(const float* x, std::uint8_t* b) {
  float amax = 0.0f;
  for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  store_u16(b, fp32_to_fp16(d));
  for (int j = 0; j < kQK; ++j) {
    // roundf: halves away from zero, as ggml rounds.
    const float q = std::round(x[j] * id);
    const int qi = std::isnan(q) ? 0 : static_cast<int>(std::max(-128.0f, std::min(127.0f, q)));
    b[2 + j] = static_cast<std::uint8_t>(static_cast<std::int8_t>(qi));
  }
}

void quant_q4_0(const float* x, std::uint8_t* b) {
  // The scale comes from the value of largest magnitude with its sign (the first one on
  // ties), mapped to -8 so the full range [-8, 7] is used.
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < kQK; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  const float d = max / -8.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  store_u16(b, fp32_to_fp16(d));
  for (int j = 0; j < kQK / 2; ++j) {
    const int q0 = std::min(15, std::max(0, trunc_to_int(x[j] * id + 8.5f)));
    const int q1 = std::min(15, std::max(0, trunc_to_int(x[j + kQK / 2] * id + 8.5f)));
    b[2 + j] = static_cast<std::uint8_t>(q0 | (q1 << 4));
  }
}

// Rows in parallel only when there is enough work to pay for the threads.
constexpr std::int64_t kParallelMin = 1 << 16;

}  // namespace

bool ggml_type_supported(std::uint32_t id) {
  for (const auto& i : kTypes)
    if (static_cast<std::uint32_t>(i.type) == id) return true;
  return false;
}

std::string ggml_type_name(std::uint32_t id) {
  for (const auto& i : kTypes)
    if (static_cast<std::uint32_t>(i.type) == id) return i.name;
  return "type " + std::to_string(id);
}

GgmlType ggml_type_from_name(const std::string& name) {
  std::string upper = name;
  for (auto& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  std::string known;
  for (const auto& i : kTypes) {
    if (upper == i.name) return i.type;
    std::string lower = i.name;
    for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    known += (known.empty() ? "" : ", ") + lower;
  }
  throw Error("unknown ggml type '" + name + "' (known: " + known + ")");
}

std::int64_t ggml_block_size(GgmlType t) { return info(t).block; }
std::size_t ggml_type_size(GgmlType t) { return info(t).bytes; }
bool ggml_is_quantized(GgmlType t) { return info(t).block > 1; }

std::size_t ggml_row_bytes(GgmlType t, std::int64_t n) {
  const auto& i = info(t);
  if (n < 0 || n % i.block != 0)
    throw Error(std::string(i.name) + " rows must be a multiple of " + std::to_string(i.block) +
                " values, got " + std::to_string(n));
  return static_cast<std::size_t>(n / i.block) * i.bytes;
}

std::uint16_t fp32_to_fp16(float f) {
  const std::uint32_t x = float_bits(f);
  const auto sign = static_cast<std::uint16_t>((x >> 16) & 0x8000);
  std::uint32_t a = x & 0x7fffffff;
  if (a > 0x7f800000) return static_cast<std::uint16_t>(sign | 0x7e00 | ((a >> 13) & 0x3ff));  // quiet NaN
  if (a >= 0x477ff000) return static_cast<std::uint16_t>(sign | 0x7c00);  // >= 65520 rounds to inf
  if (a < 0x38800000) {
    // Below the smallest normal half: adding 0.5 (whose ulp is the half subnormal step
    // 2^-24) makes the FPU round to a multiple of that step, to nearest even.
    const float r = bits_float(a) + 0.5f;
    return static_cast<std::uint16_t>(sign | (float_bits(r) - float_bits(0.5f)));
  }
  // Normal: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits to
  // nearest even; a carry into the exponent is the correct result.
  const std::uint32_t odd = (a >> 13) & 1;
  a += 0xc8000fffu + odd;
  return static_cast<std::uint16_t>(sign | (a >> 13));
}

float fp16_to_fp32(std::uint16_t h) {
  const std::uint32_t sign = std::uint32_t(h & 0x8000) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1f;
  const std::uint32_t mant = h & 0x3ff;
  if (exp == 0) {
    const float v = static_cast<float>(mant) * 5.9604644775390625e-8f;  // mant * 2^-24, exact
    return bits_float(sign | float_bits(v));
  }
  if (exp == 31) return bits_float(sign | 0x7f800000 | (mant << 13));
  return bits_float(sign | ((exp + 112) << 23) | (mant << 13));
}

std::uint16_t fp32_to_bf16(float f) {
  const std::uint32_t u = float_bits(f);
  if ((u & 0x7fffffff) > 0x7f800000) return static_cast<std::uint16_t>((u >> 16) | 64);  // quiet NaN
  return static_cast<std::uint16_t>((std::uint64_t(u) + 0x7fff + ((u >> 16) & 1)) >> 16);
}

float bf16_to_fp32(std::uint16_t h) { return bits_float(std::uint32_t(h) << 16); }

void ggml_dequantize_row(GgmlType t, const std::uint8_t* src, float* dst, std::int64_t n) {
  const auto& ti = info(t);
  ggml_row_bytes(t, n);  // validates n
  const std::int64_t blocks = n / ti.block;
  switch (t) {
    case GgmlType::F32: std::memcpy(dst, src, static_cast<std::size_t>(n) * 4); return;
    case GgmlType::F16:
      for (std::int64_t i = 0; i < n; ++i) dst[i] = fp16_to_fp32(load_u16(src + 2 * i));
      return;
    case GgmlType::BF16:
      for (std::int64_t i = 0; i < n; ++i) dst[i] = bf16_to_fp32(load_u16(src + 2 * i));
      return;
    default: break;
  }
  void (*block_fn)(const std::uint8_t*, float*) = nullptr;
  switch (t) {
    case GgmlType::Q4_0: block_fn = dequant_q4_0; break;
    case GgmlType::Q4_1: block_fn = dequant_q4_1; break;
    case GgmlType::Q5_0: block_fn = dequant_q5_0; break;
    case GgmlType::Q5_1: block_fn = dequant_q5_1; break;
    case GgmlType::Q8_0: block_fn = dequant_q8_0; break;
    case GgmlType::Q4_K: block_fn = dequant_q4_k; break;
    case GgmlType::Q5_K: block_fn = dequant_q5_k; break;
    case GgmlType::Q6_K: block_fn = dequant_q6_k; break;
    default: throw Error("cannot dequantize " + std::string(ti.name));
  }
  for (std::int64_t i = 0; i < blocks; ++i) block_fn(src + i * ti.bytes, dst + i * ti.block);
}

void ggml_dequantize(GgmlType t, const std::uint8_t* src, float* dst, std::int64_t rows, std::int64_t n) {
  const std::size_t rb = ggml_row_bytes(t, n);
#pragma omp parallel for schedule(static) if (rows * n >= kParallelMin)
  for (std::int64_t r = 0; r < rows; ++r) ggml_dequantize_row(t, src + r * rb, dst + r * n, n);
}

bool ggml_can_quantize(GgmlType t) {
  return t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::BF16 || t == GgmlType::Q8_0 ||
         t == GgmlType::Q4_0;
}

void ggml_quantize_row(GgmlType t, const float* src, std::uint8_t* dst, std::int64_t n) {
  const auto& ti = info(t);
  ggml_row_bytes(t, n);
  switch (t) {
    case GgmlType::F32: std::memcpy(dst, src, static_cast<std::size_t>(n) * 4); return;
    case GgmlType::F16:
      for (std::int64_t i = 0; i < n; ++i) store_u16(dst + 2 * i, fp32_to_fp16(src[i]));
      return;
    case GgmlType::BF16:
      for (std::int64_t i = 0; i < n; ++i) store_u16(dst + 2 * i, fp32_to_bf16(src[i]));
      return;
    case GgmlType::Q8_0:
      for (std::int64_t i = 0; i < n / kQK; ++i) quant_q8_0(src + i * kQK, dst + i * ti.bytes);
      return;
    case GgmlType::Q4_0:
      for (std::int64_t i = 0; i < n / kQK; ++i) quant_q4_0(src + i * kQK, dst + i * ti.bytes);
      return;
    default:
      throw Error("cannot quantize to " + std::string(ti.name) + " (f32, f16, bf16, q8_0 and q4_0 can be written)");
  }
}

void ggml_quantize(GgmlType t, const float* src, std::uint8_t* dst, std::int64_t rows, std::int64_t n) {
  if (!ggml_can_quantize(t))
    throw Error("cannot quantize to " + ggml_type_name(t) + " (f32, f16, bf16, q8_0 and q4_0 can be written)");
  const std::size_t rb = ggml_row_bytes(t, n);
#pragma omp parallel for schedule(static) if (rows * n >= kParallelMin)
  for (std::int64_t r = 0; r < rows; ++r) ggml_quantize_row(t, src + r * n, dst + r * rb, n);
}

}  // namespace llmctl
