// GGUF reader/writer, ggml block formats, and the GGUF <-> model conversion.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstring>
#include <random>

#include "llmctl/convert/gguf_convert.h"
#include "llmctl/io/gguf.h"
#include "llmctl/io/model_dir.h"
#include "llmctl/quant/ggml_quants.h"
#include "llmctl/util/error.h"
#include "llmctl/util/fs.h"
#include "test_helpers.h"

using namespace llmctl;

namespace {

std::vector<std::uint8_t> bytes_of(const std::vector<float>& v) {
  std::vector<std::uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

// A file with one of everything: every scalar type, arrays (empty, nested), three tensors.
GgufWriter sample_writer() {
  GgufWriter w;
  w.add_string("general.architecture", "llama");
  w.add("k.u8", GgufValue::uint(GgufType::U8, 200));
  w.add("k.i8", GgufValue::sint(GgufType::I8, -100));
  w.add("k.u16", GgufValue::uint(GgufType::U16, 60000));
  w.add("k.i16", GgufValue::sint(GgufType::I16, -30000));
  w.add_u32("k.u32", 4000000000u);
  w.add_i32("k.i32", -2000000000);
  w.add_f32("k.f32", 0.1f);
  w.add_bool("k.bool", true);
  w.add_bool("k.false", false);
  w.add_string("k.string", std::string("h\xc3\xa9llo\0x", 8));
  w.add_u64("k.u64", 18000000000000000000ull);
  w.add("k.i64", GgufValue::sint(GgufType::I64, -9000000000000000000ll));
  w.add("k.f64", GgufValue::real(GgufType::F64, 3.141592653589793));
  w.add_string_array("k.strings", {"a", "", "<|im_end|>"});
  w.add_f32_array("k.floats", {1.5f, -0.25f, 1e-30f});
  w.add_i32_array("k.ints", {1, -2, 2147483647});
  w.add("k.empty", GgufValue::array(GgufType::U8, {}));
  w.add("k.nested", GgufValue::array(GgufType::Array, {GgufValue::i32_array({1, 2}), GgufValue::i32_array({3})}));
  w.add_tensor("a", {3, 2}, GgmlType::F32, bytes_of({1, 2, 3, 4, 5, 6}));
  std::vector<float> row(64);
  for (int i = 0; i < 64; ++i) row[i] = std::sin(0.3f * i);
  std::vector<std::uint8_t> q(ggml_row_bytes(GgmlType::Q8_0, 64));
  ggml_quantize_row(GgmlType::Q8_0, row.data(), q.data(), 64);
  w.add_tensor("b.weight", {1, 64}, GgmlType::Q8_0, q);
  w.add_tensor("c", {5}, GgmlType::F32, bytes_of({9, 8, 7, 6, 5}));
  return w;
}

void write_bytes(const std::string& path, const std::string& data) { write_file_atomic(path, data); }

std::uint64_t read_u64_at(const std::string& s, std::size_t at) {
  std::uint64_t v;
  std::memcpy(&v, s.data() + at, 8);
  return v;
}

}  // namespace

TEST(Gguf, RoundTripsEveryValueType) {
  TempDir dir;
  const std::string p = dir.path + "/m.gguf";
  auto w = sample_writer();
  w.write(p);
  GgufFile f(p);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  ASSERT_EQ(f.metadata().size(), 19u);
  EXPECT_EQ(f.metadata()[0].first, "general.architecture");  // file order kept
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get("k.u8").type, GgufType::U8);
  EXPECT_EQ(f.get_u32("k.u8"), 200u);
  EXPECT_EQ(f.get("k.i8").type, GgufType::I8);
  EXPECT_EQ(f.get_int("k.i8"), -100);
  EXPECT_EQ(f.get("k.u16").type, GgufType::U16);
  EXPECT_EQ(f.get_u32("k.u16"), 60000u);
  EXPECT_EQ(f.get_int("k.i16"), -30000);
  EXPECT_EQ(f.get_u32("k.u32"), 4000000000u);
  EXPECT_EQ(f.get_int("k.i32"), -2000000000);
  EXPECT_EQ(f.get("k.f32").type, GgufType::F32);
  EXPECT_EQ(static_cast<float>(f.get_float("k.f32")), 0.1f);
  EXPECT_TRUE(f.get_bool("k.bool"));
  EXPECT_FALSE(f.get_bool("k.false"));
  EXPECT_EQ(f.get_string("k.string"), std::string("h\xc3\xa9llo\0x", 8));
  EXPECT_EQ(static_cast<std::uint64_t>(f.get("k.u64").u), 18000000000000000000ull);
  EXPECT_EQ(f.get_int("k.i64"), -9000000000000000000ll);
  EXPECT_EQ(f.get_float("k.f64"), 3.141592653589793);
  EXPECT_EQ(f.get_string_array("k.strings"), (std::vector<std::string>{"a", "", "<|im_end|>"}));
  EXPECT_EQ(f.get_f32_array("k.floats"), (std::vector<float>{1.5f, -0.25f, 1e-30f}));
  EXPECT_EQ(f.get_i32_array("k.ints"), (std::vector<std::int32_t>{1, -2, 2147483647}));
  EXPECT_EQ(f.get("k.empty").elem, GgufType::U8);
  EXPECT_TRUE(f.get("k.empty").items.empty());
  const auto& nested = f.get("k.nested");
  ASSERT_EQ(nested.items.size(), 2u);
  EXPECT_EQ(nested.items[0], GgufValue::i32_array({1, 2}));
  EXPECT_EQ(nested.items[1], GgufValue::i32_array({3}));
  // Everything read equals what was written, type included.
  GgufFile again(p);
  for (const auto& [k, v] : f.metadata()) EXPECT_EQ(v, again.get(k)) << k;

  ASSERT_EQ(f.tensors().size(), 3u);
  const auto& a = f.tensor("a");
  EXPECT_EQ(a.shape, (std::vector<std::int64_t>{3, 2}));
  EXPECT_EQ(a.type, GgmlType::F32);
  std::vector<float> av(6);
  f.read_f32("a", av.data());
  EXPECT_EQ(av, (std::vector<float>{1, 2, 3, 4, 5, 6}));
  const auto& b = f.tensor("b.weight");
  EXPECT_EQ(b.type, GgmlType::Q8_0);
  EXPECT_EQ(b.bytes, 68u);
  for (const auto& t : f.tensors()) EXPECT_EQ(t.offset % 32, 0u) << t.name;
  EXPECT_EQ(f.data_offset() % 32, 0u);
  std::vector<float> cv(5);
  f.read_f32("c", cv.data());
  EXPECT_EQ(cv, (std::vector<float>{9, 8, 7, 6, 5}));
  EXPECT_EQ(file_size(p) % 32, 0u);  // the last tensor is padded too
}

TEST(Gguf, WritesDimsInnermostFirstAndZeroPadding) {
  TempDir dir;
  const std::string p = dir.path + "/m.gguf";
  GgufWriter w;
  w.add_tensor("t", {3, 2}, GgmlType::F32, bytes_of({1, 2, 3, 4, 5, 6}));
  w.write(p);
  const std::string s = read_file(p);
  // header(24) + name(8 + 1) + n_dims(4) -> dims at 37: innermost (2) first.
  EXPECT_EQ(read_u64_at(s, 37), 2u);
  EXPECT_EQ(read_u64_at(s, 45), 3u);
  GgufFile f(p);
  EXPECT_EQ(f.data_offset(), 96u);  // the 65-byte header padded to 32
  EXPECT_EQ(s.size(), 128u);
  for (std::size_t i = 65; i < 96; ++i) EXPECT_EQ(s[i], '\0') << i;
  for (std::size_t i = 96 + 24; i < s.size(); ++i) EXPECT_EQ(s[i], '\0') << i;
}

TEST(Gguf, HonoursCustomAlignment) {
  TempDir dir;
  const std::string p = dir.path + "/m.gguf";
  GgufWriter w;
  w.add_u32("general.alignment", 64);
  w.add_tensor("x", {3}, GgmlType::F32, bytes_of({1, 2, 3}));
  w.add_tensor("y", {2}, GgmlType::F32, bytes_of({4, 5}));
  w.write(p);
  GgufFile f(p);
  EXPECT_EQ(f.alignment(), 64u);
  EXPECT_EQ(f.data_offset() % 64, 0u);
  EXPECT_EQ(f.tensor("y").offset, 64u);
  EXPECT_ERROR_MENTIONS(GgufWriter().add_u32("general.alignment", 48), "power of two");
}

TEST(Gguf, TypedAccessorsNameTheKey) {
  TempDir dir;
  const std::string p = dir.path + "/m.gguf";
  sample_writer().write(p);
  GgufFile f(p);
  EXPECT_ERROR_MENTIONS(f.get_u32("llama.block_count"), "'llama.block_count' is missing");
  EXPECT_ERROR_MENTIONS(f.get_u32("k.string"), "'k.string' is string, expected");
  EXPECT_ERROR_MENTIONS(f.get_u32("k.i8"), "'k.i8'");  // negative: not a u32
  EXPECT_ERROR_MENTIONS(f.get_float("k.u32"), "expected f32 or f64");
  EXPECT_ERROR_MENTIONS(f.get_string("k.bool"), "'k.bool' is bool, expected a string");
  EXPECT_ERROR_MENTIONS(f.get_bool("k.u8"), "expected a bool");
  EXPECT_ERROR_MENTIONS(f.get_string_array("k.floats"), "array of f32, expected an array of strings");
  EXPECT_ERROR_MENTIONS(f.get_f32_array("k.strings"), "expected an array of f32");
  EXPECT_ERROR_MENTIONS(f.get_i32_array("k.floats"), "expected an array of i32");
  EXPECT_ERROR_MENTIONS(f.tensor("nope"), "no tensor named 'nope'");
  EXPECT_ERROR_MENTIONS(f.get_u32("k.u64"), "u32 range");
}

TEST(Gguf, WriterRejectsBadInput) {
  GgufWriter w;
  w.add_u32("a", 1);
  EXPECT_ERROR_MENTIONS(w.add_u32("a", 2), "added twice");
  EXPECT_ERROR_MENTIONS(w.add_tensor("t", {2, 3}, GgmlType::F32, bytes_of({1, 2})), "needs 24");
  EXPECT_ERROR_MENTIONS(w.add_tensor("q", {2, 48}, GgmlType::Q8_0, std::vector<std::uint8_t>(102)), "multiple of");
  EXPECT_ERROR_MENTIONS(w.add_tensor(std::string(64, 'n'), {1}, GgmlType::F32, bytes_of({1})), "name");
  EXPECT_ERROR_MENTIONS(w.add_tensor("five", {1, 1, 1, 1, 1}, GgmlType::F32, bytes_of({1})), "dimensions");
  EXPECT_ERROR_MENTIONS(GgufValue::array(GgufType::I32, {GgufValue::string("x")}), "holds a string");
}

class GgufCorrupt : public ::testing::Test {
 protected:
  void SetUp() override {
    good_ = dir_.path + "/good.gguf";
    GgufWriter w;
    w.add_string("general.architecture", "llama");
    w.add_string_array("tokenizer.ggml.tokens", {"a", "b", "c"});
    w.add_tensor("t", {2, 32}, GgmlType::F32, std::vector<std::uint8_t>(256, 0));
    w.add_tensor("u", {32}, GgmlType::F32, std::vector<std::uint8_t>(128, 0));
    w.write(good_);
    bytes_ = read_file(good_);
    GgufFile f(good_);
    data_start_ = f.data_offset();
    // The offset of tensor "u" is the last 8 bytes of its info, just before the padding.
    const std::string name_u = std::string("\x01\0\0\0\0\0\0\0u", 9);
    u_info_ = bytes_.find(name_u);
    ASSERT_NE(u_info_, std::string::npos);
  }
  std::string write(const std::string& data) {
    const std::string p = dir_.path + "/bad.gguf";
    write_bytes(p, data);
    return p;
  }
  TempDir dir_;
  std::string good_, bytes_;
  std::uint64_t data_start_ = 0;
  std::size_t u_info_ = 0;
};

TEST_F(GgufCorrupt, BadMagic) {
  std::string s = bytes_;
  s[0] = 'X';
  const auto p = write(s);
  EXPECT_ERROR_MENTIONS(GgufFile{p}, p + ": not a GGUF file");
  EXPECT_ERROR_MENTIONS(GgufFile{write("")}, "not a GGUF file");
  EXPECT_ERROR_MENTIONS(GgufFile{dir_.path}, "not a regular file");
  EXPECT_ERROR_MENTIONS(GgufFile{dir_.path + "/missing.gguf"}, "no such file");
}

TEST_F(GgufCorrupt, BadVersion) {
  std::string s = bytes_;
  s[4] = 7;
  EXPECT_ERROR_MENTIONS(GgufFile{write(s)}, "GGUF version 7 is not supported");
  s[4] = 1;
  EXPECT_ERROR_MENTIONS(GgufFile{write(s)}, "version 1");
  s[4] = 0;
  s[7] = 3;  // 3 written big-endian
  EXPECT_ERROR_MENTIONS(GgufFile{write(s)}, "big-endian");
  s = bytes_;
  s[4] = 2;  // v2 has the same layout as v3
  EXPECT_EQ(GgufFile{write(s)}.version(), 2u);
}

TEST_F(GgufCorrupt, TruncatedHeader) {
  for (std::size_t n : {6, 20, 30, 60, 100}) {
    const auto p = write(bytes_.substr(0, n));
    EXPECT_ERROR_MENTIONS(GgufFile{p}, p + ":");
    try {
      GgufFile f(p);
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_TRUE(m.find("truncated") != std::string::npos || m.find("cannot fit") != std::string::npos) << m;
    }
  }
}

TEST_F(GgufCorrupt, TruncatedTensorData) {
  const auto p = write(bytes_.substr(0, bytes_.size() - 100));
  EXPECT_ERROR_MENTIONS(GgufFile{p}, "tensor 'u': data [256, 384) lies outside");
}

TEST_F(GgufCorrupt, MisalignedAndOutOfRangeOffsets) {
  std::string s = bytes_;
  const std::size_t off_at = u_info_ + 9 + 4 + 8 + 4;  // name, n_dims, one dim, type
  ASSERT_EQ(read_u64_at(s, off_at), 256u);
  std::uint64_t v = 260;
  std::memcpy(&s[off_at], &v, 8);
  EXPECT_ERROR_MENTIONS(GgufFile{write(s)}, "tensor 'u': data offset 260 is not a multiple of the alignment 32");
  v = 1ull << 40;
  std::memcpy(&s[off_at], &v, 8);
  EXPECT_ERROR_MENTIONS(GgufFile{write(s)}, "lies outside");
  v = ~0ull - 31;  // offset + bytes would overflow
  std::memcpy(&s[off_at], &v, 8);
  EXPECT_ERROR_MENTIONS(GgufFile{write(s)}, "lies outside");
  v = 128;  // overlaps tensor 't'
  std::memcpy(&s[off_at], &v, 8);
  EXPECT_ERROR_MENTIONS(GgufFile{write(s)}, "overlap");
}

TEST_F(GgufCorrupt, HugeCountsAndLengths) {
  std::string s = bytes_;
  std::uint64_t v = 1ull << 60;
  std::memcpy(&s[16], &v, 8);  // kv count
  EXPECT_ERROR_MENTIONS(GgufFile{write(s)}, "metadata count");
  s = bytes_;
  std::memcpy(&s[8], &v, 8);  // tensor count
  EXPECT_ERROR_MENTIONS(GgufFile{write(s)}, "tensor count");
  s = bytes_;
  std::memcpy(&s[24], &v, 8);  // length of the first key
  EXPECT_ERROR_MENTIONS(GgufFile{write(s)}, "truncated");
  s = bytes_;
  const auto arr = s.find("tokenizer.ggml.tokens") + 21 + 4 + 4;  // key, type, elem type
  std::memcpy(&s[arr], &v, 8);
  EXPECT_ERROR_MENTIONS(GgufFile{write(s)}, "'tokenizer.ggml.tokens': array of");
}

TEST_F(GgufCorrupt, UnknownTypesAndBadDims) {
  std::string s = bytes_;
  const std::size_t type_at = u_info_ + 9 + 4 + 8;
  std::uint32_t t = 16;  // IQ2_XXS: real ggml, not read here
  std::memcpy(&s[type_at], &t, 4);
  EXPECT_ERROR_MENTIONS(GgufFile{write(s)}, "tensor 'u': ggml type 16 is not supported");
  s = bytes_;
  std::uint32_t dims = 9;
  std::memcpy(&s[u_info_ + 9], &dims, 4);
  EXPECT_ERROR_MENTIONS(GgufFile{write(s)}, "9 dimensions");
  s = bytes_;
  const auto kt = s.find("general.architecture") + 20;
  std::uint32_t vt = 13;
  std::memcpy(&s[kt], &vt, 4);
  EXPECT_ERROR_MENTIONS(GgufFile{write(s)}, "'general.architecture' has unknown value type 13");
}

// ---------------------------------------------------------------- ggml block formats

TEST(GgmlQuant, HalfAndBfloatConversionsRoundToNearestEven) {
  EXPECT_EQ(fp32_to_fp16(1.0f), 0x3c00);
  EXPECT_EQ(fp32_to_fp16(-2.0f), 0xc000);
  EXPECT_EQ(fp32_to_fp16(65504.0f), 0x7bff);
  EXPECT_EQ(fp32_to_fp16(65519.0f), 0x7bff);
  EXPECT_EQ(fp32_to_fp16(65520.0f), 0x7c00);  // halfway to 65536 rounds to even: inf
  EXPECT_EQ(fp32_to_fp16(INFINITY), 0x7c00);
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1.0f, -25)), 0x0000);         // tie -> even (0)
  EXPECT_EQ(fp32_to_fp16(std::ldexp(3.0f, -25)), 0x0002);         // tie -> even (2)
  EXPECT_EQ(fp32_to_fp16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // tie -> even
  EXPECT_EQ(fp32_to_fp16(1.0f + std::ldexp(3.0f, -11)), 0x3c02);  // tie -> even (up)
  EXPECT_EQ(fp32_to_fp16(0.1f), 0x2e66);
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1.0f, -14) * 0.99999f), 0x0400);  // rounds up to the smallest normal
  EXPECT_EQ(fp32_to_fp16(NAN) & 0x7e00, 0x7e00);
  EXPECT_EQ(fp16_to_fp32(0x3c00), 1.0f);
  EXPECT_EQ(fp16_to_fp32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(fp16_to_fp32(0xfbff), -65504.0f);
  EXPECT_TRUE(std::isinf(fp16_to_fp32(0x7c00)));
  // Every half survives the round trip.
  for (std::uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) continue;  // NaNs
    ASSERT_EQ(fp32_to_fp16(fp16_to_fp32(static_cast<std::uint16_t>(h))), h) << h;
  }
  // Same as torch (IEEE round-to-nearest-even) on random values.
  torch::manual_seed(3);
  auto x = torch::randn({4096}) * 1000;
  auto h = x.to(torch::kFloat16);
  auto bh = x.to(torch::kBFloat16);
  for (int i = 0; i < 4096; ++i) {
    const float v = x[i].item<float>();
    std::uint16_t th, tb;
    std::memcpy(&th, h[i].data_ptr(), 2);
    std::memcpy(&tb, bh[i].data_ptr(), 2);
    ASSERT_EQ(fp32_to_fp16(v), th) << v;
    ASSERT_EQ(fp32_to_bf16(v), tb) << v;
  }
  EXPECT_EQ(fp32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(fp32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);  // tie -> even
  EXPECT_EQ(fp32_to_bf16(1.0f + std::ldexp(3.0f, -8)), 0x3f82);
  EXPECT_EQ(bf16_to_fp32(0xbf80), -1.0f);
}

TEST(GgmlQuant, SizesAndNames) {
  EXPECT_EQ(ggml_row_bytes(GgmlType::Q4_0, 64), 36u);
  EXPECT_EQ(ggml_row_bytes(GgmlType::Q4_1, 32), 20u);
  EXPECT_EQ(ggml_row_bytes(GgmlType::Q5_0, 32), 22u);
  EXPECT_EQ(ggml_row_bytes(GgmlType::Q5_1, 32), 24u);
  EXPECT_EQ(ggml_row_bytes(GgmlType::Q8_0, 96), 102u);
  EXPECT_EQ(ggml_row_bytes(GgmlType::Q4_K, 512), 288u);
  EXPECT_EQ(ggml_row_bytes(GgmlType::Q5_K, 256), 176u);
  EXPECT_EQ(ggml_row_bytes(GgmlType::Q6_K, 256), 210u);
  EXPECT_EQ(ggml_row_bytes(GgmlType::BF16, 3), 6u);
  EXPECT_EQ(ggml_row_bytes(GgmlType::F32, 3), 12u);
  EXPECT_ERROR_MENTIONS(ggml_row_bytes(GgmlType::Q4_K, 32), "multiple of 256");
  EXPECT_EQ(ggml_type_from_name("q8_0"), GgmlType::Q8_0);
  EXPECT_EQ(ggml_type_from_name("BF16"), GgmlType::BF16);
  EXPECT_ERROR_MENTIONS(ggml_type_from_name("q3_k"), "unknown ggml type 'q3_k'");
  EXPECT_TRUE(ggml_type_supported(14));
  EXPECT_FALSE(ggml_type_supported(4));  // Q4_2 was removed from ggml
  EXPECT_EQ(ggml_type_name(13u), "Q5_K");
  EXPECT_ERROR_MENTIONS(ggml_quantize_row(GgmlType::Q6_K, nullptr, nullptr, 256), "cannot quantize to Q6_K");
}

TEST(GgmlQuant, Q8_0KnownBlock) {
  // amax 127 gives d = 1 exactly; halves round away from zero as roundf does.
  std::vector<float> x(32, 0.0f);
  const float head[] = {127, -127, 2.5f, -2.5f, 0.49f, 1.5f, -0.5f, 3.0f, 126.6f};
  std::copy(std::begin(head), std::end(head), x.begin());
  std::uint8_t b[34];
  ggml_quantize_row(GgmlType::Q8_0, x.data(), b, 32);
  EXPECT_EQ(b[0], 0x00);
  EXPECT_EQ(b[1], 0x3c);
  const int want[] = {127, -127, 3, -3, 0, 2, -1, 3, 127};
  for (int j = 0; j < 9; ++j) EXPECT_EQ(static_cast<std::int8_t>(b[2 + j]), want[j]) << j;
  for (int j = 9; j < 32; ++j) EXPECT_EQ(b[2 + j], 0) << j;
  float y[32];
  ggml_dequantize_row(GgmlType::Q8_0, b, y, 32);
  for (int j = 0; j < 9; ++j) EXPECT_EQ(y[j], static_cast<float>(want[j]));
  // All zeros: d = 0, every q = 0.
  std::vector<float> z(32, 0.0f);
  ggml_quantize_row(GgmlType::Q8_0, z.data(), b, 32);
  for (auto c : b) EXPECT_EQ(c, 0);
}

TEST(GgmlQuant, Q4_0KnownBlock) {
  // The largest magnitude is -8 -> d = -8 / -8 = 1; q = min(15, (int)(x + 8.5)).
  std::vector<float> x(32, 0.0f);
  x[0] = -8;     // q 0
  x[1] = 7;      // q 15
  x[2] = 0.4f;   // 8.9 -> 8
  x[3] = 0.5f;   // 9.0 -> 9
  x[4] = -0.6f;  // 7.9 -> 7
  x[16] = 7.9f;  // 16.4 -> clamped to 15
  x[17] = -3;    // 5.5 -> 5
  std::uint8_t b[18];
  ggml_quantize_row(GgmlType::Q4_0, x.data(), b, 32);
  EXPECT_EQ(b[0], 0x00);
  EXPECT_EQ(b[1], 0x3c);  // fp16(1.0)
  EXPECT_EQ(b[2 + 0], 0 | (15 << 4));   // value 0 low, value 16 high
  EXPECT_EQ(b[2 + 1], 15 | (5 << 4));   // value 1, value 17
  EXPECT_EQ(b[2 + 2], 8 | (8 << 4));
  EXPECT_EQ(b[2 + 3], 9 | (8 << 4));
  EXPECT_EQ(b[2 + 4], 7 | (8 << 4));
  float y[32];
  ggml_dequantize_row(GgmlType::Q4_0, b, y, 32);
  EXPECT_EQ(y[0], -8.0f);
  EXPECT_EQ(y[1], 7.0f);
  EXPECT_EQ(y[3], 1.0f);
  EXPECT_EQ(y[16], 7.0f);
  EXPECT_EQ(y[17], -3.0f);
  // A positive extreme gives a negative scale: 8 -> d = -1, q(8) = (int)0.5 = 0 -> (0-8)*-1 = 8.
  std::vector<float> p(32, 0.0f);
  p[5] = 8;
  p[6] = -7;
  ggml_quantize_row(GgmlType::Q4_0, p.data(), b, 32);
  EXPECT_EQ(fp16_to_fp32(static_cast<std::uint16_t>(b[0] | (b[1] << 8))), -1.0f);
  ggml_dequantize_row(GgmlType::Q4_0, b, y, 32);
  EXPECT_EQ(y[5], 8.0f);
  EXPECT_EQ(y[6], -7.0f);
  EXPECT_EQ(y[0], 0.0f);
}

TEST(GgmlQuant, QuantizeDequantizeErrorBounds) {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int rows = 16, n = 256;
  std::vector<float> x(rows * n);
  for (auto& v : x) v = nd(rng) * (1.0f + static_cast<float>(rng() % 100));
  for (auto t : {GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::F16, GgmlType::BF16}) {
    std::vector<std::uint8_t> q(rows * ggml_row_bytes(t, n));
    ggml_quantize(t, x.data(), q.data(), rows, n);
    std::vector<float> y(x.size());
    ggml_dequantize(t, q.data(), y.data(), rows, n);
    const int block = t == GgmlType::Q8_0 || t == GgmlType::Q4_0 ? 32 : 1;
    double sq = 0, sq_ref = 0;
    for (std::size_t b0 = 0; b0 < x.size(); b0 += block) {
      float amax = 0;
      for (int j = 0; j < block; ++j) amax = std::max(amax, std::fabs(x[b0 + j]));
      // Half a step, plus the fp16 rounding of the scale; Q4_0's +amax end may clamp one step.
      // (+1e-7: fp16 subnormals have an absolute step of 2^-24.)
      float bound = 1e-7f + (t == GgmlType::Q8_0   ? amax / 127 * 0.57f
                             : t == GgmlType::Q4_0 ? amax / 8 * 1.01f
                             : t == GgmlType::F16  ? amax * 0.0005f
                                                   : amax * 0.004f);
      for (int j = 0; j < block; ++j) {
        ASSERT_LE(std::fabs(x[b0 + j] - y[b0 + j]), bound) << ggml_type_name(t) << " at " << b0 + j;
        sq += double(x[b0 + j] - y[b0 + j]) * (x[b0 + j] - y[b0 + j]);
        sq_ref += double(x[b0 + j]) * x[b0 + j];
      }
    }
    const double rel = std::sqrt(sq / sq_ref);
    EXPECT_LT(rel, t == GgmlType::Q4_0 ? 0.2 : t == GgmlType::Q8_0 ? 0.02 : 0.005) << ggml_type_name(t);
    // Quantizing what came out gives the same bytes again (a fixed point).
    if (t != GgmlType::Q4_0) {
      std::vector<std::uint8_t> q2(q.size());
      ggml_quantize(t, y.data(), q2.data(), rows, n);
      EXPECT_EQ(q, q2) << ggml_type_name(t);
    }
  }
}

TEST(GgmlQuant, ClassicBlocksDequantizeByHand) {
  // Q4_1: d = 1, m = -8: nibble v -> v - 8.
  std::uint8_t b1[20] = {0x00, 0x3c, 0x00, 0xc8};
  for (int j = 0; j < 16; ++j) b1[4 + j] = static_cast<std::uint8_t>(j | ((15 - j) << 4));
  float y[32];
  ggml_dequantize_row(GgmlType::Q4_1, b1, y, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], j - 8.0f);
    EXPECT_EQ(y[j + 16], 7.0f - j);
  }
  // Q5_0: d = 0.5; bit j of qh is value j's fifth bit; x = (q - 16) * d.
  std::uint8_t b2[22] = {0x00, 0x38};
  const std::uint32_t qh = 0x8000'0001u | (1u << 20);  // values 0, 20, 31 get +16
  std::memcpy(b2 + 2, &qh, 4);
  for (int j = 0; j < 16; ++j) b2[6 + j] = static_cast<std::uint8_t>(j | (j << 4));
  ggml_dequantize_row(GgmlType::Q5_0, b2, y, 32);
  for (int v = 0; v < 32; ++v) {
    const int q = (v % 16) + (((qh >> v) & 1) ? 16 : 0);
    EXPECT_EQ(y[v], (q - 16) * 0.5f) << v;
  }
  // Q5_1: d = 2, m = 1: x = q * 2 + 1.
  std::uint8_t b3[24] = {0x00, 0x40, 0x00, 0x3c};
  std::memcpy(b3 + 4, &qh, 4);
  for (int j = 0; j < 16; ++j) b3[8 + j] = static_cast<std::uint8_t>((15 - j) | (j << 4));
  ggml_dequantize_row(GgmlType::Q5_1, b3, y, 32);
  for (int v = 0; v < 32; ++v) {
    const int lo = v < 16 ? 15 - v : v - 16;
    const int q = lo + (((qh >> v) & 1) ? 16 : 0);
    EXPECT_EQ(y[v], q * 2.0f + 1.0f) << v;
  }
}

TEST(GgmlQuant, KQuantBlocksDequantizeByHand) {
  // Q4_K / Q5_K: 8 sub-blocks of 32 with 6-bit scale sc[s] and min m[s]; x = d*sc*q - dmin*m.
  const std::uint8_t sc[8] = {1, 2, 3, 63, 17, 33, 49, 63};
  const std::uint8_t mn[8] = {0, 5, 10, 15, 20, 40, 60, 63};
  std::uint8_t scales[12];
  for (int j = 0; j < 4; ++j) {
    scales[j] = static_cast<std::uint8_t>(sc[j] | ((sc[j + 4] >> 4) << 6));
    scales[j + 4] = static_cast<std::uint8_t>(mn[j] | ((mn[j + 4] >> 4) << 6));
    scales[j + 8] = static_cast<std::uint8_t>((sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4));
  }
  std::vector<std::uint8_t> b(144);
  b[1] = 0x3c;  // d = 1
  b[3] = 0x38;  // dmin = 0.5
  std::memcpy(&b[4], scales, 12);
  for (int i = 0; i < 128; ++i) b[16 + i] = static_cast<std::uint8_t>((i * 7) & 0xff);
  std::vector<float> y(256);
  ggml_dequantize_row(GgmlType::Q4_K, b.data(), y.data(), 256);
  for (int v = 0; v < 256; ++v) {
    const int s = v / 32, chunk = v / 64, l = v % 32;
    const std::uint8_t byte = b[16 + chunk * 32 + l];
    const int q = (s % 2 == 0) ? (byte & 15) : (byte >> 4);
    ASSERT_EQ(y[v], 1.0f * sc[s] * q - 0.5f * mn[s]) << v;
  }
  std::vector<std::uint8_t> b5(176);
  b5[1] = 0x3c;
  b5[3] = 0x38;
  std::memcpy(&b5[4], scales, 12);
  for (int i = 0; i < 32; ++i) b5[16 + i] = static_cast<std::uint8_t>((i * 37) & 0xff);  // qh
  for (int i = 0; i < 128; ++i) b5[48 + i] = static_cast<std::uint8_t>((i * 11) & 0xff);
  ggml_dequantize_row(GgmlType::Q5_K, b5.data(), y.data(), 256);
  for (int v = 0; v < 256; ++v) {
    const int s = v / 32, chunk = v / 64, l = v % 32;
    const std::uint8_t byte = b5[48 + chunk * 32 + l];
    const int lo = (s % 2 == 0) ? (byte & 15) : (byte >> 4);
    const int hi = (b5[16 + l] >> s) & 1;  // sub-block s uses bit s of qh[l]
    ASSERT_EQ(y[v], 1.0f * sc[s] * (lo + 16 * hi) - 0.5f * mn[s]) << v;
  }
  // Q6_K: 16 groups of 16 with int8 scales; value v's low nibble and 2 high bits.
  std::vector<std::uint8_t> b6(210);
  for (int i = 0; i < 128; ++i) b6[i] = static_cast<std::uint8_t>((i * 13) & 0xff);
  for (int i = 0; i < 64; ++i) b6[128 + i] = static_cast<std::uint8_t>((i * 29 + 3) & 0xff);
  for (int i = 0; i < 16; ++i) b6[192 + i] = static_cast<std::uint8_t>(static_cast<std::int8_t>(i - 8));
  b6[208] = 0x00;
  b6[209] = 0x38;  // d = 0.5
  ggml_dequantize_row(GgmlType::Q6_K, b6.data(), y.data(), 256);
  for (int v = 0; v < 256; ++v) {
    const int half = v / 128, r = v % 128, quarter = r / 32, l = r % 32;
    const std::uint8_t lb = b6[half * 64 + (quarter % 2) * 32 + l];
    const int lo = quarter < 2 ? (lb & 15) : (lb >> 4);
    const int hi = (b6[128 + half * 32 + l] >> (2 * quarter)) & 3;
    const int scale = static_cast<std::int8_t>(b6[192 + v / 16]);
    ASSERT_EQ(y[v], 0.5f * scale * ((lo | (hi << 4)) - 32)) << v;
  }
}

// ---------------------------------------------------------------- model <-> GGUF

namespace {

// A tiny model with every parameter random (norms and biases too, so a wrong permutation
// or a dropped tensor shows), saved with the shared demo tokenizer.
CausalLM save_tiny(const std::string& dir, const ModelConfig& cfg) {
  torch::manual_seed(11);
  CausalLM m(cfg);
  {
    torch::NoGradGuard ng;
    for (auto& p : m->parameters()) p.normal_(0.0, 0.5);
  }
  SaveOptions so;
  so.tokenizer = &demo_tokenizer();
  save_model(m, dir, so);
  return m;
}

ModelConfig tiny_config(const std::string& type = "llama") {
  auto c = small_config(demo_tokenizer().vocab_size(), 64, 4, 16, type);
  c.intermediate_size = 96;
  c.rms_norm_eps = 1e-5;
  c.max_position_embeddings = 256;
  c.eos_token_ids = {demo_tokenizer().eos_id()};
  c.bos_token_id = demo_tokenizer().bos_id();
  return c;
}

void expect_same_config(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.model_type, b.model_type);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.intermediate_size, b.intermediate_size);
  EXPECT_EQ(a.num_hidden_layers, b.num_hidden_layers);
  EXPECT_EQ(a.num_attention_heads, b.num_attention_heads);
  EXPECT_EQ(a.num_key_value_heads, b.num_key_value_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
  EXPECT_FLOAT_EQ(static_cast<float>(a.rope_theta), static_cast<float>(b.rope_theta));
  EXPECT_FLOAT_EQ(static_cast<float>(a.rms_norm_eps), static_cast<float>(b.rms_norm_eps));
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(a.attention_bias, b.attention_bias);
  EXPECT_EQ(a.o_proj_bias, b.o_proj_bias);
  EXPECT_EQ(a.qk_norm, b.qk_norm);
  EXPECT_EQ(a.bos_token_id, b.bos_token_id);
  EXPECT_EQ(a.eos_token_ids, b.eos_token_ids);
}

}  // namespace

TEST(GgufConvert, QkPermutationAndItsInverse) {
  // Head h's HF rows [h*d, h*d + d/2) are the first halves of the rotated pairs; ggml wants
  // pair i as rows h*d + 2i, h*d + 2i + 1.
  const std::int64_t heads = 3, d = 8, in = 5;
  auto w = torch::arange(heads * d * in, torch::kFloat32).reshape({heads * d, in});
  auto p = permute_qk(w, heads);
  for (std::int64_t h = 0; h < heads; ++h)
    for (std::int64_t i = 0; i < d / 2; ++i) {
      EXPECT_TRUE(torch::equal(p[h * d + 2 * i], w[h * d + i]));
      EXPECT_TRUE(torch::equal(p[h * d + 2 * i + 1], w[h * d + d / 2 + i]));
    }
  EXPECT_TRUE(torch::equal(unpermute_qk(p, heads), w));
  EXPECT_FALSE(torch::equal(p, w));
  auto b = torch::randn({heads * d});
  EXPECT_TRUE(torch::equal(unpermute_qk(permute_qk(b, heads), heads), b));
  EXPECT_TRUE(torch::equal(permute_qk(b, heads)[1], b[d / 2]));
  EXPECT_ERROR_MENTIONS(permute_qk(torch::zeros({10, 2}), 3), "heads");
}

TEST(GgufConvert, TensorNamesMapBothWays) {
  const std::vector<std::pair<std::string, std::string>> pairs = {
      {"model.embed_tokens.weight", "token_embd.weight"},
      {"model.norm.weight", "output_norm.weight"},
      {"lm_head.weight", "output.weight"},
      {"model.layers.0.input_layernorm.weight", "blk.0.attn_norm.weight"},
      {"model.layers.12.self_attn.q_proj.bias", "blk.12.attn_q.bias"},
      {"model.layers.3.self_attn.o_proj.weight", "blk.3.attn_output.weight"},
      {"model.layers.1.self_attn.k_norm.weight", "blk.1.attn_k_norm.weight"},
      {"model.layers.7.post_attention_layernorm.weight", "blk.7.ffn_norm.weight"},
      {"model.layers.2.mlp.down_proj.weight", "blk.2.ffn_down.weight"},
  };
  for (const auto& [hf, gg] : pairs) {
    EXPECT_EQ(gguf_tensor_name(hf), gg);
    EXPECT_EQ(hf_tensor_name(gg), hf);
  }
  EXPECT_EQ(gguf_tensor_name("model.layers.x.mlp.up_proj.weight"), "");
  EXPECT_EQ(hf_tensor_name("blk.0.attn_qkv.weight"), "");
  EXPECT_EQ(hf_tensor_name("rope_freqs.weight"), "");
}

TEST(GgufConvert, ExportImportF32IsExact) {
  TempDir dir;
  const auto cfg = tiny_config();
  auto m = save_tiny(dir.path + "/model", cfg);
  const std::string out = dir.path + "/out/m.gguf";  // the parent is created
  export_gguf(dir.path + "/model", out, {"f32"});
  ASSERT_TRUE(is_gguf_file(out));
  EXPECT_FALSE(is_gguf_file(dir.path + "/model"));
  EXPECT_FALSE(is_gguf_file(dir.path + "/model/config.json"));

  GgufFile f(out);
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get_u32("general.file_type"), 0u);
  EXPECT_FALSE(f.has("general.quantization_version"));
  EXPECT_EQ(f.get_u32("llama.block_count"), 2u);
  EXPECT_EQ(f.get_u32("llama.attention.head_count_kv"), 2u);
  EXPECT_EQ(f.get_u32("llama.rope.dimension_count"), 16u);
  EXPECT_EQ(f.get_string("tokenizer.ggml.model"), "llama");
  EXPECT_EQ(f.get_string_array("tokenizer.ggml.tokens").size(), static_cast<std::size_t>(cfg.vocab_size));
  EXPECT_EQ(f.get_u32("tokenizer.ggml.eos_token_id"), static_cast<std::uint32_t>(demo_tokenizer().eos_id()));
  EXPECT_FALSE(f.get_string("tokenizer.chat_template").empty());
  EXPECT_FALSE(f.has_tensor("output.weight"));  // tied
  EXPECT_EQ(f.tensor("blk.0.attn_q.weight").shape, (std::vector<std::int64_t>{64, 64}));
  EXPECT_EQ(f.tensor("blk.0.attn_k.weight").shape, (std::vector<std::int64_t>{32, 64}));
  for (const auto& t : f.tensors()) EXPECT_EQ(t.type, GgmlType::F32) << t.name;
  // attn_q holds the permuted rows.
  std::vector<float> q(64 * 64);
  f.read_f32("blk.0.attn_q.weight", q.data());
  const auto hf_q = m->named_parameters()["model.layers.0.self_attn.q_proj.weight"];
  EXPECT_TRUE(torch::equal(torch::from_blob(q.data(), {64, 64}), permute_qk(hf_q, 4)));

  auto g = import_gguf(out);
  expect_same_config(g.config, cfg);
  const auto want = model_tensors(m);
  EXPECT_EQ(g.tensors.size(), want.size());
  for (const auto& [name, t] : want) {
    ASSERT_TRUE(g.tensors.count(name)) << name;
    EXPECT_TRUE(torch::equal(g.tensors.at(name), t)) << name;
  }
  // Same tokenizer, same logits.
  ASSERT_TRUE(g.tokenizer);
  EXPECT_EQ(g.tokenizer->vocab_size(), demo_tokenizer().vocab_size());
  const std::string text = "<|im_start|>user\nHello, how are you?<|im_end|>\n";
  EXPECT_EQ(g.tokenizer->encode(text), demo_tokenizer().encode(text));
  EXPECT_EQ(g.tokenizer->add_bos(), demo_tokenizer().add_bos());
  EXPECT_EQ(g.tokenizer->add_space_prefix(), demo_tokenizer().add_space_prefix());
  EXPECT_EQ(g.tokenizer->chat_template(), demo_tokenizer().chat_template());
  EXPECT_EQ(f.get_bool("tokenizer.ggml.add_bos_token"), demo_tokenizer().add_bos());
  EXPECT_EQ(read_gguf_config(out).hidden_size, 64);
  CausalLM back(g.config);
  load_weights(back, g.tensors, out);
  torch::NoGradGuard ng;
  auto ids = torch::randint(0, cfg.vocab_size, {1, 7}, torch::kInt64);
  EXPECT_TRUE(torch::equal(back->forward(ids), m->forward(ids)));

  // A GGUF source converts again (here to f16).
  export_gguf(out, dir.path + "/again.gguf", {"f16"});
  GgufFile f16(dir.path + "/again.gguf");
  EXPECT_EQ(f16.tensor("blk.1.ffn_down.weight").type, GgmlType::F16);
  EXPECT_EQ(f16.tensor("blk.1.ffn_norm.weight").type, GgmlType::F32);
  EXPECT_EQ(f16.get_u32("general.file_type"), 1u);
}

TEST(GgufConvert, Q8_0WithinBoundsAndNormsExact) {
  TempDir dir;
  auto cfg = tiny_config();
  cfg.tie_word_embeddings = false;
  auto m = save_tiny(dir.path + "/model", cfg);
  export_gguf(dir.path + "/model", dir.path + "/m.gguf", {"q8_0"});
  GgufFile f(dir.path + "/m.gguf");
  EXPECT_EQ(f.get_u32("general.file_type"), 7u);
  EXPECT_EQ(f.get_u32("general.quantization_version"), 2u);
  EXPECT_EQ(f.tensor("output.weight").type, GgmlType::Q8_0);
  EXPECT_EQ(f.tensor("token_embd.weight").type, GgmlType::Q8_0);
  EXPECT_EQ(f.tensor("output_norm.weight").type, GgmlType::F32);
  auto g = import_gguf(dir.path + "/m.gguf");
  EXPECT_FALSE(g.config.tie_word_embeddings);
  for (const auto& [name, t] : model_tensors(m)) {
    ASSERT_TRUE(g.tensors.count(name)) << name;
    const auto& got = g.tensors.at(name);
    if (t.dim() == 1) {
      EXPECT_TRUE(torch::equal(got, t)) << name;
      continue;
    }
    // Per block of 32: |error| <= half a step (amax / 127) plus the fp16 scale's rounding.
    auto blocks = t.reshape({-1, 32});
    auto amax = blocks.abs().amax(1, true);
    auto err = (got.reshape({-1, 32}) - blocks).abs();
    EXPECT_TRUE((err <= amax / 127 * 0.57 + 1e-7).all().item<bool>()) << name;
    EXPECT_GT(err.max().item<float>(), 0.0f) << name;  // really quantized
  }
}

TEST(GgufConvert, Qwen2BiasesAndQwen3NormsRoundTrip) {
  for (const std::string type : {"qwen2", "qwen3"}) {
    TempDir dir;
    const auto cfg = tiny_config(type);
    auto m = save_tiny(dir.path + "/model", cfg);
    export_gguf(dir.path + "/model", dir.path + "/m.gguf", {"f32"});
    GgufFile f(dir.path + "/m.gguf");
    EXPECT_EQ(f.get_string("general.architecture"), type == "qwen3" ? "qwen3" : "llama");
    if (type == "qwen2") {
      std::vector<float> qb(64);
      f.read_f32("blk.1.attn_q.bias", qb.data());
      const auto hf_b = m->named_parameters()["model.layers.1.self_attn.q_proj.bias"];
      EXPECT_TRUE(torch::equal(torch::from_blob(qb.data(), {64}), permute_qk(hf_b, 4)));
    } else {
      EXPECT_TRUE(f.has_tensor("blk.0.attn_q_norm.weight"));
      EXPECT_EQ(f.get_u32("qwen3.attention.key_length"), 16u);
      // qwen3 ropes halves as HF does: attn_q is stored as is.
      std::vector<float> q(64 * 64);
      f.read_f32("blk.0.attn_q.weight", q.data());
      const auto hf_q = m->named_parameters()["model.layers.0.self_attn.q_proj.weight"];
      EXPECT_TRUE(torch::equal(torch::from_blob(q.data(), {64, 64}), hf_q));
    }
    auto g = import_gguf(dir.path + "/m.gguf");
    expect_same_config(g.config, cfg);
    for (const auto& [name, t] : model_tensors(m)) {
      ASSERT_TRUE(g.tensors.count(name)) << type << " " << name;
      EXPECT_TRUE(torch::equal(g.tensors.at(name), t)) << type << " " << name;
    }
  }
}

TEST(GgufConvert, PadsTheVocabularyAndFallsBackForOddRows) {
  TempDir dir;
  auto cfg = tiny_config();
  cfg.vocab_size = demo_tokenizer().vocab_size() + 8;  // embedding padded past the tokenizer
  cfg.intermediate_size = 80;                          // ffn_down rows of 80: not blocks of 32
  save_tiny(dir.path + "/model", cfg);
  export_gguf(dir.path + "/model", dir.path + "/m.gguf", {"q4_0"});
  GgufFile f(dir.path + "/m.gguf");
  const auto tokens = f.get_string_array("tokenizer.ggml.tokens");
  ASSERT_EQ(tokens.size(), static_cast<std::size_t>(cfg.vocab_size));
  EXPECT_EQ(tokens.back(), "[PAD" + std::to_string(cfg.vocab_size - 1) + "]");
  EXPECT_EQ(f.get_i32_array("tokenizer.ggml.token_type").back(), 5);  // unused
  EXPECT_EQ(f.tensor("blk.0.ffn_down.weight").type, GgmlType::F16);
  EXPECT_EQ(f.tensor("blk.0.ffn_up.weight").type, GgmlType::Q4_0);
  EXPECT_EQ(f.get_u32("general.file_type"), 2u);
  auto g = import_gguf(dir.path + "/m.gguf");
  EXPECT_EQ(g.config.vocab_size, cfg.vocab_size);
  EXPECT_EQ(g.tensors.at("model.embed_tokens.weight").size(0), cfg.vocab_size);
}

TEST(GgufConvert, Llama3RopeScalingSurvivesAsRopeFreqs) {
  TempDir dir;
  auto cfg = tiny_config();
  cfg.head_dim = 64;
  cfg.num_attention_heads = 2;
  cfg.num_key_value_heads = 1;
  cfg.hidden_size = 128;
  cfg.rope_theta = 500000.0;
  cfg.rope_scaling.type = "llama3";
  cfg.rope_scaling.factor = 8.0;
  cfg.rope_scaling.low_freq_factor = 1.0;
  cfg.rope_scaling.high_freq_factor = 4.0;
  cfg.rope_scaling.original_max_position_embeddings = 8192;
  save_tiny(dir.path + "/model", cfg);
  export_gguf(dir.path + "/model", dir.path + "/m.gguf", {"f32"});
  GgufFile f(dir.path + "/m.gguf");
  ASSERT_TRUE(f.has_tensor("rope_freqs.weight"));
  std::vector<float> factors(32);
  f.read_f32("rope_freqs.weight", factors.data());
  EXPECT_EQ(factors.front(), 1.0f);
  EXPECT_EQ(factors.back(), 8.0f);
  const auto back = read_gguf_config(dir.path + "/m.gguf");
  EXPECT_EQ(back.rope_scaling.type, "llama3");
  EXPECT_NEAR(back.rope_scaling.factor, 8.0, 1e-6);
  EXPECT_NEAR(back.rope_scaling.low_freq_factor, 1.0, 1e-3);
  EXPECT_NEAR(back.rope_scaling.high_freq_factor, 4.0, 1e-3);
  EXPECT_EQ(back.rope_scaling.original_max_position_embeddings, 8192);

  cfg.rope_scaling.type = "linear";
  cfg.rope_scaling.factor = 2.0;
  save_tiny(dir.path + "/model", cfg);
  export_gguf(dir.path + "/model", dir.path + "/m.gguf", {"f32"});
  const auto lin = read_gguf_config(dir.path + "/m.gguf");
  EXPECT_EQ(lin.rope_scaling.type, "linear");
  EXPECT_EQ(lin.rope_scaling.factor, 2.0);
}

TEST(GgufConvert, ClearErrors) {
  TempDir dir;
  save_tiny(dir.path + "/model", tiny_config());
  EXPECT_ERROR_MENTIONS(export_gguf(dir.path + "/model", dir.path + "/m.gguf", {"q5_k"}), "f32, f16, bf16, q8_0 or q4_0");
  EXPECT_ERROR_MENTIONS(export_gguf(dir.path + "/nope", dir.path + "/m.gguf", {"f32"}), dir.path + "/nope");
  EXPECT_FALSE(path_exists(dir.path + "/m.gguf"));
  // Not a llama GGUF.
  GgufWriter w;
  w.add_string("general.architecture", "gpt2");
  w.write(dir.path + "/gpt2.gguf");
  EXPECT_ERROR_MENTIONS(import_gguf(dir.path + "/gpt2.gguf"), "architecture 'gpt2' is not supported");
  // A llama GGUF missing a hyper-parameter names the key.
  GgufWriter w2;
  w2.add_string("general.architecture", "llama");
  w2.add_u32("llama.embedding_length", 64);
  w2.write(dir.path + "/partial.gguf");
  EXPECT_ERROR_MENTIONS(import_gguf(dir.path + "/partial.gguf"), "'llama.block_count' is missing");
  // An unknown tensor name.
  export_gguf(dir.path + "/model", dir.path + "/ok.gguf", {"f32"});
  {
    GgufFile ok(dir.path + "/ok.gguf");
    GgufWriter w3;
    for (const auto& [k, v] : ok.metadata()) w3.add(k, v);
    for (const auto& t : ok.tensors()) {
      std::vector<std::uint8_t> b(ok.tensor_data(t.name), ok.tensor_data(t.name) + t.bytes);
      w3.add_tensor(t.name == "blk.1.ffn_up.weight" ? "blk.1.ffn_upx.weight" : t.name, t.shape, t.type, b);
    }
    w3.write(dir.path + "/renamed.gguf");
  }
  EXPECT_ERROR_MENTIONS(import_gguf(dir.path + "/renamed.gguf"), "'blk.1.ffn_upx.weight'");
}

TEST(GgufConvert, MutatedModelFilesImportOrFailCleanly) {
  // Model-level parsing (hyper-parameters, tokenizer vocabulary, tensor names and shapes)
  // of corrupted files: each one loads or gives llmctl::Error, nothing else.
  TempDir dir;
  auto cfg = tiny_config();
  cfg.num_hidden_layers = 1;
  save_tiny(dir.path + "/model", cfg);
  export_gguf(dir.path + "/model", dir.path + "/good.gguf", {"q8_0"});
  const std::string good = read_file(dir.path + "/good.gguf");
  const std::size_t header = GgufFile(dir.path + "/good.gguf").data_offset();
  std::mt19937 rng(77);
  const std::string p = dir.path + "/m.gguf";
  int loaded = 0;
  for (int i = 0; i < 400; ++i) {
    std::string s = good;
    const int edits = 1 + static_cast<int>(rng() % 3);
    for (int e = 0; e < edits; ++e) {
      const std::size_t at = rng() % header;
      if (rng() % 2) s[at] = static_cast<char>(rng());
      else s[at] ^= static_cast<char>(1u << (rng() % 8));
    }
    write_file_atomic(p, s);
    try {
      auto m = import_gguf(p);
      CausalLM back(m.config);
      load_weights(back, m.tensors, p);
      ++loaded;
    } catch (const Error&) {
    } catch (const std::exception& e) {
      ADD_FAILURE() << "mutation " << i << ": unexpected exception " << e.what();
    }
  }
  EXPECT_GT(loaded, 0);  // most single-byte edits land in token text and still load
}

TEST(GgufConvert, TokenizerFlagsComeFromTheMetadata) {
  TempDir dir;
  save_tiny(dir.path + "/model", tiny_config());
  export_gguf(dir.path + "/model", dir.path + "/m.gguf", {"f32"});
  GgufFile src(dir.path + "/m.gguf");
  const bool add_bos = src.get_bool("tokenizer.ggml.add_bos_token");
  GgufWriter w;
  for (const auto& [k, v] : src.metadata()) {
    if (k == "tokenizer.ggml.add_bos_token") w.add_bool(k, !add_bos);
    else if (k == "tokenizer.chat_template") w.add_string(k, "{{ custom }}");
    else w.add(k, v);
  }
  for (const auto& t : src.tensors())
    w.add_tensor(t.name, t.shape, t.type,
                 std::vector<std::uint8_t>(src.tensor_data(t.name), src.tensor_data(t.name) + t.bytes));
  w.write(dir.path + "/flipped.gguf");
  const auto tok = read_gguf_tokenizer(dir.path + "/flipped.gguf");
  EXPECT_EQ(tok.add_bos(), !add_bos && demo_tokenizer().bos_id() >= 0);  // no BOS to add without one
  EXPECT_EQ(tok.chat_template(), "{{ custom }}");
}
